"""HPO results as data: JSON-serialisable summaries that render themselves with rich, plus
the files of a run folder (``report.json``, ``best.json``; its PNG plots: ``hpo.plots``).

Accuracies are fractions in [0, 1] in the data and in JSON; the terminal shows percent.
Every file is written to a temporary sibling and moved into place with ``os.replace``, so
a crash never leaves a half-written artefact.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fxprune.io import atomic_path

REPORT_FILE = "report.json"
BEST_FILE = "best.json"


# --- safe writes ---------------------------------------------------------------------------


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary_path)`` and move the result onto ``path`` atomically
    (``fxprune.io``, the one writer: 0644, nothing left behind on failure)."""
    with atomic_path(path) as temporary:
        write(temporary)
    return Path(path)


def atomic_write_json(path: Path, data: Any) -> Path:
    text = json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _jsonable(value: Any) -> Any:
    """NaN/inf become null: report.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# --- the results -----------------------------------------------------------------------------


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data``'s keys that are fields of the dataclass ``cls``: a report.json written by a
    newer fxprune (more fields) or with derived keys still loads."""
    return {k: v for k, v in data.items() if k in {f.name for f in fields(cls)}}


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the report shows it; ``value`` is the final (or last reported) accuracy."""

    number: int
    state: str
    value: float | None
    params: dict[str, float | int]
    epochs_run: int
    seconds: float | None
    reason: str | None = None


@dataclass(frozen=True)
class StudySummary:
    """One HPO study: its trials, best point and the wall time spent on it."""

    name: str
    role: str  # "base" or "proxy": which network the trials trained
    budget: int
    wall_seconds: float
    trials: tuple[TrialRecord, ...]
    best_trial: int | None = None
    best_value: float | None = None
    best_params: dict[str, float | int] | None = None
    importances: dict[str, float] | None = None
    bracket_key: str | None = None  # Hyperband's brackets drawn from it (None: by study name)

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for trial in self.trials:
            counts[trial.state] = counts.get(trial.state, 0) + 1
        return counts

    @property
    def trial_seconds(self) -> float:
        return sum(t.seconds or 0.0 for t in self.trials)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["counts"] = self.counts
        data["trial_seconds"] = self.trial_seconds
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudySummary:
        data = _known(cls, data)  # also drops the derived "counts" and "trial_seconds"
        data["trials"] = tuple(TrialRecord(**_known(TrialRecord, t)) for t in data["trials"])
        return cls(**data)


@dataclass(frozen=True)
class ProxyInfo:
    """How the proxy network was made from the base network."""

    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    ratio: float
    min_ratio: float
    scorer: str
    prune_seconds: float
    # fxprune.deploy.compare_step_times(base, proxy).to_dict(): the measured training-step
    # speed-up next to the MACs reduction (set by ``hpo compare``; None before it measures)
    step_time: dict[str, Any] | None = None

    @property
    def param_fraction(self) -> float:
        return self.params_after / max(1, self.params_before)

    @property
    def flops_fraction(self) -> float:
        return self.flops_after / max(1, self.flops_before)


@dataclass(frozen=True)
class FinalSummary:
    """The base network trained with one best set over several seeds."""

    source: str  # the study whose best set this is: "typical" or "proxy"
    params: dict[str, float | int]
    seeds: tuple[int, ...]
    accuracies: tuple[float, ...]  # one per finished seed; 0.0 for a diverged seed
    failed_seeds: tuple[int, ...] = ()
    model_path: str | None = None

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.accuracies) if self.accuracies else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof=1); 0.0 for a single seed."""
        if not self.accuracies:
            return None
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinalSummary:
        data = _known(cls, data)  # also drops the derived "mean" and "std"
        return cls(**{**data, "seeds": tuple(data["seeds"]),
                      "accuracies": tuple(data["accuracies"]),
                      "failed_seeds": tuple(data.get("failed_seeds", ()))})


