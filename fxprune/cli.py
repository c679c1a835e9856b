"""The ``fxprune`` command line (typer + rich).

Commands only assemble results and print them. Every user mistake surfaces as an
``FxPruneError`` and becomes one red line on stderr with exit code 2 (130 when
interrupted), never a traceback. Output folders are written to a temporary sibling and
renamed at the end, so an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import ConfigError, FxPruneError

app = typer.Typer(
    name="fxprune",
    help="Structured pruning by torch.fx graph surgery: inspect, prune, export, profile, HPO.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

MODEL_HELP = (
    "MODEL: path/to/model.py (defines build_model() or `model`), path/to/model.py:name, "
    "torchvision:NAME or fxprune:NAME (see `fxprune models`)."
)


def _err(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {message}")


def friendly(fn):
    """Turn FxPruneError / Ctrl-C into one line and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FxPruneError as exc:
            _err(str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            _err("interrupted; nothing was written")
            raise typer.Exit(130) from None

    return wrapper


def _command(name: str | None = None):
    def deco(fn):
        app.command(name)(friendly(fn))
        return fn

    return deco


def _load(model: str, input_shape: str | None, num_classes: int | None = None):
    from .loading import load_model, parse_shape

    shape = parse_shape(input_shape) if input_shape else None
    return load_model(model, input_shape=shape, num_classes=num_classes)


def _resolve_leaves(network, leaf: list[str] | None) -> list[Any]:
    """``--leaf`` names: a module qualname in the model, or a class name anywhere in it."""
    names = dict(network.named_modules())
    out: list[Any] = []
    for item in leaf or []:
        if item in names:
            out.append(item)
            continue
        types = {type(m) for m in names.values() if type(m).__name__ == item}
        if not types:
            raise ConfigError(f"--leaf {item}: no module path or class of that name in the model")
        out.extend(types)
    return out


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise ConfigError(f"output folder {out} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder")


def _commit_dir(tmp: Path, out: Path) -> None:
    """Rename the finished temp folder into place (replacing an old one under --force)."""
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        out.rename(trash / out.name)
        tmp.rename(out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(out)


@_command("models")
def models_command(
    pattern: Annotated[str, typer.Argument(help="fnmatch filter, e.g. 'resnet*'.")] = "",
) -> None:
    """List the built-in models (fxprune:NAME)."""
    from rich.console import Console

    from .models import list_models

    for name in list_models(pattern):
        Console().print(f"fxprune:{name}")


@_command("inspect")
def inspect_command(
    model: Annotated[str, typer.Argument(help=MODEL_HELP, show_default=False)],
    input_shape: Annotated[str | None, typer.Option(help="Example input shape, e.g. 1,3,32,32.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON.")] = None,
    leaf: Annotated[list[str] | None, typer.Option(help="Module path or class to keep opaque (repeatable).")] = None,
    width: Annotated[int, typer.Option(help="Max members shown per group.")] = 4,
) -> None:
    """Show the channel groups of MODEL and what froze them.

    One row per group: member layers, channels, FLOPs share, prunable or frozen (and
    why); then parameter and MAC totals and the ops no handler knew.
    """
    from rich.console import Console

    from .inspection import inspect_model

    network, inputs = _load(model, input_shape)
    with Console(stderr=True).status("tracing and building the channel graph..."):
        report = inspect_model(network, inputs, _resolve_leaves(network, leaf))
    report.max_members = width
    Console().print(report)
    if json_out:
        from .plan import atomic_write_text

        atomic_write_text(json_out, json.dumps(report.to_dict(), indent=1))


@_command("prune")
def prune_command(
    model: Annotated[str, typer.Argument(help=MODEL_HELP, show_default=False)],
    ratio: Annotated[float, typer.Option(help="Fraction of prunable channels to remove, in [0, 1).")] = 0.85,
    min_ratio: Annotated[float, typer.Option(help="Every layer keeps at least this fraction, in [0, 1].")] = 0.15,
    scorer: Annotated[str, typer.Option(help="synflow, synflow_flops, l1, random (snip needs data: use the API).")] = "synflow",
    target: Annotated[str | None, typer.Option(help="Budget instead of a channel ratio, e.g. flops=0.3.")] = None,
    round_to: Annotated[int | None, typer.Option(help="Keep channel counts multiples of this.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for slim.pt, plan.json, summary.json.")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    input_shape: Annotated[str | None, typer.Option(help="Example input shape, e.g. 1,3,32,32.")] = None,
    leaf: Annotated[list[str] | None, typer.Option(help="Module path or class to keep opaque (repeatable).")] = None,
    verify: Annotated[bool, typer.Option(help="Check slim == masked dense on the example input.")] = True,
) -> None:
    """Score, prune and slim MODEL into a physically smaller model.

    With --out DIR it writes slim.pt (load it with fxprune.load_slim(DIR)), plan.json
    and summary.json; the folder appears only when everything is written.
    """
    from rich.console import Console

    from . import api
    from .report import widths_table
    from .verify import verify_equivalence

    if out is not None:
        _check_out(out, force)
    console = Console()
    network, inputs = _load(model, input_shape)
    with Console(stderr=True).status("tracing and building the channel graph...") as status:
        graph = api.analyze(network, inputs, _resolve_leaves(network, leaf))
        status.update(f"scoring {graph.num_classes:,} channels with {scorer} and slimming...")
        result = api.prune(network, inputs, ratio, min_ratio, scorer, round_to=round_to,
                           target=target, graph=graph)
        check = None
        if verify:
            status.update("verifying slim == masked dense...")
            check = verify_equivalence(result.graph, result.keep, result.model, inputs)
    console.print(result)
    console.print(widths_table(network, result))
    if check is not None:
        console.print(f"equivalence: {'[green]ok[/]' if check.passed else '[red]FAILED[/]'} - {check}")
        if not check.passed:
            raise ConfigError(f"slim model does not match the masked dense model: {check}")
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        api.save_slim(result.model, tmp, inputs, {"model": model, "settings": result.plan.settings})
        result.plan.save(tmp / "plan.json")
        summary = {**result.summary(), "model": model, "settings": result.plan.settings,
                   "equivalence": None if check is None else check.detail}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1))
        _commit_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    console.print(f"wrote {out}/ (slim.pt, plan.json, summary.json); load with "
                  f"fxprune.load_slim('{out}')")


def _register_external() -> None:
    from ._cli_export import export_command, profile_command

    app.command("export")(friendly(export_command))
    app.command("profile")(friendly(profile_command))
    from ._cli_train_prune import train_prune_command

    app.command("train-prune")(friendly(train_prune_command))
    from hpo.cli import hpo_app

    app.add_typer(hpo_app, name="hpo")


_register_external()


def main() -> None:
    try:
        app()
    except FxPruneError as exc:  # raised outside a command (e.g. option parsing callbacks)
        _err(str(exc))
        sys.exit(2)


if __name__ == "__main__":
    main()
