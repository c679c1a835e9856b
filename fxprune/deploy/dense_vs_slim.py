"""Dense vs slim in onnxruntime: export both, time them interleaved, report.

``profile_models`` is the one implementation behind ``fxprune profile``: export (parity
checked), params and MACs, interleaved timing per batch size with confidence intervals
(see ``fxprune.deploy.profiling``), optionally a per-layer breakdown from onnxruntime's
node profiler and a ratio sweep. Progress lines go to ``progress`` (e.g. stderr).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .export import export_onnx
from .layer_profile import layer_rows
from .profiling import Progress, Timing, profile_many
from .report import Environment, ModelProfile, ProfileReport, SweepPoint
from .runtime import checked_batches, resolve_providers


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
    max_seconds: float = 30.0,
    rel_ci: float = 0.03,
    per_layer: bool = False,
    sweep: Sequence[tuple[float, object]] = (),
    progress: Progress | None = None,
) -> ProfileReport:
    """Export ``dense`` and ``slim`` to ONNX (parity-checked) in ``workdir`` and profile both,
    interleaved. ``sweep``: ``(ratio, model)`` pairs also timed at the first batch size.
    ``per_layer`` adds the slowest layers (onnxruntime node profile, first batch size).
    ``workdir`` None uses a temporary folder that is removed afterwards.
    """
    batches = checked_batches(batch_sizes)
    providers = resolve_providers(provider)  # fail on a bad provider before exporting
    timing = Timing(warmup, min_runs, min_seconds, max_seconds, rel_ci)
    say = progress or (lambda message: None)
    with tempfile.TemporaryDirectory(prefix="fxprune-profile-") as scratch:
        folder = Path(workdir) if workdir is not None else Path(scratch)
        paths = {"dense": folder / "dense.onnx", "slim": folder / "slim.onnx"}
        for label, model in (("dense", dense), ("slim", slim)):
            say(f"exporting the {label} model to ONNX")
            export_onnx(model, example_inputs, paths[label], progress=progress)
        say(f"timing dense and slim interleaved at batch {', '.join(map(str, batches))}")
        stats = profile_many(paths, batches, threads=threads, provider=provider,
                             timing=timing, progress=progress)  # fmt: skip
        profiles = [
            ModelProfile(name, *params_and_macs(model, example_inputs), tuple(stats[label]))
            for model, label, name in ((dense, "dense", names[0]), (slim, "slim", names[1]))
        ]
        layers = ()
        if per_layer:
            say("per-layer profile (onnxruntime node profiler)")
            layers = tuple(layer_rows(paths["dense"], paths["slim"], batches[0], threads, providers, folder))
        points = []
        if sweep:
            first = batches[0]
            points.append(SweepPoint(0.0, profiles[0].params, profiles[0].macs, first,
                                     profiles[0].latency[0].median_ms))  # fmt: skip
            for index, (ratio, model) in enumerate(sweep):
                say(f"sweep: ratio {ratio:g}")
                path = folder / f"sweep_{index}.onnx"
                export_onnx(model, example_inputs, path, progress=progress)
                (stat,) = profile_many({f"ratio {ratio:g}": path}, (first,), threads=threads,
                                       provider=provider, timing=timing,
                                       progress=progress)[f"ratio {ratio:g}"]  # fmt: skip
                params, macs = params_and_macs(model, example_inputs)
                points.append(SweepPoint(ratio, params, macs, first, stat.median_ms))
    return ProfileReport(
        dense=profiles[0],
        slim=profiles[1],
        environment=Environment.current(providers[0], threads, batches),
        sweep=tuple(points),
        layers=layers,
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
    max_seconds: float = 30.0,
    rel_ci: float = 0.03,
    progress: Progress | None = None,
) -> ModelProfile:
    """Export one model to ``onnx_path``, count params/MACs, profile it: a ``ModelProfile``."""
    export_onnx(model, example_inputs, onnx_path, progress=progress)
    stats = profile_many({name: onnx_path}, batch_sizes, threads=threads, provider=provider,
                         timing=Timing(warmup, min_runs, min_seconds, max_seconds, rel_ci),
                         progress=progress)[name]  # fmt: skip
    params, macs = params_and_macs(model, example_inputs)
    return ModelProfile(name=name, params=params, macs=macs, latency=tuple(stats))


def params_and_macs(model, example_inputs) -> tuple[int, int | None]:
    from fxprune.cost import count_macs, count_params

    inputs = (example_inputs,) if hasattr(example_inputs, "shape") else tuple(example_inputs)
    return int(count_params(model)), int(count_macs(model, inputs))


__all__ = ["measure_model", "params_and_macs", "profile_models"]
