"""``fxprune models``, ``fxprune inspect`` and ``fxprune prune``.

The commands assemble results (``InspectReport``, ``PruneResult``) and print them. Every
check that can fail (options, the output folder, the model) runs before the slow part;
the output folder appears only once complete (``fxprune.io.OutputFolder``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from fxprune import defaults
from fxprune.cli.common import (
    ForceOpt,
    InputShapeOpt,
    LeafOpt,
    ModelArg,
    ThreadsOpt,
    check_choice,
    command,
    load,
    output_folder,
    progress_line,
    resolve_leaves,
    set_threads,
    stage,
)
from fxprune.errors import ModelLoadError, NothingToPruneError


def register(app: typer.Typer) -> None:
    command(app, "models")(models_command)
    command(app, "inspect")(inspect_command)
    command(app, "prune")(prune_command)


def models_command(
    pattern: Annotated[str, typer.Argument(help="fnmatch filter, e.g. 'resnet*'.")] = "",
) -> None:
    """List the built-in models (fxprune:NAME)."""
    from rich.console import Console

    from fxprune.models import list_models

    for name in list_models(pattern):
        Console().print(f"fxprune:{name}")


def inspect_command(
    model: ModelArg,
    input_shape: InputShapeOpt = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the report as JSON.", show_default=False)] = None,
    leaf: LeafOpt = None,
    width: Annotated[int, typer.Option(help="Max members shown per group.", min=1)] = 4,
    threads: ThreadsOpt = None,
) -> None:
    """Show the channel groups of MODEL and what froze them.

    One row per group: member layers, channels, FLOPs share, prunable or frozen (and
    why); then parameter and MAC totals and the ops no handler knew.
    """
    from rich.console import Console

    from fxprune import io
    from fxprune.inspection import inspect_model

    set_threads(threads)
    if json_out is not None:
        json_out = io.check_output_file(json_out, "--json")
    network, inputs, _ = load(model, input_shape)
    with stage("tracing and building the channel graph..."):
        report = inspect_model(network, inputs, resolve_leaves(network, leaf))
    report.max_members = width
    Console().print(report)
    if json_out is not None:
        io.atomic_write_json(json_out, report.to_dict())


def prune_command(
    model: ModelArg,
    ratio: Annotated[float, typer.Option(
        help="Fraction of all prunable channels to remove (global ranking), in [0, 1).")
    ] = defaults.RATIO,
    min_ratio: Annotated[float, typer.Option(
        help="Every channel group keeps at least this fraction, in [0, 1].")] = defaults.MIN_RATIO,
    scorer: Annotated[str, typer.Option(
        help="Channel scorer: {scorers}. (Data-driven scorers such as snip: use the API.)")
    ] = defaults.SCORER,
    target: Annotated[str | None, typer.Option(
        help="A budget instead of --ratio: flops=0.3 keeps 30% of the MACs, latency=0.3 aims at "
         "30% of the dense model's latency measured here (onnxruntime, CPU).",
        show_default=False)] = None,
    round_to: Annotated[int | None, typer.Option(
        help="Keep channel counts multiples of this.", show_default=False)] = None,
    objective: Annotated[str, typer.Option(
        help="With --target latency=F, what the budget keeps most of: score (the scorer's "
             "total) or capacity (MACs, each channel weighted by its score within its layer: "
             "more MACs at the same latency).")] = "score",
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Folder for slim.pt, meta.json, plan.json, summary.json.",
        show_default=False)] = None,
    force: ForceOpt = False,
    input_shape: InputShapeOpt = None,
    leaf: LeafOpt = None,
    verify: Annotated[bool, typer.Option(
        help="Check slim == masked dense on the example input.")] = True,
    heads: Annotated[str, typer.Option(
        help="Attention heads ({heads}): dims = per head dim shared by all heads, whole = whole "
             "heads, both = whole heads then head dims.")
    ] = "dims",
    uniform: Annotated[bool, typer.Option(
        "--uniform", help="Prune --ratio of every group, as Torch-Pruning does, instead of "
                          "one global ranking.")] = False,
    threads: ThreadsOpt = None,
) -> None:
    """Score, prune and slim MODEL into a physically smaller model.

    With --out DIR it writes slim.pt, meta.json, plan.json and summary.json.

    The folder appears only when everything is written; load it with fxprune.load_slim(DIR).

    Exit code 3 when the settings or the model leave nothing to prune.
    """
    from rich.console import Console

    from fxprune import io
    from fxprune.api import PruneConfig, prune
    from fxprune.blockers import kept_whole
    from fxprune.inspection import widths_table
    from fxprune.verify import numeric_share, verify_equivalence

    # every check that can fail runs before the slow part
    set_threads(threads)
    config = PruneConfig(ratio, min_ratio, scorer, round_to, target, heads, uniform)  # ranges
    check_choice("--scorer", scorer, "scorers")
    check_choice("--heads", heads, "heads")
    _check_something_to_prune(ratio, min_ratio, target)
    latency = _latency_target(target, objective)
    folder = None
    if out is not None:
        folder = output_folder(out, force, model, "prune")
    network, inputs, specs = load(model, input_shape)
    if any(p.is_meta for p in network.parameters()):  # analysable, but nothing to score or run
        raise ModelLoadError(f"{model}: the model is on the meta device (no weights): 'fxprune "
                             "inspect' analyses it; pruning needs real weights")
    leaves = resolve_leaves(network, leaf)

    console = Console()
    shown = result = None
    if latency is not None:  # measured on this machine: progress lines, no spinner
        from fxprune.deploy.latency_target import prune_to_latency

        shown = prune_to_latency(network, inputs, latency, scorer=scorer, min_ratio=min_ratio,
                                 round_to=round_to, threads=threads, leaf_modules=leaves,
                                 progress=progress_line)
        result = shown.result
    with stage(f"tracing, scoring with {scorer} and slimming...") as announce:
        if result is None:
            with warnings.catch_warnings():  # the API's warning is our exit-3 line below
                warnings.filterwarnings("ignore", message="fxprune: nothing to prune")
                result = prune(network, inputs, config.ratio, config.min_ratio, config.scorer,
                               round_to=round_to, target=target, leaf_modules=leaves,
                               heads=heads, uniform=uniform)
        if result.params_after >= result.params_before:
            raise NothingToPruneError(f"{model}: {_blockers(result).rstrip('.')}. Nothing was written.")
        checks = []
        if verify:
            announce("verifying slim == masked dense...")
            graph = getattr(result, "graph", None)  # None: parts of an untraceable root
            checks = ([verify_equivalence(graph, result.keep, result.model, inputs)]
                      if graph is not None else result.verify())
    console.print(shown or result)
    console.print(widths_table(network, result))
    for check in checks:
        console.print(f"equivalence: {'[green]ok[/]' if check.passed else '[red]FAILED[/]'} - {check}")
        if not check.passed:
            from fxprune.errors import ConfigError

            raise ConfigError(f"slim model does not match the masked dense model: {check}")
    kept = kept_whole(result)  # leaves and parts left unpruned, with why (fxprune.blockers)
    if kept:
        console.print(kept)
    if folder is None:
        return
    settings = result.plan.settings
    details = [check.detail for check in checks]  # one per part for a partly traced model
    with folder.staging() as tmp:
        io.write_slim(tmp, result.model, inputs, {"model": model, "settings": settings}, specs)
        io.atomic_write_text(tmp / io.PLAN_FILE, result.plan.to_json())
        io.atomic_write_json(tmp / io.SUMMARY_FILE, {
            **(shown or result).summary(), **kept.to_dict(), "model": model, "settings": settings,
            "equivalence": details[0] if len(details) == 1 else details or None,
            "verified_numerically": numeric_share(checks)})
    console.print(f"wrote {out}/ ({io.SLIM_FILE}, {io.META_FILE}, {io.PLAN_FILE}, "
                  f"{io.SUMMARY_FILE}); load with fxprune.load_slim('{out}')", soft_wrap=True)


def _latency_target(target: str | None, objective: str = "score"):
    """``--target latency=0.3`` (a fraction of the dense model's measured latency) as a
    ``LatencyTarget`` with ``--objective``, parsed before any work; ``None`` for other
    targets (where ``--objective`` other than score is a mistake)."""
    if target is None or not target.strip().lower().startswith("latency"):
        if objective != "score":
            from fxprune.errors import ConfigError

            raise ConfigError(f"--objective {objective} applies to --target latency=F only")
        return None
    from fxprune.deploy.latency_target import LatencyTarget

    return LatencyTarget.parse(target, objective=objective)


def _check_something_to_prune(ratio: float, min_ratio: float, target: str | None) -> None:
    """Settings that cannot remove a channel are an answer (exit 3), found before any work."""
    if min_ratio >= 1.0:
        raise NothingToPruneError(
            f"--min-ratio {min_ratio:g} keeps every channel of every layer: nothing to prune; "
            "lower it (the paper's setting is 0.15)")
    if target is None and ratio <= 0.0:
        raise NothingToPruneError(
            "--ratio 0 removes no channel: nothing to prune; give a ratio in (0, 1), "
            "e.g. --ratio 0.5")


def _blockers(result) -> str:
    """Why a prune removed nothing: what froze the channels (``fxprune.blockers``)."""
    from fxprune.blockers import describe_blockers

    graph = getattr(result, "graph", None)
    if graph is None:  # parts of an untraceable root: each part's own reasons
        return "; ".join(describe_blockers(part.result.graph) for part in result.parts) or (
            "nothing to prune: no part of the model traces")
    return describe_blockers(graph)


__all__ = ["inspect_command", "models_command", "prune_command", "register"]
