"""Latency profiling of ONNX files in onnxruntime, and the dense-vs-slim report.

``profile_onnx`` times one file at several batch sizes; ``profile_models`` exports a
dense and a slim model (through ``export_onnx``, parity included), counts their params
and MACs, profiles both and returns a ``ProfileReport``: data that serialises to JSON and
renders itself as a rich table. onnxruntime, matplotlib and the FLOPs counter load lazily.

Timing note: inputs are fed from host memory, so on a GPU the numbers include the
host->device copies, i.e. what a caller of ``session.run`` actually waits for.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import platform
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fxprune.errors import ConfigError, ProfileError

PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

# onnxruntime type strings -> numpy dtype names, for random inputs.
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


# --------------------------------------------------------------------------- providers


def resolve_providers(provider: str) -> list[str]:
    """onnxruntime providers for ``"auto"|"cpu"|"cuda"|"tensorrt"``, CPU always last.

    "auto" picks CUDA only when a GPU is really usable (torch sees one *and* this
    onnxruntime build has the CUDA provider), so a CPU-only box never hears CUDA errors.
    """
    choice = str(provider).strip().lower()
    if choice not in PROVIDERS:
        raise ConfigError(f"unknown provider {provider!r}: choose one of {', '.join(PROVIDERS)}")
    if choice == "cpu":
        return [CPU]
    gpu_problem = _gpu_problem()
    if choice == "auto":
        return [CPU] if gpu_problem else [CUDA, CPU]
    if gpu_problem:
        raise ProfileError(f"provider {choice!r} asked but {gpu_problem}; use --provider cpu")
    if choice == "cuda":
        return [CUDA, CPU]
    import onnxruntime as ort

    if TENSORRT not in ort.get_available_providers() or not _tensorrt_libraries_present():
        raise ProfileError(
            "provider 'tensorrt' asked but TensorRT is not usable here (no "
            "TensorrtExecutionProvider or libnvinfer); use --provider cuda"
        )
    return [TENSORRT, CUDA, CPU]


@functools.cache
def _gpu_problem() -> str | None:
    """Why CUDA cannot be used here, or None when it can (checked once per process)."""
    import onnxruntime as ort
    import torch

    if not torch.cuda.is_available():
        return "no usable GPU (torch.cuda.is_available() is False)"
    if CUDA not in ort.get_available_providers():
        return f"this onnxruntime {ort.__version__} build has no CUDAExecutionProvider"
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:  # find the CUDA/cuDNN libraries shipped with the torch wheels
        # a failure here resurfaces, named, when the CUDA session is created
        with contextlib.suppress(Exception):
            preload()
    return None


def _tensorrt_libraries_present() -> bool:
    import ctypes.util
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None or bool(
        ctypes.util.find_library("nvinfer")
    )


# --------------------------------------------------------------------------- one file


@dataclass(frozen=True)
class LatencyStat:
    """Latency of one ONNX file at one batch size, in milliseconds per ``session.run``."""

    batch: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    throughput: float  # images (samples) per second at the median latency
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyStat:
        return cls(**data)


def profile_onnx(
    path: str | os.PathLike,
    batch_sizes: Sequence[int] = (1,),
    *,
    threads: int | None = None,
    provider: str = "auto",
    warmup: int = 10,
    min_runs: int = 20,
    min_seconds: float = 1.0,
) -> list[LatencyStat]:
    """Time ``path`` in onnxruntime at each batch size (random inputs, shape from the file).

    Each batch size gets ``warmup`` untimed runs, then timed runs until both ``min_runs``
    and ``min_seconds`` are reached. ``threads`` sets intra-op threads (None: ort default).
    """
    import numpy as np

    batches = _checked_batches(batch_sizes)
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    if warmup < 0 or min_runs < 1 or min_seconds < 0:
        raise ConfigError(
            f"need warmup >= 0, min_runs >= 1, min_seconds >= 0; got {warmup}, {min_runs}, {min_seconds}"
        )
    session = _open_session(Path(path), resolve_providers(provider), threads)
    rng = np.random.default_rng(0)
    stats = []
    for batch in batches:
        feed = _random_feed(session, batch, rng, Path(path))
        for _ in range(warmup):
            session.run(None, feed)
        times: list[float] = []
        started = time.perf_counter()
        while len(times) < min_runs or time.perf_counter() - started < min_seconds:
            tick = time.perf_counter()
            session.run(None, feed)
            times.append((time.perf_counter() - tick) * 1e3)
        median = statistics.median(times)
        stats.append(
            LatencyStat(
                batch=batch,
                median_ms=median,
                p90_ms=float(np.percentile(times, 90)),
                mean_ms=statistics.fmean(times),
                throughput=batch / (median / 1e3) if median > 0 else float("inf"),
                runs=len(times),
            )
        )
    return stats


def _open_session(path: Path, providers: list[str], threads: int | None):
    import onnxruntime as ort

    if not path.is_file():
        raise ProfileError(f"ONNX file not found: {path}")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no provider-fallback chatter
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # noqa: BLE001 - corrupt file, bad provider libs, ...
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ProfileError(f"onnxruntime cannot load {path}: {first}") from None
    if providers[0] != CPU and providers[0] not in session.get_providers():
        raise ProfileError(
            f"onnxruntime fell back to {session.get_providers()[0]} for {path}: "
            f"{providers[0]} failed to initialise (CUDA/cuDNN libraries?)"
        )
    return session


def _random_feed(session, batch: int, rng, path: Path) -> dict[str, Any]:
    import numpy as np

    feed = {}
    for node in session.get_inputs():
        dims = list(node.shape)
        if not dims:
            raise ProfileError(f"{path}: input {node.name!r} is a scalar; no batch axis to set")
        if isinstance(dims[0], int) and dims[0] != batch:
            raise ProfileError(
                f"{path}: input {node.name!r} has a fixed batch size {dims[0]}, cannot run batch "
                f"{batch}; export with dynamic_batch=True"
            )
        dims[0] = batch
        unknown = [i for i, d in enumerate(dims) if not isinstance(d, int) or d < 1]
        if unknown:
            raise ProfileError(
                f"{path}: input {node.name!r} has symbolic dims {unknown} besides the batch; "
                "export with fixed non-batch dims"
            )
        dtype = _ORT_DTYPES.get(node.type)
        if dtype is None:
            raise ProfileError(f"{path}: input {node.name!r} has unsupported type {node.type}")
        if dtype.startswith("float"):
            feed[node.name] = rng.standard_normal(dims).astype(dtype)
        elif dtype == "bool":
            feed[node.name] = rng.integers(0, 2, dims).astype(bool)
        else:  # ids: small non-negative values stay valid for embedding tables
            feed[node.name] = rng.integers(0, 2, dims).astype(np.dtype(dtype))
    return feed


def _checked_batches(batch_sizes: Iterable[int]) -> tuple[int, ...]:
    batches = tuple(batch_sizes)
    if not batches or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in batches):
        raise ConfigError(f"batch sizes must be positive ints, got {batches!r}")
    return batches


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class ModelProfile:
    """One model in the comparison: size, cost and latency per batch size."""

    name: str
    params: int
    macs: int | None  # None when the FLOPs counter is unavailable
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

    def efficiency(self, batch: int) -> float | None:
        speedup, reduction = self.speedup(batch), self.macs_reduction
        return speedup / reduction if speedup is not None and reduction else None

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(stat.batch for stat in self.dense.latency if self.slim.at(stat.batch))

    # ---- data
    def to_dict(self) -> dict[str, Any]:
        return {
            "dense": self.dense.to_dict(),
            "slim": self.slim.to_dict(),
            "environment": self.environment.to_dict(),
            "sweep": [point.to_dict() for point in self.sweep],
            # derived, for readers of the JSON; ignored by from_dict
            "summary": {
                "macs_reduction": self.macs_reduction,
                "params_reduction": self.params_reduction,
                "per_batch": [
                    {"batch": b, "speedup": self.speedup(b), "efficiency": self.efficiency(b)}
                    for b in self.batch_sizes
                ],
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProfileReport:
        try:
            return cls(
                dense=ModelProfile.from_dict(data["dense"]),
                slim=ModelProfile.from_dict(data["slim"]),
                environment=Environment.from_dict(data["environment"]),
                sweep=tuple(SweepPoint.from_dict(p) for p in data.get("sweep", ())),
            )
        except (KeyError, TypeError) as error:
            raise ConfigError(f"not a profile report: missing or bad field {error}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ProfileReport:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> Path:
        return _write_atomically(Path(path), self.to_json().encode())

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
        sizes.add_row(self.dense.name, _count(self.dense.params), _count(self.dense.macs), "", "")
        sizes.add_row(
            self.slim.name,
            _count(self.slim.params),
            _count(self.slim.macs),
            _factor(self.params_reduction),
            _factor(self.macs_reduction),
        )

        latency = Table(title="Latency (ms per run) and throughput", title_justify="left")
        headers = ("Batch", "Dense p50", "Dense p90", "Slim p50", "Slim p90",
                   "Dense img/s", "Slim img/s", "Speed-up", "Efficiency")  # fmt: skip
        for header in headers:
            latency.add_column(header, justify="right")
        for batch in self.batch_sizes:
            dense, slim = self.dense.at(batch), self.slim.at(batch)
            latency.add_row(
                str(batch),
                f"{dense.median_ms:.3f}",
                f"{dense.p90_ms:.3f}",
                f"{slim.median_ms:.3f}",
                f"{slim.p90_ms:.3f}",
                f"{dense.throughput:,.0f}",
                f"{slim.throughput:,.0f}",
                _factor(self.speedup(batch)),
                _plain(self.efficiency(batch)),
            )

        parts: list[Any] = [sizes, latency]
        if self.sweep:
            sweep = Table(title="Sweep", title_justify="left")
            for header in ("Ratio", "Params", "MACs", "Batch", "p50 ms"):
                sweep.add_column(header, justify="right")
            for point in self.sweep:
                sweep.add_row(
                    f"{point.ratio:.2f}", _count(point.params), _count(point.macs),
                    str(point.batch), f"{point.latency_ms:.3f}",
                )  # fmt: skip
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


def _count(value: int | None) -> str:
    if value is None:
        return "—"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(value)


def _factor(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _plain(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


@functools.cache
def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else whatever platform knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith(("model name", "hardware", "processor\t: ")):
                    name = line.split(":", 1)[1].strip()
                    if name and not name.isdigit():
                        return name
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


# --------------------------------------------------------------------------- two models


def profile_models(
    dense,
    slim,
    example_inputs,
    batch_sizes: Sequence[int] = (1,),
    threads: int | None = None,
    provider: str = "auto",
    workdir: str | os.PathLike | None = None,
    *,
    names: tuple[str, str] = ("dense", "slim"),
    warmup: int = 10,
    min_runs: int = 20,
    min_seconds: float = 1.0,
) -> ProfileReport:
    """Export ``dense`` and ``slim`` to ONNX (parity-checked) in ``workdir`` and profile both.

    ``workdir`` None uses a temporary folder that is removed afterwards.
    """
    import tempfile

    batches = _checked_batches(batch_sizes)
    providers = resolve_providers(provider)  # fail on a bad provider before exporting
    timing = {"threads": threads, "provider": provider, "warmup": warmup,
              "min_runs": min_runs, "min_seconds": min_seconds}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fxprune-profile-") as scratch:
        folder = Path(workdir) if workdir is not None else Path(scratch)
        profiles = [
            measure_model(
                model, example_inputs, folder / f"{label}.onnx", batches, name=name, **timing
            )
            for model, label, name in ((dense, "dense", names[0]), (slim, "slim", names[1]))
        ]
    return ProfileReport(
        dense=profiles[0],
        slim=profiles[1],
        environment=Environment.current(providers[0], threads, batches),
    )


def measure_model(
    model,
    example_inputs,
    onnx_path: str | os.PathLike,
    batch_sizes: Sequence[int],
    *,
    name: str,
    threads: int | None = None,
    provider: str = "auto",
    warmup: int = 10,
    min_runs: int = 20,
    min_seconds: float = 1.0,
) -> ModelProfile:
    """Export one model to ``onnx_path``, count params/MACs, profile it: a ``ModelProfile``."""
    from fxprune.export import export_onnx

    export_onnx(model, example_inputs, onnx_path)
    latency = profile_onnx(
        onnx_path, batch_sizes, threads=threads, provider=provider,
        warmup=warmup, min_runs=min_runs, min_seconds=min_seconds,
    )  # fmt: skip
    params, macs = _params_and_macs(model, example_inputs)
    return ModelProfile(name=name, params=params, macs=macs, latency=tuple(latency))


def _params_and_macs(model, example_inputs) -> tuple[int, int | None]:
    try:
        from fxprune.flops import count_macs, count_params
    except ImportError:  # the counter is optional for profiling; report MACs as unknown
        return sum(p.numel() for p in model.parameters()), None
    inputs = (example_inputs,) if hasattr(example_inputs, "shape") else tuple(example_inputs)
    return int(count_params(model)), int(count_macs(model, inputs))


# --------------------------------------------------------------------------- sweep plot


def sweep_plot(records: Iterable[Sequence[float]], png_path: str | os.PathLike) -> Path:
    """Save a PNG of MACs and latency vs pruning ratio from ``(ratio, macs, latency_ms)``
    records (``SweepPoint``s work too). Returns the path written."""
    points = sorted(_as_record(record) for record in records)
    if not points:
        raise ConfigError("sweep_plot needs at least one (ratio, macs, latency_ms) record")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ratios = [ratio for ratio, _, _ in points]
    figure = Figure(figsize=(9, 3.6), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)  # Agg without touching pyplot's global backend
    macs_axes, latency_axes = figure.subplots(1, 2)
    macs_axes.plot(ratios, [macs / 1e6 if macs is not None else float("nan") for _, macs, _ in points],
                   "o-", color="tab:blue")  # fmt: skip
    macs_axes.set(xlabel="pruning ratio", ylabel="MMACs", title="MACs vs pruning ratio")
    latency_axes.plot(ratios, [latency for _, _, latency in points], "s-", color="tab:orange")
    latency_axes.set(xlabel="pruning ratio", ylabel="median latency (ms)",
                     title="Latency vs pruning ratio")  # fmt: skip
    for axes in (macs_axes, latency_axes):
        axes.grid(alpha=0.3)
        axes.set_ylim(bottom=0)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return _write_atomically(Path(png_path), buffer.getvalue())


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


def _write_atomically(path: Path, data: bytes) -> Path:
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


__all__ = [
    "PROVIDERS",
    "Environment",
    "LatencyStat",
    "ModelProfile",
    "ProfileReport",
    "SweepPoint",
    "cpu_model",
    "measure_model",
    "profile_models",
    "profile_onnx",
    "resolve_providers",
    "sweep_plot",
]
