"""The ``fxprune export`` and ``fxprune profile`` commands.

Plain functions with ``Annotated`` typer options; the main app registers them::

    app.command("export")(export_command)
    app.command("profile")(profile_command)

They only assemble results (``ExportReport``, ``ProfileReport``) and print them; every
failure is an ``FxPruneError`` that the app's wrapper turns into one red line.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from fxprune.errors import ConfigError

MODEL_HELP = (
    "MODEL spec: file.py[:name], torchvision:NAME or fxprune:NAME "
    "(export also takes a slim directory written by `fxprune prune`)."
)
DEFAULT_SWEEP_PLOT = Path("fxprune-sweep.png")


def export_command(
    model: Annotated[str, typer.Argument(help=MODEL_HELP, show_default=False)],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="ONNX file to write.", show_default=False)
    ],
    input_shape: Annotated[
        str | None, typer.Option("--input-shape", help="Example input shape, e.g. 1,3,224,224.")
    ] = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset version.")] = 17,
    exporter: Annotated[
        str,
        typer.Option("--exporter", help="auto, torchscript or dynamo (auto: see fxprune.export)."),
    ] = "auto",
) -> None:
    """Export MODEL (or a slim folder) to ONNX and prove onnxruntime matches PyTorch.

    Opset 17 or newer, a dynamic batch axis, onnx.checker, and a parity check on the
    example batch and on another batch size.
    """
    from rich.console import Console

    from fxprune.deploy import export_onnx

    network, example_inputs = _load_any(model, input_shape)
    report = export_onnx(network, example_inputs, out, opset=opset, exporter=exporter)
    Console().print(report)


def profile_command(
    model: Annotated[str, typer.Argument(help=MODEL_HELP, show_default=False)],
    slim: Annotated[
        Path | None, typer.Option("--slim", help="Slim directory written by `fxprune prune`.")
    ] = None,
    ratio: Annotated[
        float | None, typer.Option("--ratio", help="Prune MODEL at this ratio instead.")
    ] = None,
    min_ratio: Annotated[
        float, typer.Option("--min-ratio", help="Keep at least this fraction of every group.")
    ] = 0.15,
    batch: Annotated[str, typer.Option("--batch", help="Batch sizes, comma separated.")] = "1,8,32",
    threads: Annotated[
        int | None, typer.Option("--threads", help="onnxruntime intra-op threads (default: ort's).")
    ] = None,
    provider: Annotated[
        str, typer.Option("--provider", help="auto, cpu, cuda or tensorrt.")
    ] = "auto",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the report as JSON here.")
    ] = None,
    sweep: Annotated[
        str | None,
        typer.Option(
            "--sweep", help="Also profile these ratios, e.g. 0.25,0.5,0.75 (first batch size)."
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help=f"PNG for --sweep [default: {DEFAULT_SWEEP_PLOT}]."),
    ] = None,
    input_shape: Annotated[
        str | None, typer.Option("--input-shape", help="Example input shape, e.g. 1,3,224,224.")
    ] = None,
    scorer: Annotated[
        str, typer.Option("--scorer", help="Scorer for --ratio/--sweep.")
    ] = "synflow",
    min_seconds: Annotated[
        float,
        typer.Option("--min-seconds", help="Time each model and batch size at least this long."),
    ] = 1.0,
) -> None:
    """Profile dense MODEL against its slim version in onnxruntime.

    Params, MACs, median/p90 latency, throughput, speed-up and efficiency (speed-up
    divided by the MACs reduction) per batch size.
    """
    from rich.console import Console

    import fxprune
    from fxprune.loading import load_model
    from fxprune.deploy import (
        Environment,
        ProfileReport,
        SweepPoint,
        measure_model,
        resolve_providers,
        sweep_plot,
    )

    batch_sizes = parse_batch_sizes(batch)
    sweep_ratios = parse_ratios(sweep) if sweep else ()
    if slim is not None and ratio is not None:
        raise ConfigError("give either --slim DIR or --ratio R, not both")
    if slim is None and ratio is None and not sweep_ratios:
        raise ConfigError("nothing to compare: give --slim DIR, --ratio R or --sweep R1,R2,...")
    if plot is not None and not sweep_ratios:
        raise ConfigError("--plot needs --sweep R1,R2,...")
    providers = resolve_providers(provider)  # fail before any slow work

    dense, example_inputs = load_model(model, input_shape)
    slim_model, slim_name = None, None
    if slim is not None:
        slim_model, slim_inputs = fxprune.load_slim(slim)
        if input_shape is None:  # the shapes the slim model was traced with
            example_inputs = slim_inputs
        slim_name = f"slim: {slim}"

    def pruned(at_ratio: float):
        return fxprune.prune(
            dense, example_inputs, ratio=at_ratio, min_ratio=min_ratio, scorer=scorer
        ).model

    if slim_model is None:
        # --ratio, or else the strongest sweep ratio stands in as "the" slim model
        chosen = ratio if ratio is not None else max(sweep_ratios)
        slim_model, slim_name = pruned(chosen), f"slim: ratio {chosen:g}"

    timing = {"threads": threads, "provider": provider, "min_seconds": min_seconds}
    console = Console()
    with tempfile.TemporaryDirectory(prefix="fxprune-profile-") as workdir:
        folder = Path(workdir)
        dense_profile = measure_model(
            dense,
            example_inputs,
            folder / "dense.onnx",
            batch_sizes,
            name=f"dense: {model}",
            **timing,
        )
        slim_profile = measure_model(
            slim_model, example_inputs, folder / "slim.onnx", batch_sizes, name=slim_name, **timing
        )
        points = []
        if sweep_ratios:
            first = batch_sizes[0]
            stat = dense_profile.at(first)
            points.append(
                SweepPoint(0.0, dense_profile.params, dense_profile.macs, first, stat.median_ms)
            )
            for index, at_ratio in enumerate(sweep_ratios):
                with console.status(f"sweep: ratio {at_ratio:g}"):
                    profile = measure_model(
                        pruned(at_ratio), example_inputs, folder / f"sweep_{index}.onnx", (first,),
                        name=f"ratio {at_ratio:g}", **timing,
                    )  # fmt: skip
                points.append(
                    SweepPoint(
                        at_ratio, profile.params, profile.macs, first, profile.latency[0].median_ms
                    )
                )

    report = ProfileReport(
        dense=dense_profile,
        slim=slim_profile,
        environment=Environment.current(providers[0], threads, batch_sizes),
        sweep=tuple(points),
    )
    console.print(report)
    if json_out is not None:
        console.print(f"report written to {report.save(json_out)}", soft_wrap=True)
    if sweep_ratios:
        plot_path = sweep_plot(report.sweep, plot or DEFAULT_SWEEP_PLOT)
        console.print(f"sweep plot written to {plot_path}", soft_wrap=True)


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> ``(1, 8, 32)``."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(size < 1 for size in sizes):
        raise ConfigError(f"bad --batch {text!r}: expected positive integers, e.g. 1,8,32")
    return sizes


def parse_ratios(text: str) -> tuple[float, ...]:
    """``"0.25,0.5"`` -> ``(0.25, 0.5)``; each ratio in (0, 1)."""
    try:
        ratios = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        ratios = ()
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise ConfigError(f"bad --sweep {text!r}: expected ratios in (0, 1), e.g. 0.25,0.5,0.75")
    return tuple(sorted(set(ratios)))


def _load_any(spec: str, input_shape: str | None):
    """A MODEL spec through ``load_model``, or a slim directory through ``load_slim``."""
    if Path(spec).is_dir():
        import torch

        import fxprune
        from fxprune.loading import parse_shape

        network, example_inputs = fxprune.load_slim(spec)
        if input_shape is not None:
            generator = torch.Generator().manual_seed(0)
            example_inputs = (torch.randn(parse_shape(input_shape), generator=generator),)
        return network, example_inputs
    from fxprune.loading import load_model

    return load_model(spec, input_shape)


__all__ = ["export_command", "parse_batch_sizes", "parse_ratios", "profile_command"]
