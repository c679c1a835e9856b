"""``fxprune export`` and ``fxprune profile``: the command-line face of ``fxprune.deploy``.

They only assemble results (``ExportReport``, ``ProfileReport``) and print them; the work
is ``export_onnx`` and ``profile_models``. A slim folder is read with ``fxprune.io``,
so its saved input dtypes, integer ranges and names are used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fxprune import defaults
from fxprune.cli.common import (
    InputShapeOpt,
    ModelArg,
    SlimOrModelArg,
    ThreadsOpt,
    check_choice,
    command,
    progress_line,
    set_threads,
)
from fxprune.errors import ConfigError

DEFAULT_SWEEP_PLOT = Path("fxprune-sweep.png")


def register(app: typer.Typer) -> None:
    command(app, "export")(export_command)
    command(app, "profile")(profile_command)


def export_command(
    model: SlimOrModelArg,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="ONNX file to write.", show_default=False)],
    input_shape: InputShapeOpt = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset version.")] = defaults.OPSET,
    exporter: Annotated[str, typer.Option(
        "--exporter", help="auto, torchscript or dynamo (auto: see fxprune.deploy.export).")
    ] = "auto",
    dynamic: Annotated[str, typer.Option(
        "--dynamic", help="Dynamic axes: batch (dim 0), all (every non-channel dim the model "
                          "accepts at another size, proven in onnxruntime) or none.")] = "batch",
    threads: ThreadsOpt = None,
) -> None:
    """Export MODEL (or a slim folder) to ONNX and prove onnxruntime matches PyTorch.

    A checked file (onnx.checker), named inputs (forward signature) and outputs (dict
    keys), and a parity check on the example batch and on other sizes of the dynamic axes.
    """
    from rich.console import Console

    from fxprune import io
    from fxprune.deploy.export import DYNAMIC, check_opset, export_onnx

    set_threads(threads)
    if dynamic not in DYNAMIC:
        raise ConfigError(f"unknown --dynamic {dynamic!r}; choose one of {', '.join(DYNAMIC)}")
    check_opset(opset, exporter)
    target = io.check_output_file(out)
    network, example_inputs, names = load_model_or_slim(model, input_shape)
    report = export_onnx(network, example_inputs, target, opset=opset, exporter=exporter,
                         dynamic=dynamic, input_names=names, progress=progress_line)
    Console().print(report)


def profile_command(
    model: ModelArg,
    slim: Annotated[Path | None, typer.Option(
        "--slim", help="Slim folder written by `fxprune prune`.", show_default=False)] = None,
    ratio: Annotated[float | None, typer.Option(
        "--ratio", help="Prune MODEL at this ratio instead.", show_default=False)] = None,
    min_ratio: Annotated[float, typer.Option(
        "--min-ratio", help="Keep at least this fraction of every group.")] = defaults.MIN_RATIO,
    batch: Annotated[str, typer.Option(
        "--batch", help="Batch sizes, comma separated.")] = defaults.PROFILE_BATCH_SIZES,
    threads: ThreadsOpt = None,
    provider: Annotated[str, typer.Option("--provider", help="{providers}.")] = "auto",
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Write the report as JSON here.", show_default=False)] = None,
    sweep: Annotated[str | None, typer.Option(
        "--sweep", help="Also profile these ratios, e.g. 0.25,0.5,0.75 (first batch size).",
        show_default=False)] = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help=f"PNG for --sweep [default: {DEFAULT_SWEEP_PLOT}].",
        show_default=False)] = None,
    input_shape: InputShapeOpt = None,
    scorer: Annotated[str, typer.Option(
        "--scorer", help="Scorer for --ratio/--sweep: {scorers}.")] = defaults.SCORER,
    min_seconds: Annotated[float, typer.Option(
        "--min-seconds", help="Time each model and batch size at least this long.")
    ] = defaults.PROFILE_MIN_SECONDS,
    max_seconds: Annotated[float, typer.Option(
        "--max-seconds", help="Stop timing a batch size after this long, converged or not.")
    ] = 30.0,
    per_layer: Annotated[bool, typer.Option(
        "--per-layer", help="Also list the slowest layers (onnxruntime node profiler).")
    ] = False,
    width_plot: Annotated[Path | None, typer.Option(
        "--width-plot", help="PNG: measured latency vs kept width of MODEL's costliest layers "
                             "(builds or reuses the cached latency table, 1 thread).",
        show_default=False)] = None,
) -> None:
    """Profile dense MODEL against its slim version in onnxruntime.

    Params, MACs, latency (min/median/max and the median's 95% interval, timed
    interleaved until it is within 3%), throughput, speed-up and efficiency (speed-up
    divided by the MACs reduction) per batch size; a difference inside the noise is
    reported as no measurable difference. --width-plot alone only draws MODEL's
    latency-vs-width plot.
    """
    from rich.console import Console

    from fxprune import io
    from fxprune.deploy.dense_vs_slim import profile_models
    from fxprune.deploy.report import sweep_plot
    from fxprune.loading import InputSpec, load_model

    set_threads(threads)
    batch_sizes = parse_batch_sizes(batch)
    sweep_ratios = parse_ratios(sweep) if sweep else ()
    if not 0 <= min_seconds < float("inf"):  # also NaN
        raise ConfigError(f"--min-seconds {min_seconds:g}: expected seconds >= 0")
    if not 0 < max_seconds < float("inf"):
        raise ConfigError(f"--max-seconds {max_seconds:g}: expected seconds > 0")
    if slim is not None and ratio is not None:
        raise ConfigError("give either --slim DIR or --ratio R, not both")
    compare = slim is not None or ratio is not None or bool(sweep_ratios)
    if not compare and width_plot is None:
        raise ConfigError("nothing to compare: give --slim DIR, --ratio R or --sweep R1,R2,... "
                          "(or --width-plot PNG)")
    if plot is not None and not sweep_ratios:
        raise ConfigError("--plot needs --sweep R1,R2,...")
    check_choice("--provider", provider, "providers")
    if ratio is not None or sweep_ratios:
        check_choice("--scorer", scorer, "scorers")
    json_path = io.check_output_file(json_out, "--json") if json_out is not None else None
    plot_path = io.check_output_file(plot or DEFAULT_SWEEP_PLOT, "--plot") if sweep_ratios else None
    width_path = io.check_output_file(width_plot, "--width-plot") if width_plot is not None else None

    slim_model, slim_name, shapes = None, None, input_shape or None
    if slim is not None:
        slim_model, _, meta = io.read_slim(slim, inputs_given=True)  # MODEL has inputs too
        slim_name = f"slim: {slim}"
        if shapes is None and meta["inputs"]:  # the inputs it was saved with (dtypes, ranges)
            shapes = [InputSpec.from_dict(item) for item in meta["inputs"]]
    dense, example_inputs = load_model(model, shapes)
    console = Console()
    if not compare:
        write_width_plot(console, dense, example_inputs, width_path, provider)
        return

    def pruned(at_ratio: float) -> Any:
        import fxprune

        progress_line(f"pruning at ratio {at_ratio:g} with {scorer}")
        return fxprune.prune(dense, example_inputs, ratio=at_ratio, min_ratio=min_ratio,
                             scorer=scorer).model

    if slim_model is None:
        # --ratio, or else the strongest sweep ratio stands in as "the" slim model
        chosen = ratio if ratio is not None else max(sweep_ratios)
        slim_model, slim_name = pruned(chosen), f"slim: ratio {chosen:g}"
    sweep_models = [(at_ratio, pruned(at_ratio)) for at_ratio in sweep_ratios]

    report = profile_models(
        dense, slim_model, example_inputs, batch_sizes, threads=threads, provider=provider,
        names=(f"dense: {model}", slim_name), min_seconds=min_seconds, max_seconds=max_seconds,
        per_layer=per_layer, sweep=sweep_models, progress=progress_line,
    )
    console.print(report)
    if json_path is not None:
        io.atomic_write_text(json_path, report.to_json())
        console.print(f"report written to {json_path}", soft_wrap=True)
    if plot_path is not None:
        sweep_plot(report.sweep, plot_path)
        console.print(f"sweep plot written to {plot_path}", soft_wrap=True)
    if width_path is not None:
        write_width_plot(console, dense, example_inputs, width_path, provider)


def write_width_plot(console: Any, dense: Any, example_inputs: tuple, png: Path, provider: str) -> None:
    """Latency vs kept width of ``dense``'s costliest layers (cached latency table, 1 thread)."""
    from fxprune.deploy.latency_table import model_width_plot

    written = model_width_plot(dense, example_inputs, png, provider=provider, threads=1,
                               progress=progress_line)
    console.print(f"latency-vs-width plot written to {written}", soft_wrap=True)


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


def load_model_or_slim(spec: str, input_shape: list[str] | None) -> tuple[Any, tuple, list | None]:
    """``(model, example_inputs, input_names)`` for a MODEL spec or a slim folder (its saved
    inputs unless ``--input-shape`` replaces them)."""
    from fxprune import io
    from fxprune.loading import load_model, make_inputs, parse_input_specs

    if Path(spec).is_dir():
        network, inputs, meta = io.read_slim(spec, inputs_given=bool(input_shape))
        names = [item.get("name") for item in meta["inputs"]]
        if input_shape:
            inputs = make_inputs(parse_input_specs(input_shape) or [])
        if len(names) != len(inputs) or not all(names):
            names = None
        return network, inputs, names
    network, inputs = load_model(spec, input_shape or None)
    return network, inputs, None


__all__ = [
    "export_command",
    "load_model_or_slim",
    "parse_batch_sizes",
    "parse_ratios",
    "profile_command",
    "register",
    "write_width_plot",
]