@dataclass(frozen=True)
class RankSummary:
    """Proxy and base scores of the same K configurations and their rank agreement."""

    params: tuple[dict[str, float | int], ...]
    base_scores: tuple[float | None, ...]
    proxy_scores: tuple[float | None, ...]
    tau: float | None = None
    p_value: float | None = None

    @classmethod
    def compute(cls, params: list[dict[str, Any]], base: list[float | None],
                proxy: list[float | None]) -> RankSummary:
        """Kendall's tau (scipy.stats.kendalltau, tau-b) over configurations scored by both."""
        pairs = [(b, p) for b, p in zip(base, proxy) if b is not None and p is not None]
        tau = p_value = None
        if len(pairs) >= 2 and len({b for b, _ in pairs}) > 1 and len({p for _, p in pairs}) > 1:
            from scipy.stats import kendalltau

            result = kendalltau([b for b, _ in pairs], [p for _, p in pairs])
            tau, p_value = float(result.statistic), float(result.pvalue)
        return cls(tuple(params), tuple(base), tuple(proxy), tau, p_value)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RankSummary:
        return cls(tuple(data["params"]), tuple(data["base_scores"]),
                   tuple(data["proxy_scores"]), data.get("tau"), data.get("p_value"))


# The arms of a compare, in display order: the two searches, and ``confirm`` (``--confirm``),
# the proxy search followed by base-network runs of its best sets.
ARMS = ("typical", "proxy", "confirm")


@dataclass(frozen=True)
class RepeatSummary:
    """One replicate of a compare: each arm's winner, its final TEST accuracy (mean over
    the final seeds), the search's elapsed span and summed compute, and Kendall's tau."""

    repeat: int
    winners: dict[str, dict[str, Any] | None]  # arm -> {"trial", "value", "params"}
    test_accuracy: dict[str, float | None]  # arm -> mean final test accuracy
    wall_seconds: dict[str, float]  # arm -> elapsed span of its search
    compute_seconds: dict[str, float]  # arm -> summed trial durations
    tau: float | None = None
    # Hyperband only: whether both arms drew their brackets from one key, trial by trial
    # (hpo._optuna.shared_bracket_hyperband); False for studies made before that, whose
    # brackets were drawn by study name, so one arm could be pruned harder than the other
    shared_brackets: bool | None = None

    def gap(self, arm: str = "proxy") -> float | None:
        """``arm`` - typical final test accuracy, percentage points."""
        typical, other = self.test_accuracy.get("typical"), self.test_accuracy.get(arm)
        return None if typical is None or other is None else 100.0 * (other - typical)

    def reduction(self, arm: str = "proxy") -> float | None:
        """Search time saved by ``arm`` against typical HPO, percent."""
        typical, other = self.wall_seconds.get("typical", 0.0), self.wall_seconds.get(arm)
        return None if not typical or other is None else 100.0 * (1.0 - other / typical)

    accuracy_gap = property(gap)  # the paper's arm
    time_reduction_pct = property(reduction)

    def to_dict(self) -> dict[str, Any]:
        derived = {"accuracy_gap_pp": self.accuracy_gap,
                   "time_reduction_pct": self.time_reduction_pct}
        if "confirm" in self.wall_seconds:
            derived.update(confirm_gap_pp=self.gap("confirm"),
                           confirm_reduction_pct=self.reduction("confirm"))
        return {**asdict(self), **derived}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RepeatSummary:
        return cls(**_known(cls, data))  # also drops the derived gaps and reductions


def mean_ci(values: list[float | None], level: float = 0.95) -> dict[str, Any]:
    """Mean and two-sided ``level`` confidence interval (Student's t) of the known values;
    the interval is null below two values."""
    known = [v for v in values if v is not None and math.isfinite(v)]
    result: dict[str, Any] = {"mean": None, "ci_low": None, "ci_high": None, "n": len(known)}
    if not known:
        return result
    mean = statistics.fmean(known)
    result["mean"] = mean
    if len(known) >= 2:
        from scipy.stats import t

        half = t.ppf(0.5 + level / 2, len(known) - 1) * statistics.stdev(known) / math.sqrt(
            len(known))
        result["ci_low"], result["ci_high"] = mean - half, mean + half
    return result


