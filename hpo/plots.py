"""The PNG plots of a run folder, from its ``HpoReport``: each search's optimisation history
and parameter importances, and the proxy-vs-base scatter of the shared configurations.
matplotlib is imported lazily (Agg backend); each file is written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hpo.report import HpoReport, RankSummary, StudySummary, atomic_write


def write_plots(report: HpoReport, out: Path) -> list[Path]:
    """Every plot the report has data for; returns the files written."""
    out, written = Path(out), []
    for study in report.studies:
        if study.trials:
            written.append(plot_history(study, out / f"history_{study.name}.png"))
        if study.importances:
            written.append(plot_importances(study, out / f"importance_{study.name}.png"))
    if report.rank is not None and report.rank.tau is not None:
        where = " (repeat 0)" if len(report.repeats) > 1 else ""
        written.append(plot_proxy_vs_base(report.rank, out / "proxy_vs_base.png", where))
    return written


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(figure: Any, path: Path) -> Path:
    plt = _pyplot()
    try:
        return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110,
                                                             bbox_inches="tight"))
    finally:
        plt.close(figure)


def plot_history(study: StudySummary, path: Path) -> Path:
    """Accuracy of every trial in order, with the best-so-far line."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.4, 3.8))
    markers = {"COMPLETE": ("o", "tab:blue"), "PRUNED": ("x", "tab:orange"),
               "FAIL": ("v", "tab:red")}
    for state, (marker, color) in markers.items():
        points = [(t.number, t.value if t.value is not None else 0.0)
                  for t in study.trials if t.state == state]
        if points:
            axes.scatter(*zip(*points), marker=marker, color=color, label=state.lower())
    best, best_line = -math.inf, []
    for trial in sorted(study.trials, key=lambda t: t.number):
        if trial.state == "COMPLETE" and trial.value is not None:
            best = max(best, trial.value)
        best_line.append((trial.number, best if best > -math.inf else math.nan))
    axes.step(*zip(*best_line), where="post", color="black", label="best so far")
    axes.set(xlabel="trial", ylabel="validation accuracy",
             title=f"Optimisation history: {study.name} ({study.role} network)")
    axes.legend(loc="lower right")
    return _save_figure(figure, path)


def plot_importances(study: StudySummary, path: Path) -> Path:
    plt = _pyplot()
    names = list(study.importances or {})
    values = [study.importances[name] for name in names]  # type: ignore[index]
    figure, axes = plt.subplots(figsize=(6.4, 0.5 + 0.5 * len(names)))
    axes.barh(names[::-1], values[::-1], color="tab:blue")
    axes.set(xlabel="importance (PED-ANOVA, normalised)",
             title=f"Hyperparameter importance: {study.name}")
    return _save_figure(figure, path)


def plot_proxy_vs_base(rank: RankSummary, path: Path, where: str = "") -> Path:
    plt = _pyplot()
    pairs = [(b, p) for b, p in zip(rank.base_scores, rank.proxy_scores)
             if b is not None and p is not None]
    figure, axes = plt.subplots(figsize=(4.8, 4.8))
    axes.scatter([p for _, p in pairs], [b for b, _ in pairs], color="tab:purple")
    low = min(min(pair) for pair in pairs)
    axes.plot([low, 1], [low, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="proxy (pruned, reinitialised) accuracy", ylabel="base network accuracy",
             title=f"Same {len(pairs)} configurations{where}: Kendall tau = {rank.tau:.3f}")
    return _save_figure(figure, path)


__all__ = ["plot_history", "plot_importances", "plot_proxy_vs_base", "write_plots"]
