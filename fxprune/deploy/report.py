"""The dense-vs-slim profile report: data that serialises to JSON and renders itself.

``ProfileReport`` holds two ``ModelProfile``s (params, MACs, latency per batch size),
the ``Environment`` they were measured in and an optional ratio sweep. Speed-ups come
with the interval of the two medians; one whose interval contains 1 is "no measurable
difference", and no efficiency is claimed for it.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fxprune.errors import ConfigError

from .profiling import LatencyStat, compare, verdict
from .runtime import cpu_model

NO_DIFFERENCE = "no measurable difference"


@dataclass(frozen=True)
class ModelProfile:
    """One model in the comparison: size, cost and latency per batch size."""

    name: str
    params: int
    macs: int | None  # None when the MACs counter is unavailable
    latency: tuple[LatencyStat, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params": self.params,
            "macs": self.macs,
            "latency": [stat.to_dict() for stat in self.latency],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelProfile:
        return cls(
            name=data["name"],
            params=data["params"],
            macs=data["macs"],
            latency=tuple(LatencyStat.from_dict(stat) for stat in data["latency"]),
        )

    def at(self, batch: int) -> LatencyStat | None:
        return next((stat for stat in self.latency if stat.batch == batch), None)


@dataclass(frozen=True)
class Environment:
    """Where the numbers were measured; two reports compare only if these match."""

    provider: str  # the provider that ran the sessions, e.g. CPUExecutionProvider
    threads: int | None  # intra-op threads; None = onnxruntime default
    batch_sizes: tuple[int, ...]
    onnxruntime: str
    torch: str
    cpu: str
    gpu: str | None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["batch_sizes"] = list(self.batch_sizes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Environment:
        return cls(**{**data, "batch_sizes": tuple(data["batch_sizes"])})

    @classmethod
    def current(cls, provider: str, threads: int | None, batch_sizes: Sequence[int]) -> Environment:
        import onnxruntime as ort
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        return cls(
            provider=provider,
            threads=threads,
            batch_sizes=tuple(batch_sizes),
            onnxruntime=ort.__version__,
            torch=torch.__version__,
            cpu=cpu_model(),
            gpu=gpu,
        )


@dataclass(frozen=True)
class SweepPoint:
    """Cost and latency of the model pruned at one ratio (ratio 0 = dense)."""

    ratio: float
    params: int
    macs: int | None
    batch: int
    latency_ms: float  # median

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepPoint:
        return cls(**data)


@dataclass(frozen=True)
class ProfileReport:
    """Dense vs slim: params, MACs, latency per batch and the ratios between them.

    speed-up = dense median / slim median; MACs reduction = dense MACs / slim MACs;
    efficiency = speed-up / MACs reduction (1.0: latency falls exactly as MACs do).
    """

    dense: ModelProfile
    slim: ModelProfile
    environment: Environment
    sweep: tuple[SweepPoint, ...] = field(default=())
    layers: tuple[dict[str, Any], ...] = field(default=())  # per-layer latency, dense vs slim

    # ---- derived numbers
    @property
    def macs_reduction(self) -> float | None:
        if not self.dense.macs or not self.slim.macs:
            return None
        return self.dense.macs / self.slim.macs

    @property
    def params_reduction(self) -> float | None:
        return self.dense.params / self.slim.params if self.slim.params else None

    def speedup(self, batch: int) -> float | None:
        dense, slim = self.dense.at(batch), self.slim.at(batch)
        if dense is None or slim is None or slim.median_ms <= 0:
            return None
        return dense.median_ms / slim.median_ms

    def speedup_interval(self, batch: int) -> tuple[float, float] | None:
        dense, slim = self.dense.at(batch), self.slim.at(batch)
        if dense is None or slim is None:
            return None
        _, low, high = compare(dense, slim)
        return None if low is None else (low, high)

    def verdict(self, batch: int) -> str | None:
        """"faster", "slower", "no measurable difference", or None (no intervals)."""
        dense, slim = self.dense.at(batch), self.slim.at(batch)
        return None if dense is None or slim is None else verdict(dense, slim)

    def efficiency(self, batch: int) -> float | None:
        if self.verdict(batch) == NO_DIFFERENCE:
            return None  # a speed-up inside the noise says nothing about efficiency
        speedup, reduction = self.speedup(batch), self.macs_reduction
        return speedup / reduction if speedup is not None and reduction else None

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(stat.batch for stat in self.dense.latency if self.slim.at(stat.batch))

    # ---- data
    def to_dict(self) -> dict[str, Any]:
        data = {
            "dense": self.dense.to_dict(),
            "slim": self.slim.to_dict(),
            "environment": self.environment.to_dict(),
            "sweep": [point.to_dict() for point in self.sweep],
            # derived, for readers of the JSON; ignored by from_dict
            "summary": {
                "macs_reduction": self.macs_reduction,
                "params_reduction": self.params_reduction,
                "per_batch": [self._batch_summary(b) for b in self.batch_sizes],
            },
        }
        if self.layers:
            data["layers"] = list(self.layers)
        return data

    def _batch_summary(self, batch: int) -> dict[str, Any]:
        row = {"batch": batch, "speedup": self.speedup(batch), "efficiency": self.efficiency(batch)}
        interval = self.speedup_interval(batch)
        if interval is not None:
            row["speedup_ci"] = list(interval)
            row["verdict"] = self.verdict(batch)
        return row

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProfileReport:
        try:
            return cls(
                dense=ModelProfile.from_dict(data["dense"]),
                slim=ModelProfile.from_dict(data["slim"]),
                environment=Environment.from_dict(data["environment"]),
                sweep=tuple(SweepPoint.from_dict(p) for p in data.get("sweep", ())),
                layers=tuple(data.get("layers", ())),
            )
        except (KeyError, TypeError) as error:
            raise ConfigError(f"not a profile report: missing or bad field {error}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ProfileReport:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> Path:
        return write_atomically(Path(path), self.to_json().encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ProfileReport:
        return cls.from_json(Path(path).read_text())

    # ---- terminal
    def __rich__(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        sizes = Table(title="Model size", title_justify="left")
        for header in ("Model", "Params", "MACs", "Params ↓", "MACs ↓"):
            sizes.add_column(header, justify="left" if header == "Model" else "right")
        sizes.add_row(self.dense.name, count(self.dense.params), count(self.dense.macs), "", "")
        sizes.add_row(self.slim.name, count(self.slim.params), count(self.slim.macs),
                      factor(self.params_reduction), factor(self.macs_reduction))  # fmt: skip

        latency = Table(title="Latency (ms per run: median [95% CI], min-max) and throughput",
                        title_justify="left")  # fmt: skip
        headers = ("Batch", "Dense p50", "Dense p90", "Slim p50", "Slim p90",
                   "Dense img/s", "Slim img/s", "Speed-up", "Efficiency")  # fmt: skip
        for header in headers:
            latency.add_column(header, justify="right")
        for batch in self.batch_sizes:
            dense, slim = self.dense.at(batch), self.slim.at(batch)
            latency.add_row(
                str(batch), _median(dense), f"{dense.p90_ms:.3f}", _median(slim),
                f"{slim.p90_ms:.3f}", f"{dense.throughput:,.0f}", f"{slim.throughput:,.0f}",
                self._speedup_text(batch), plain(self.efficiency(batch)),
            )  # fmt: skip

        parts: list[Any] = [sizes, latency]
        for batch in self.batch_sizes:
            if self.verdict(batch) is not None:
                parts.append(Text(self.verdict_line(batch)))
        if self.layers:
            parts.append(layers_table(self.layers))
        if self.sweep:
            sweep = Table(title="Sweep", title_justify="left")
            for header in ("Ratio", "Params", "MACs", "Batch", "p50 ms"):
                sweep.add_column(header, justify="right")
            for point in self.sweep:
                sweep.add_row(f"{point.ratio:.2f}", count(point.params), count(point.macs),
                              str(point.batch), f"{point.latency_ms:.3f}")  # fmt: skip
            parts.append(sweep)
        env = self.environment
        parts.append(
            Text(
                f"{env.provider}, threads={env.threads or 'default'}, onnxruntime {env.onnxruntime}, "
                f"torch {env.torch}, CPU: {env.cpu}" + (f", GPU: {env.gpu}" if env.gpu else ""),
                style="dim",
            )
        )
        return Group(*parts)

    def _speedup_text(self, batch: int) -> str:
        speedup, interval = self.speedup(batch), self.speedup_interval(batch)
        if interval is None:
            return factor(speedup)
        return f"{factor(speedup)} [{interval[0]:.2f}-{interval[1]:.2f}]"

    def verdict_line(self, batch: int) -> str:
        """One sentence per batch size: the verdict and the interval it rests on."""
        low, high = self.speedup_interval(batch)
        judged = self.verdict(batch)
        where = f"speed-up {self.speedup(batch):.2f}× (95% interval {low:.2f}-{high:.2f})"
        if judged == NO_DIFFERENCE:
            return f"batch {batch}: {NO_DIFFERENCE}: {where} is inside the noise (±3%)"
        return f"batch {batch}: slim is {judged}: {where}"


def layers_table(layers: Iterable[dict[str, Any]], limit: int = 12):
    """The costliest layers: dense vs slim ms per run (onnxruntime node profile)."""
    from rich.table import Table

    table = Table(title="Slowest layers (ms per run, onnxruntime node profile)",
                  title_justify="left")  # fmt: skip
    for header in ("Layer", "Op", "Dense ms", "Slim ms", "Speed-up"):
        table.add_column(header, justify="left" if header in ("Layer", "Op") else "right")
    for row in list(layers)[:limit]:
        dense, slim = row.get("dense_ms"), row.get("slim_ms")
        table.add_row(row["layer"], row.get("op", ""), _ms(dense), _ms(slim),
                      factor(dense / slim) if dense and slim else "—")  # fmt: skip
    return table


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _median(stat: LatencyStat) -> str:
    if stat.ci_low_ms is None or stat.min_ms is None:
        return f"{stat.median_ms:.3f}"
    return (f"{stat.median_ms:.3f} [{stat.ci_low_ms:.3g}-{stat.ci_high_ms:.3g}] "
            f"{stat.min_ms:.3g}-{stat.max_ms:.3g}")  # fmt: skip


def count(value: int | None) -> str:
    if value is None:
        return "—"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(value)


def factor(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def plain(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


# --------------------------------------------------------------------------- plots


def sweep_plot(records: Iterable[Sequence[float]], png_path: str | os.PathLike) -> Path:
    """Save a PNG of MACs and latency vs pruning ratio from ``(ratio, macs, latency_ms)``
    records (``SweepPoint``s work too). Returns the path written."""
    points = sorted(_as_record(record) for record in records)
    if not points:
        raise ConfigError("sweep_plot needs at least one (ratio, macs, latency_ms) record")
    figure, (macs_axes, latency_axes) = new_figure(2)
    ratios = [ratio for ratio, _, _ in points]
    macs_axes.plot(ratios, [macs / 1e6 if macs is not None else float("nan") for _, macs, _ in points],
                   "o-", color="tab:blue")  # fmt: skip
    macs_axes.set(xlabel="pruning ratio", ylabel="MMACs", title="MACs vs pruning ratio")
    latency_axes.plot(ratios, [latency for _, _, latency in points], "s-", color="tab:orange")
    latency_axes.set(xlabel="pruning ratio", ylabel="median latency (ms)",
                     title="Latency vs pruning ratio")  # fmt: skip
    for axes in (macs_axes, latency_axes):
        axes.grid(alpha=0.3)
        axes.set_ylim(bottom=0)
    return save_figure(figure, png_path)


def new_figure(columns: int, width: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * columns, 3.6), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)  # Agg without touching pyplot's global backend
    axes = figure.subplots(1, columns, squeeze=False)[0]
    return figure, axes


def save_figure(figure, png_path: str | os.PathLike) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return write_atomically(Path(png_path), buffer.getvalue())


def _as_record(record) -> tuple[float, float | None, float]:
    if isinstance(record, SweepPoint):
        return (record.ratio, record.macs, record.latency_ms)
    try:
        ratio, macs, latency_ms = record
        return (float(ratio), None if macs is None else float(macs), float(latency_ms))
    except (TypeError, ValueError):
        raise ConfigError(
            f"bad sweep record {record!r}: expected (ratio, macs, latency_ms)"
        ) from None


def write_atomically(path: Path, data: bytes) -> Path:
    """``fxprune.io``'s one atomic writer (0644)."""
    from fxprune.io import atomic_write_bytes

    return atomic_write_bytes(path, data)


__all__ = [
    "NO_DIFFERENCE",
    "Environment",
    "ModelProfile",
    "ProfileReport",
    "SweepPoint",
    "count",
    "factor",
    "layers_table",
    "new_figure",
    "save_figure",
    "sweep_plot",
    "write_atomically",
]