@dataclass(frozen=True)
class HpoReport:
    """Everything a run folder holds, as data; ``kind`` is "run" or "compare"."""

    kind: str
    config: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    studies: tuple[StudySummary, ...] = ()
    proxy: ProxyInfo | None = None
    finals: tuple[FinalSummary, ...] = ()
    rank: RankSummary | None = None
    hyperband: dict[str, Any] | None = None
    repeats: tuple[RepeatSummary, ...] = ()

    def statistics(self) -> dict[str, dict[str, Any]]:
        """Mean and 95% CI over the repeats of the gap, the time reduction and tau, and
        with ``--confirm`` of the confirmed arm's gap and time reduction."""
        stats = {"accuracy_gap_pp": mean_ci([r.accuracy_gap for r in self.repeats]),
                 "time_reduction_pct": mean_ci([r.time_reduction_pct for r in self.repeats]),
                 "kendall_tau": mean_ci([r.tau for r in self.repeats])}
        if any("confirm" in r.wall_seconds for r in self.repeats):
            stats["confirm_gap_pp"] = mean_ci([r.gap("confirm") for r in self.repeats])
            stats["confirm_reduction_pct"] = mean_ci([r.reduction("confirm")
                                                      for r in self.repeats])
        return stats

    def study(self, name: str) -> StudySummary | None:
        return next((s for s in self.studies if s.name == name), None)

    def final(self, source: str) -> FinalSummary | None:
        return next((f for f in self.finals if f.source == source), None)

    @property
    def time_reduction_pct(self) -> float | None:
        """HPO wall time saved by the proxy: ``100 * (1 - proxy / typical)`` (the mean over
        the repeats when there are several)."""
        if len(self.repeats) > 1:
            return self.statistics()["time_reduction_pct"]["mean"]
        typical, proxy = self.study("typical"), self.study("proxy")
        if typical is None or proxy is None or typical.wall_seconds <= 0:
            return None
        return 100.0 * (1.0 - proxy.wall_seconds / typical.wall_seconds)

    @property
    def accuracy_gap(self) -> float | None:
        """Final accuracy of proxy-HPO minus typical-HPO, in percentage points (the mean
        over the repeats when there are several)."""
        if len(self.repeats) > 1:
            return self.statistics()["accuracy_gap_pp"]["mean"]
        typical, proxy = self.final("typical"), self.final("proxy")
        if typical is None or proxy is None or typical.mean is None or proxy.mean is None:
            return None
        return 100.0 * (proxy.mean - typical.mean)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "config": self.config,
            "data": self.data,
            "time_reduction_pct": self.time_reduction_pct,
            "accuracy_gap_pp": self.accuracy_gap,
            "kendall_tau": self.rank.tau if self.rank else None,
            "studies": [s.to_dict() for s in self.studies],
            "proxy": None if self.proxy is None else {
                **asdict(self.proxy), "param_fraction": self.proxy.param_fraction,
                "flops_fraction": self.proxy.flops_fraction},
            "finals": [f.to_dict() for f in self.finals],
            "rank": None if self.rank is None else asdict(self.rank),
            "hyperband": self.hyperband,
            "repeats": [r.to_dict() for r in self.repeats],
            "statistics": self.statistics() if self.repeats else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HpoReport:
        proxy = data.get("proxy")
        return cls(
            kind=data["kind"], config=data["config"], data=data.get("data", {}),
            studies=tuple(StudySummary.from_dict(s) for s in data.get("studies", [])),
            proxy=None if proxy is None else ProxyInfo(**_known(ProxyInfo, proxy)),
            finals=tuple(FinalSummary.from_dict(f) for f in data.get("finals", [])),
            rank=None if data.get("rank") is None else RankSummary.from_dict(data["rank"]),
            hyperband=data.get("hyperband"),
            repeats=tuple(RepeatSummary.from_dict(r) for r in data.get("repeats", [])),
        )

    def __rich__(self) -> Any:
        return render_report(self)


# --- terminal rendering ------------------------------------------------------------------------


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


