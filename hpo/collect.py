"""The report of a run folder, rebuilt from its storage alone (works on an unfinished or
interrupted run, and on any machine sharing the database).

Time per search arm is two numbers: ``wall_seconds``, the elapsed span (the union of the
trials' [start, end] intervals, so time between a kill and the resume is not counted: a
killed trial ends at its last heartbeat, not when the resume retired it; and
trials running at once on several workers or machines count once; plus, for the proxy,
the seconds spent pruning), and ``trial_seconds``, the summed compute of all trials. The
``confirm`` arm (``--confirm``) is the proxy search followed by its confirmation runs: its
time is the sum of both spans.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hpo import _optuna, liveness
from hpo.config import BRACKET_KEY, HpoConfig, digest
from hpo.registry import hyperband_settings
from hpo.report import (
    ARMS,
    FinalSummary,
    HpoReport,
    ProxyInfo,
    RankSummary,
    RepeatSummary,
    StudySummary,
    TrialRecord,
)
from hpo.space import HyperParams
from hpo.storage import mask_url, open_storage

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger("hpo")


def repeat_prefix(config: HpoConfig, repeat: int) -> str:
    """Stage names of repeat ``repeat``: unprefixed for a single repeat (the first
    release's layout), ``r<k>-`` otherwise."""
    return "" if config.repeats == 1 else f"r{repeat}-"


def best_trial(study: optuna.Study) -> tuple[optuna.trial.FrozenTrial, HyperParams] | None:
    best = top_trials(study, 1)
    return best[0] if best else None


def top_trials(study: optuna.Study, k: int) -> list[tuple[optuna.trial.FrozenTrial, HyperParams]]:
    """The ``k`` best COMPLETE trials with distinct hyperparameters, best first (ties: the
    earlier trial)."""
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None]
    chosen: list[tuple[optuna.trial.FrozenTrial, HyperParams]] = []
    seen: set[str] = set()
    for trial in sorted(complete, key=lambda t: (-t.value, t.number)):
        if len(chosen) == k:
            break
        key = digest(trial.user_attrs["hyperparams"])
        if key not in seen:
            seen.add(key)
            chosen.append((trial, HyperParams.from_dict(trial.user_attrs["hyperparams"])))
    return chosen


def trial_value(trial: optuna.trial.FrozenTrial) -> float | None:
    if trial.value is not None:
        return float(trial.value)
    if trial.intermediate_values:
        return float(trial.intermediate_values[max(trial.intermediate_values)])
    return None


def active_interval(trial: optuna.trial.FrozenTrial) -> tuple[datetime, datetime] | None:
    """``[start, end]`` of a finished trial's running time: a trial of a killed machine ends
    at its last heartbeat, not when a later run retired it (``liveness.last_alive``)."""
    start, end = trial.datetime_start, trial.datetime_complete
    if start is None or end is None:
        return None
    return start, liveness.last_alive(trial) or end


def elapsed_span(trials: list[optuna.trial.FrozenTrial]) -> float:
    """Length of the union of the trials' active intervals (``active_interval``), in
    seconds."""
    intervals = sorted(i for i in map(active_interval, trials) if i is not None)
    total, current_start, current_end = 0.0, None, None
    for start, end in intervals:
        if current_end is None or start > current_end:
            if current_end is not None:
                total += (current_end - current_start).total_seconds()
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += (current_end - current_start).total_seconds()
    return total


