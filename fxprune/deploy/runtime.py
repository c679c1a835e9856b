"""ONNX Runtime sessions: which providers, how a session is opened, what it is fed.

Everything that talks to ``onnxruntime`` directly lives here, so the rest of
``fxprune.deploy`` (export parity, profiling, the latency table) opens sessions one way:
``ORT_ENABLE_ALL``, intra-op threads as asked (inter-op 1), errors only in the log.
``onnxruntime`` is imported lazily: ``import fxprune.deploy`` stays light.

Providers: CPU is the default and always last in the list. CUDA is used when torch sees
a GPU *and* this onnxruntime build has the CUDA provider; TensorRT only when asked and its
libraries are present. (No GPU was available while this was written: the CUDA and
TensorRT branches are untested here.)
"""

from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fxprune.errors import ConfigError, ProfileError

PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

# onnxruntime type strings -> numpy dtype names, for random inputs.
ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


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
    problem = gpu_problem()
    if choice == "auto":
        return [CPU] if problem else [CUDA, CPU]
    if problem:
        raise ProfileError(f"provider {choice!r} asked but {problem}; use --provider cpu")
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
def gpu_problem() -> str | None:
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


def open_session(
    model: str | Path | bytes,
    providers: list[str] | None = None,
    threads: int | None = None,
    *,
    profile_prefix: str | None = None,
):
    """An ``InferenceSession`` for a file (or serialised model bytes), set up the one way.

    ``threads`` sets intra-op threads (None: onnxruntime's default); ``profile_prefix``
    turns on onnxruntime's per-node profiler. Failures are one ``ProfileError`` line.
    """
    import onnxruntime as ort

    providers = providers or [CPU]
    where = "the model" if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise ProfileError(f"ONNX file not found: {model}")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no provider-fallback chatter
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    source = model if isinstance(model, bytes) else str(model)
    try:
        session = ort.InferenceSession(source, options, providers=providers)
    except Exception as error:  # noqa: BLE001 - corrupt file, bad provider libs, ...
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ProfileError(f"onnxruntime cannot load {where}: {first}") from None
    if providers[0] != CPU and providers[0] not in session.get_providers():
        raise ProfileError(
            f"onnxruntime fell back to {session.get_providers()[0]} for {where}: "
            f"{providers[0]} failed to initialise (CUDA/cuDNN libraries?)"
        )
    return session


def random_feed(
    session, batch: int, rng, path: str | Path = "the model", *, sizes: dict[str, list[int]] | None = None
) -> dict[str, Any]:
    """Random inputs for every input of ``session`` at ``batch``.

    Symbolic non-batch dims need a value from ``sizes`` (input name -> full shape);
    integer inputs get small non-negative values so they stay valid embedding ids.
    """
    import numpy as np

    feed = {}
    for node in session.get_inputs():
        dims = list(sizes[node.name]) if sizes and node.name in sizes else list(node.shape)
        if not dims:
            raise ProfileError(f"{path}: input {node.name!r} is a scalar; no batch axis to set")
        if isinstance(dims[0], int) and dims[0] != batch and not (sizes and node.name in sizes):
            raise ProfileError(
                f"{path}: input {node.name!r} has a fixed batch size {dims[0]}, cannot run batch "
                f"{batch}; export with dynamic_batch=True"
            )
        dims[0] = batch
        unknown = [i for i, d in enumerate(dims) if not isinstance(d, int) or d < 1]
        if unknown:
            raise ProfileError(
                f"{path}: input {node.name!r} has symbolic dims {unknown} besides the batch; "
                "export with fixed non-batch dims or give their sizes"
            )
        dtype = ORT_DTYPES.get(node.type)
        if dtype is None:
            raise ProfileError(f"{path}: input {node.name!r} has unsupported type {node.type}")
        if dtype.startswith("float"):
            feed[node.name] = rng.standard_normal(dims).astype(dtype)
        elif dtype == "bool":
            feed[node.name] = rng.integers(0, 2, dims).astype(bool)
        else:  # ids: small non-negative values stay valid for embedding tables
            feed[node.name] = rng.integers(0, 2, dims).astype(np.dtype(dtype))
    return feed


def checked_batches(batch_sizes: Iterable[int]) -> tuple[int, ...]:
    batches = tuple(batch_sizes)
    if not batches or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in batches):
        raise ConfigError(f"batch sizes must be positive ints, got {batches!r}")
    return batches


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


def device_name(provider: str) -> str:
    """What the provider runs on: the GPU's name for CUDA/TensorRT, else the CPU's."""
    if provider in (CUDA, TENSORRT):
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    return cpu_model()


__all__ = [
    "CPU",
    "CUDA",
    "ORT_DTYPES",
    "PROVIDERS",
    "TENSORRT",
    "checked_batches",
    "cpu_model",
    "device_name",
    "gpu_problem",
    "open_session",
    "random_feed",
    "resolve_providers",
]
