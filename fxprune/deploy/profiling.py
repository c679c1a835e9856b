"""Timing ONNX files in onnxruntime so that the numbers can be believed.

One rule everywhere: after a warm-up, time runs until the median's 95% confidence
interval is within ``+-rel_ci`` (3% by default) of the median, at least ``min_runs`` runs
and ``min_seconds``, at most ``max_seconds`` (then the interval says how sure we are).
The interval is the distribution-free one of the order statistics: ranks
``n/2 -+ 1.96 sqrt(n)/2`` of the sorted run times.

Two models compared are timed *interleaved* (alternating slots of runs, order reversed
every round), so load that comes and goes on a shared machine hits both alike; a
difference whose interval contains 1 is reported as "no measurable difference".

Timing note: inputs are fed from host memory, so on a GPU the numbers include the
host->device copies, i.e. what a caller of ``session.run`` actually waits for.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from fxprune.errors import ConfigError

from .runtime import checked_batches, open_session, random_feed, resolve_providers

Progress = Callable[[str], None]
PROGRESS_EVERY_S = 2.0
NOISE_FLOOR = 0.03  # speed-ups within +-3% of 1 are not claimed (see ``verdict``)  # at most one progress line per this many seconds while timing


@dataclass(frozen=True)
class LatencyStat:
    """Latency of one ONNX file at one batch size, in milliseconds per ``session.run``.

    ``ci_low_ms``/``ci_high_ms``: the median's 95% confidence interval (None in reports
    written before it was measured).
    """

    batch: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    throughput: float  # images (samples) per second at the median latency
    runs: int
    min_ms: float | None = None
    max_ms: float | None = None
    ci_low_ms: float | None = None
    ci_high_ms: float | None = None

    @classmethod
    def from_times(cls, batch: int, times_ms: Sequence[float]) -> LatencyStat:
        ordered = sorted(times_ms)
        median = statistics.median(ordered)
        low, high = median_interval(ordered)
        p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
        return cls(
            batch=batch,
            median_ms=median,
            p90_ms=max(p90, median),
            mean_ms=statistics.fmean(ordered),
            throughput=batch / (median / 1e3) if median > 0 else float("inf"),
            runs=len(ordered),
            min_ms=ordered[0],
            max_ms=ordered[-1],
            ci_low_ms=low,
            ci_high_ms=high,
        )

    @property
    def rel_ci(self) -> float | None:
        """Half-width of the median's interval relative to the median."""
        if self.ci_low_ms is None or self.ci_high_ms is None or self.median_ms <= 0:
            return None
        return (self.ci_high_ms - self.ci_low_ms) / 2 / self.median_ms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyStat:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def median_interval(times: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """Distribution-free ~95% interval of the median from sorted order statistics."""
    ordered = sorted(times)
    n = len(ordered)
    if n < 6:  # too few runs for a 95% interval: the whole range is all we can say
        return ordered[0], ordered[-1]
    half = z * math.sqrt(n) / 2
    low = max(0, math.floor(n / 2 - half) - 1)
    high = min(n - 1, math.ceil(n / 2 + half))
    return ordered[low], ordered[high]


def converged(times: Sequence[float], rel_ci: float) -> bool:
    if len(times) < 6:
        return False
    low, high = median_interval(times)
    median = statistics.median(times)
    return median > 0 and (high - low) / 2 <= rel_ci * median


def compare(base: LatencyStat, other: LatencyStat) -> tuple[float, float | None, float | None]:
    """(speed-up, low, high) of ``other`` relative to ``base``: base median / other median,
    with the interval from the two medians' intervals (None when they were not measured)."""
    speedup = base.median_ms / other.median_ms if other.median_ms > 0 else float("inf")
    if None in (base.ci_low_ms, base.ci_high_ms, other.ci_low_ms, other.ci_high_ms):
        return speedup, None, None
    low = base.ci_low_ms / other.ci_high_ms if other.ci_high_ms else float("inf")
    high = base.ci_high_ms / other.ci_low_ms if other.ci_low_ms else float("inf")
    return speedup, low, high


def verdict(base: LatencyStat, other: LatencyStat, floor: float = NOISE_FLOOR) -> str | None:
    """"faster", "slower" or "no measurable difference" (None without intervals).

    A difference counts only when the speed-up's whole interval lies beyond ``floor``
    (3%, the resolution the timing aims for): two sessions of the very same model differ
    by a fraction of a percent with tight intervals (memory placement, cache state), and
    that is not a result.
    """
    _, low, high = compare(base, other)
    if low is None or high is None:
        return None
    if low > 1.0 + floor:
        return "faster"
    if high < 1.0 / (1.0 + floor):
        return "slower"
    return "no measurable difference"


# --------------------------------------------------------------------------- timing loop


@dataclass(frozen=True)
class Timing:
    """When to stop timing: see the module docstring."""

    warmup: int = 10
    min_runs: int = 20
    min_seconds: float = 1.0
    max_seconds: float = 30.0
    rel_ci: float = 0.03
    slot_seconds: float = 0.2  # interleaved: each model runs this long per round

    def __post_init__(self):
        if self.warmup < 0 or self.min_runs < 1 or self.min_seconds < 0 or self.max_seconds < 0:
            raise ConfigError(
                f"need warmup >= 0, min_runs >= 1, min_seconds >= 0, max_seconds >= 0; got "
                f"{self.warmup}, {self.min_runs}, {self.min_seconds}, {self.max_seconds}"
            )
        if not 0 < self.rel_ci < 1:
            raise ConfigError(f"rel_ci must be in (0, 1), got {self.rel_ci}")


def time_interleaved(
    runners: dict[str, Callable[[], Any]],
    timing: Timing = Timing(),
    *,
    progress: Progress | None = None,
    what: str = "",
) -> dict[str, list[float]]:
    """Run-times (ms) of each runner, timed in alternating slots until every median's
    interval is within ``timing.rel_ci`` (bounded by ``timing.max_seconds``)."""
    names = list(runners)
    reps = {}
    for name in names:
        for _ in range(timing.warmup):
            runners[name]()
        tick = time.perf_counter()
        runners[name]()
        once = time.perf_counter() - tick
        reps[name] = int(min(200, max(1, timing.slot_seconds // max(once, 1e-6))))
    times: dict[str, list[float]] = {name: [] for name in names}
    started = last_note = time.perf_counter()
    rounds = 0
    while True:
        elapsed = time.perf_counter() - started
        enough = all(len(t) >= timing.min_runs for t in times.values()) and (
            elapsed >= timing.min_seconds
        )
        if enough and all(converged(t, timing.rel_ci) for t in times.values()):
            break
        if rounds and elapsed >= timing.max_seconds and all(len(t) >= 1 for t in times.values()):
            break
        order = names if rounds % 2 == 0 else names[::-1]
        for name in order:
            run = runners[name]
            for _ in range(reps[name]):
                tick = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - tick) * 1e3)
        rounds += 1
        if progress is not None and time.perf_counter() - last_note >= PROGRESS_EVERY_S:
            last_note = time.perf_counter()
            progress(f"timing{' ' + what if what else ''}: {_state(times)}")
    return times


def _state(times: dict[str, list[float]]) -> str:
    parts = []
    for name, runs in times.items():
        if len(runs) >= 6:
            low, high = median_interval(runs)
            median = statistics.median(runs)
            parts.append(f"{name} {median:.3g} ms +-{100 * (high - low) / 2 / median:.1f}% ({len(runs)} runs)")
        else:
            parts.append(f"{name} {len(runs)} runs")
    return ", ".join(parts)


# --------------------------------------------------------------------------- ONNX files


def profile_onnx(
    path: str | os.PathLike,
    batch_sizes: Sequence[int] = (1,),
    *,
    threads: int | None = None,
    provider: str = "auto",
    warmup: int = 10,
    min_runs: int = 20,
    min_seconds: float = 1.0,
    max_seconds: float = 30.0,
    rel_ci: float = 0.03,
    progress: Progress | None = None,
) -> list[LatencyStat]:
    """Time ``path`` in onnxruntime at each batch size (random inputs, shape from the file).

    Each batch size gets ``warmup`` untimed runs, then timed runs until the median's 95%
    interval is within ``+-rel_ci`` and both ``min_runs`` and ``min_seconds`` are reached,
    or ``max_seconds`` has passed. ``threads`` sets intra-op threads (None: ort default).
    """
    return profile_many({"model": path}, batch_sizes, threads=threads, provider=provider,
                        timing=Timing(warmup, min_runs, min_seconds, max_seconds, rel_ci),
                        progress=progress)["model"]  # fmt: skip


def profile_many(
    paths: dict[str, str | os.PathLike],
    batch_sizes: Sequence[int] = (1,),
    *,
    threads: int | None = None,
    provider: str = "auto",
    timing: Timing = Timing(),
    progress: Progress | None = None,
) -> dict[str, list[LatencyStat]]:
    """Several ONNX files timed interleaved at each batch size (same random feed)."""
    import numpy as np

    batches = checked_batches(batch_sizes)
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    providers = resolve_providers(provider)
    sessions = {name: open_session(Path(p), providers, threads) for name, p in paths.items()}
    stats: dict[str, list[LatencyStat]] = {name: [] for name in paths}
    for batch in batches:
        feeds = {
            name: random_feed(session, batch, np.random.default_rng(0), Path(paths[name]))
            for name, session in sessions.items()
        }
        runners = {
            name: (lambda s=session, f=feeds[name]: s.run(None, f))
            for name, session in sessions.items()
        }
        times = time_interleaved(runners, timing, progress=progress, what=f"batch {batch}")
        for name in paths:
            stats[name].append(LatencyStat.from_times(batch, times[name]))
    return stats


__all__ = [
    "LatencyStat",
    "Progress",
    "Timing",
    "compare",
    "converged",
    "median_interval",
    "profile_many",
    "profile_onnx",
    "time_interleaved",
    "verdict",
]