def collect_report(config: HpoConfig, kind: str) -> HpoReport:
    """Summarise every study of this run (``--study-name``) into an ``HpoReport``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(config)
    prefix = config.study("")
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)
             if s.study_name.startswith(prefix)]
    loaded = {name.removeprefix(prefix): optuna.load_study(study_name=name, storage=storage)
              for name in names}
    search, finals, repeats, proxy_info, rank, step_time = [], [], [], None, None, None
    hyperband = (hyperband_settings(config.trials, config.epochs)
                 if config.search_pruner == "hyperband" else None)
    for repeat in range(config.repeats if kind == "compare" else 1):
        stage = repeat_prefix(config, repeat)
        arms = {}
        for arm in ARMS:  # each arm's winner comes from its own study
            if f"{stage}{arm}" in loaded:
                arms[arm] = summarise_search(loaded[f"{stage}{arm}"], config, f"{stage}{arm}")
                search.append(arms[arm])
                attrs = loaded[f"{stage}{arm}"].user_attrs
                if attrs.get("proxy_info") is not None:
                    proxy_info = ProxyInfo(**attrs["proxy_info"])
                step_time = step_time or attrs.get("step_time")
        repeat_finals = {}
        for arm in ARMS:
            final = summarise_final(loaded, f"{stage}{arm}", search)
            if final is not None:
                finals.append(final)
                repeat_finals[arm] = final
        if "confirm" not in repeat_finals and _confirms_proxy(arms):
            repeat_finals["confirm"] = repeat_finals.get("proxy")  # same set, same runs
        repeat_rank = None
        if f"{stage}rank-base" in loaded and f"{stage}rank-proxy" in loaded:
            repeat_rank = summarise_rank(loaded[f"{stage}rank-base"],
                                         loaded[f"{stage}rank-proxy"])
            rank = rank or repeat_rank
        if kind == "compare" and arms:
            repeats.append(_repeat(repeat, arms, repeat_finals, repeat_rank,
                                   _proxy_trial(loaded.get(f"{stage}confirm"), arms),
                                   hyperband and hyperband["brackets"]))
    if proxy_info is not None and step_time is not None:  # measured by ProxyHpo.compare
        proxy_info = replace(proxy_info, step_time=step_time)
    if proxy_info is not None:  # the proxy's span includes its pruning
        search = [_with_pruning(s, proxy_info) for s in search]
        repeats = [_repeat_with_pruning(r, proxy_info) for r in repeats]
    data_summary = next((s.user_attrs["data"] for s in loaded.values() if "data" in s.user_attrs),
                        {"name": config.data})
    saved = config.to_dict()
    if config.storage is not None:
        saved["storage"] = mask_url(config.storage)
    return HpoReport(kind=kind, config=saved, data=data_summary, studies=tuple(search),
                     proxy=proxy_info, finals=tuple(finals), rank=rank, hyperband=hyperband,
                     repeats=tuple(repeats))


def _with_pruning(study: StudySummary, info: ProxyInfo) -> StudySummary:
    if study.role != "proxy":
        return study
    return replace(study, wall_seconds=study.wall_seconds + info.prune_seconds)


def _repeat_with_pruning(repeat: RepeatSummary, info: ProxyInfo) -> RepeatSummary:
    wall = dict(repeat.wall_seconds)
    for arm in ("proxy", "confirm"):  # both arms pruned the base network
        if arm in wall:
            wall[arm] += info.prune_seconds
    return replace(repeat, wall_seconds=wall)


def _confirms_proxy(arms: dict[str, StudySummary]) -> bool:
    """The confirmation runs chose the proxy search's own winner."""
    confirm, proxy = arms.get("confirm"), arms.get("proxy")
    return (confirm is not None and proxy is not None and confirm.best_params is not None
            and confirm.best_params == proxy.best_params)


def _proxy_trial(study: optuna.Study | None, arms: dict[str, StudySummary]) -> int | None:
    """The proxy search's number of the confirmation runs' winner."""
    confirm = arms.get("confirm")
    if study is None or confirm is None or confirm.best_trial is None:
        return None
    return study.get_trials(deepcopy=False)[confirm.best_trial].user_attrs.get("proxy_trial")


def _repeat(index: int, arms: dict[str, StudySummary], finals: dict[str, FinalSummary | None],
            rank: RankSummary | None, confirmed_from: int | None = None,
            brackets: int | None = None) -> RepeatSummary:
    """One replicate; the ``confirm`` arm's time is the proxy search's plus its own, and its
    winner is named by its proxy trial (``confirm_trial``: its confirmation run). With
    Hyperband (``brackets``: how many), ``shared_brackets`` says whether the two searches
    put trial n in the same bracket."""
    winners = {arm: None if s.best_trial is None else {
        "trial": s.best_trial, "value": s.best_value, "params": s.best_params}
        for arm, s in arms.items()}
    if winners.get("confirm") and confirmed_from is not None:
        winners["confirm"] = {**winners["confirm"], "trial": confirmed_from,
                              "confirm_trial": winners["confirm"]["trial"]}
    wall = {arm: s.wall_seconds for arm, s in arms.items()}
    compute = {arm: s.trial_seconds for arm, s in arms.items()}
    if "confirm" in arms and "proxy" in arms:
        wall["confirm"] += wall["proxy"]
        compute["confirm"] += compute["proxy"]
    return RepeatSummary(
        repeat=index, winners=winners,
        test_accuracy={arm: None if f is None else f.mean for arm, f in finals.items()},
        wall_seconds=wall, compute_seconds=compute,
        tau=rank.tau if rank is not None else None,
        shared_brackets=_shared_brackets(arms, brackets) if brackets else None)


def _shared_brackets(arms: dict[str, StudySummary], brackets: int) -> bool | None:
    """Whether the typical and proxy searches put each trial in the same Hyperband bracket:
    always with one bracket, else when both drew them from the same key (False for studies
    made before keys, which drew them by study name, or an arm imported from such a run;
    the confirm arm's runs are not pruned). None while one of them is missing."""
    typical, proxy = arms.get("typical"), arms.get("proxy")
    if typical is None or proxy is None:
        return None
    return brackets == 1 or (typical.bracket_key is not None
                             and typical.bracket_key == proxy.bracket_key)