_SHORT_NAMES = {"lr": "lr", "batch_size": "bs", "weight_decay": "wd", "momentum": "mom",
                "decay_factor": "decay", "log2_batch_size": "log2bs"}


def _params_text(params: dict[str, Any] | None) -> str:
    if not params:
        return "-"
    return " ".join(
        f"{_SHORT_NAMES.get(name, name)}={value:.3g}" if isinstance(value, float)
        else f"{_SHORT_NAMES.get(name, name)}={value}" for name, value in params.items())


def render_report(report: HpoReport) -> Any:
    from rich.console import Group
    from rich.table import Table

    parts: list[Any] = []
    config = report.config
    header = Table.grid(padding=(0, 2))
    header.add_row("model", str(config.get("model")), "data", str(report.data.get("name")
                                                               or config.get("data")))
    pruner = config.get("pruner") if (config.get("epochs") or 2) >= 2 else "none"  # search_pruner
    header.add_row("sampler", str(config.get("sampler")), "pruner", str(pruner))
    header.add_row("trials", str(config.get("trials")), "epochs", str(config.get("epochs")))
    header.add_row("seed", str(config.get("seed")), "final seeds", str(config.get("seeds")))
    parts.append(header)
    if config.get("typical_from"):  # hpo.reuse
        parts.append(f"typical arm imported from {config['typical_from']} (its times as "
                     "measured there)")

    studies = Table(title="HPO studies", title_justify="left")
    for column in ("study", "trains", "complete", "pruned", "fail", "best val acc", "wall span",
                   "compute"):
        studies.add_column(column, justify="left" if column == "study" else "right")
    best_sets = Table.grid(padding=(0, 2))
    for study in report.studies:
        counts = study.counts
        studies.add_row(study.name, study.role, str(counts.get("COMPLETE", 0)),
                        str(counts.get("PRUNED", 0)), str(counts.get("FAIL", 0)),
                        _pct(study.best_value), f"{study.wall_seconds:.1f}s",
                        f"{study.trial_seconds:.1f}s")
        best_sets.add_row(f"best set of {study.name}", f"trial {study.best_trial}",
                          _params_text(study.best_params))
    parts.extend([studies, best_sets])

    if report.proxy is not None:
        proxy = report.proxy
        parts.append(
            f"proxy: {proxy.scorer} ratio={proxy.ratio} min_ratio={proxy.min_ratio} -> "
            f"{proxy.params_after:,}/{proxy.params_before:,} params "
            f"({100 * proxy.param_fraction:.1f}%), {100 * proxy.flops_fraction:.1f}% of MACs, "
            "weights reinitialised for every trial"
        )
        if proxy.step_time is not None:
            parts.append(_step_time_text(proxy.step_time, 1 / max(proxy.flops_fraction, 1e-12)))

    if report.finals:
        finals = Table(title="Base network trained with the best set (test split)",
                       title_justify="left")
        for column in ("best set from", "seeds", "test acc mean", "std", "failed seeds"):
            finals.add_column(column, justify="left" if column == "best set from" else "right")
        for final in report.finals:
            finals.add_row(final.source, ",".join(map(str, final.seeds)), _pct(final.mean),
                           _pct(final.std), ",".join(map(str, final.failed_seeds)) or "-")
        parts.append(finals)

    if len(report.repeats) > 1:
        parts.append(_repeats_table(report))
    unshared = [str(r.repeat) for r in report.repeats if r.shared_brackets is False]
    if unshared:
        parts.append(f"[yellow]note:[/] in repeat {', '.join(unshared)} the typical and proxy "
                     "searches drew Hyperband's brackets by study name (made before fxprune "
                     "shared them): one arm may have been pruned harder, so its time reduction "
                     "is not like for like")
    if report.kind == "compare":
        summary = Table.grid(padding=(0, 2))
        reduction, gap = report.time_reduction_pct, report.accuracy_gap
        summary.add_row("[bold]HPO time reduction[/]",
                        "-" if reduction is None else f"{reduction:.1f}%")
        summary.add_row("[bold]accuracy gap (proxy - typical)[/]",
                        "-" if gap is None else f"{gap:+.2f} pp")
        if report.rank is not None:
            tau = report.rank.tau
            where = ", repeat 0" if len(report.repeats) > 1 else ""  # the mean is below
            summary.add_row(f"[bold]Kendall tau[/] (K={len(report.rank.params)}{where})",
                            "-" if tau is None else f"{tau:.3f} (p={report.rank.p_value:.3g})")
        if report.repeats:
            statistics = report.statistics()
            for key, label in STATISTIC_LABELS.items():
                if key in statistics:
                    stats = statistics[key]
                    summary.add_row(f"[bold]mean {label}[/] (95% CI, n={stats['n']})",
                                    ci_text(stats))
        parts.append(summary)
    return Group(*parts)


