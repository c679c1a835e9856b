"""Deployment: ONNX export, onnxruntime sessions, profiling you can believe, latency targets.

Layer 7: built on ``fxprune.api`` and below; nothing below imports it. onnxruntime,
onnx and matplotlib load lazily, inside the functions that need them.

    export.py          export_onnx: TorchScript/dynamo, names, dynamic axes, parity
    onnx_check.py      the checker, onnxruntime parity, inputs at other sizes
    quiet.py           silencing the exporters; one-line error messages
    runtime.py         providers and sessions (CPU default, CUDA/TensorRT when present)
    profiling.py       timing until the median's 95% interval is within +-3%
    dense_vs_slim.py   profile_models: the report behind ``fxprune profile``
    layer_profile.py   per-node times from onnxruntime's profiler
    report.py          ProfileReport and friends: JSON + rich rendering, plots
    latency_table.py   latency vs kept width per layer, measured, cached on disk
    latency_selection.py  greedy score-per-millisecond selection under a budget
    latency_target.py  prune_to_latency / LatencyTarget: table, selection, +-10% correction
    step_time.py       training step time in PyTorch (for the HPO proxy)
"""

from .dense_vs_slim import measure_model, profile_models
from .export import DEFAULT_OPSET, DYNAMIC, EXPORTERS, ExportReport, export_onnx
from .latency_target import LatencyResult, LatencyTarget, prune_to_latency
from .profiling import LatencyStat, Timing, profile_many, profile_onnx
from .report import Environment, ModelProfile, ProfileReport, SweepPoint, sweep_plot
from .runtime import PROVIDERS, cpu_model, resolve_providers
from .step_time import StepTime, StepTimeComparison, compare_step_times, measure_step_time

__all__ = [
    "DEFAULT_OPSET",
    "DYNAMIC",
    "EXPORTERS",
    "PROVIDERS",
    "Environment",
    "ExportReport",
    "LatencyResult",
    "LatencyStat",
    "LatencyTarget",
    "ModelProfile",
    "ProfileReport",
    "StepTime",
    "StepTimeComparison",
    "SweepPoint",
    "Timing",
    "compare_step_times",
    "cpu_model",
    "export_onnx",
    "measure_model",
    "measure_step_time",
    "profile_many",
    "profile_models",
    "profile_onnx",
    "prune_to_latency",
    "resolve_providers",
    "sweep_plot",
]