def _record(trial: optuna.trial.FrozenTrial, study: optuna.Study) -> TrialRecord:
    return TrialRecord(
        number=trial.number, state=trial.state.name, value=trial_value(trial),
        params=dict(trial.user_attrs.get("hyperparams", trial.params)),
        epochs_run=len(trial.intermediate_values),
        seconds=(None if (interval := active_interval(trial)) is None
                 else (interval[1] - interval[0]).total_seconds()),
        reason=trial.user_attrs.get("reason") or liveness.interruption(study, trial),
    )


def _importances(study: optuna.Study) -> dict[str, float] | None:
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 4 or not any(t.params for t in complete):
        return None  # too few points for any importance estimate to mean something
    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "some regimes have less than 2 trials"
            importances = optuna.importance.get_param_importances(study)
    except Exception as err:  # noqa: BLE001 - a degenerate study: skip the plot, say why
        logger.info("no parameter importances for %s: %s", study.study_name, err)
        return None
    return {name: float(value) for name, value in importances.items()
            if math.isfinite(value)} or None


def summarise_search(study: optuna.Study, config: HpoConfig,
                     name: str | None = None) -> StudySummary:
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name != "WAITING"]
    found = best_trial(study)
    return StudySummary(
        name=name or study.study_name, role=str(study.user_attrs.get("role", "base")),
        budget=int(study.user_attrs.get("budget", config.trials)),
        wall_seconds=round(elapsed_span(trials), 3),
        trials=tuple(_record(t, study) for t in trials),
        best_trial=found[0].number if found else None,
        best_value=float(found[0].value) if found else None,
        best_params=found[1].to_dict() if found else None,
        importances=_importances(study),
        bracket_key=study.user_attrs.get(BRACKET_KEY),
    )


def planned_scores(study: optuna.Study) -> dict[str, tuple[float | None, Any]]:
    """``plan_key -> (score, trial)`` of the finished, non-interrupted planned trials; a
    diverged trial scores 0.0, a failed one None."""
    retried = liveness.retried_numbers(study)
    scores: dict[str, tuple[float | None, Any]] = {}
    for trial in study.get_trials(deepcopy=False):
        if liveness.finished(trial, retried) and "plan_key" in trial.user_attrs:
            score = trial_value(trial) if trial.state.name != "FAIL" else None
            scores[trial.user_attrs["plan_key"]] = (score, trial)
    return scores


def summarise_final(loaded: dict[str, optuna.Study], source: str,
                    search: list[StudySummary]) -> FinalSummary | None:
    candidates = {name: s for name, s in loaded.items() if name.startswith(f"final-{source}-")}
    if not candidates:
        return None
    winner = next((s.best_params for s in search if s.name == source), None)
    wanted = None if winner is None else f"final-{source}-{digest(winner)}"
    study = candidates.get(wanted) or max(candidates.values(), key=_optuna.study_id)
    seeds, accuracies, failed, params, model_path = [], [], [], {}, None
    best_value = -1.0
    scores = planned_scores(study)
    for _key, (score, trial) in sorted(scores.items(), key=lambda kv: kv[1][1].user_attrs["seed"]):
        seed = int(trial.user_attrs["seed"])
        params = trial.user_attrs["hyperparams"]
        seeds.append(seed)
        if score is None:
            failed.append(seed)
            continue
        accuracies.append(score)
        if score > best_value and "model_path" in trial.user_attrs:
            best_value, model_path = score, trial.user_attrs["model_path"]
    if not seeds:
        waiting = study.get_trials(deepcopy=False)
        params = waiting[0].user_attrs.get("hyperparams", {}) if waiting else {}
    return FinalSummary(source=source, params=params, seeds=tuple(seeds),
                        accuracies=tuple(accuracies), failed_seeds=tuple(failed),
                        model_path=model_path)


def summarise_rank(base: optuna.Study, proxy: optuna.Study) -> RankSummary:
    base_scores, proxy_scores = planned_scores(base), planned_scores(proxy)
    keys = sorted(set(base_scores) | set(proxy_scores), key=lambda k: int(k.removeprefix("config")))
    params = []
    for key in keys:
        trial = (base_scores.get(key) or proxy_scores.get(key))[1]
        params.append(trial.user_attrs["hyperparams"])
    return RankSummary.compute(
        params, [base_scores[k][0] if k in base_scores else None for k in keys],
        [proxy_scores[k][0] if k in proxy_scores else None for k in keys])


__all__ = ["active_interval", "best_trial", "collect_report", "elapsed_span", "repeat_prefix",
           "summarise_final", "summarise_rank", "summarise_search", "top_trials"]