STATISTIC_LABELS = {"accuracy_gap_pp": "gap, pp", "time_reduction_pct": "time reduction, %",
                    "confirm_gap_pp": "gap with --confirm, pp", "kendall_tau": "Kendall tau",
                    "confirm_reduction_pct": "time reduction with --confirm, %"}


def _step_time_text(step: dict[str, Any], macs_reduction: float) -> str:
    """One line: the proxy's measured training-step speed-up next to its MACs reduction."""
    dense = step.get("dense", {})
    where = f"batch {dense.get('batch')}, {dense.get('device')}"
    ci = step.get("speedup_ci")
    interval = f" (95% CI {ci[0]:.2f}-{ci[1]:.2f}x)" if ci else ""
    verdict = f", {step['verdict']}" if step.get("verdict") else ""
    return (f"proxy training step (forward+backward, {where}): speed-up {step['speedup']:.2f}x "
            f"over the base network{interval}{verdict}; MACs reduction {macs_reduction:.2f}x")


def ci_text(stats: dict[str, Any]) -> str:
    if stats["mean"] is None:
        return "-"
    if stats["ci_low"] is None:
        return f"{stats['mean']:+.2f}"
    return f"{stats['mean']:+.2f} [{stats['ci_low']:+.2f}, {stats['ci_high']:+.2f}]"


def _repeats_table(report: HpoReport) -> Any:
    """One row per repeat and arm (narrow enough for a terminal with any number of arms);
    gap and reduction are against the repeat's typical arm."""
    from rich.table import Table

    table = Table(title="Repeats (independent sampler seeds)", title_justify="left")
    for column in ("repeat", "arm", "winner", "test acc", "span", "gap pp", "reduction",
                   "tau"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for r in report.repeats:
        for row, arm in enumerate(a for a in ARMS if a in r.wall_seconds):
            winner = r.winners.get(arm)
            gap, reduction = (None, None) if arm == "typical" else (r.gap(arm), r.reduction(arm))
            table.add_row(
                "" if row else str(r.repeat), arm,
                f"#{winner['trial']}" if winner else "-", _pct(r.test_accuracy.get(arm)),
                f"{r.wall_seconds[arm]:.0f}s", "-" if gap is None else f"{gap:+.2f}",
                "-" if reduction is None else f"{reduction:.1f}%",
                "-" if r.tau is None or arm != "typical" else f"{r.tau:.2f}")
    return table


# --- files -----------------------------------------------------------------------------------


def write_report(report: HpoReport, out: Path) -> Path:
    """report.json (the plots: ``hpo.plots.write_plots``)."""
    return atomic_write_json(Path(out) / REPORT_FILE, report.to_dict())


def read_report(out: Path) -> HpoReport:
    from fxprune.errors import ConfigError

    path = Path(out) / REPORT_FILE
    try:
        return HpoReport.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ConfigError(f"no {REPORT_FILE} in {out}") from None
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: not an HPO report ({err})") from None


__all__ = ["ARMS", "BEST_FILE", "REPORT_FILE", "FinalSummary", "HpoReport", "ProxyInfo",
           "RankSummary", "RepeatSummary", "StudySummary", "TrialRecord", "atomic_write",
           "atomic_write_json", "ci_text", "mean_ci", "read_report", "render_report",
           "write_report"]
