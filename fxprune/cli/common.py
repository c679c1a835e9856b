"""What every command shares: the ONE error wrapper and the option definitions.

A user mistake is an ``FxPruneError``; ``cli_errors`` turns it into one red line on stderr
and its ``exit_code`` (2, or 3 for "nothing to prune"); Ctrl-C at any moment becomes one
line and exit code 130. Options used by several commands are defined once here, as
``Annotated`` types, so their names and help read the same everywhere. Choices that come
from a registry (scorers, datasets, providers, samplers, pruners) are written ``{scorers}``
in a help text and filled in by ``RegistryCommand`` only when that command's help is shown.
The registries of scorers, heads modes and providers live in modules that import torch, so
a command's help reads their torch-free copies (``HELP_CHOICES``, checked equal to the
registries by a test) unless the registry is already loaded; no ``--help`` imports torch.

This module imports only typer at the top: every command module imports it, and
``fxprune --help`` must stay fast.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from fxprune.cli.interrupts import interrupts_raised
from fxprune.errors import ConfigError, FxPruneError

INTERRUPTED = "interrupted; nothing was written"


# --- errors ------------------------------------------------------------------------------


def error_line(message: str) -> None:
    """One red ``error: ...`` line on stderr, never wrapped, never read as rich markup."""
    from rich.console import Console
    from rich.text import Text

    text = Text.assemble(("error: ", "bold red"), " ".join(str(message).split()))
    Console(stderr=True, highlight=False, soft_wrap=True).print(text)


@contextlib.contextmanager
def cli_errors(interrupted: str = INTERRUPTED) -> Iterator[None]:
    """The one error wrapper: ``FxPruneError`` -> one line + its exit code; Ctrl-C -> one
    line + 130. ``interrupted`` says what an interruption leaves behind."""
    with interrupts_raised():
        try:
            yield
        except FxPruneError as exc:
            error_line(str(exc))
            raise typer.Exit(getattr(exc, "exit_code", 2)) from None
        except KeyboardInterrupt:
            error_line(interrupted)
            raise typer.Exit(130) from None


def command(app: typer.Typer, name: str, interrupted: str = INTERRUPTED) -> Callable:
    """Register ``fn`` as command ``name`` of ``app``, inside ``cli_errors``, with registry
    choices in its help; returns ``fn`` unchanged (tests may call it directly)."""

    def register(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with cli_errors(interrupted):
                return fn(*args, **kwargs)

        app.command(name, cls=RegistryCommand)(wrapped)
        return fn

    return register


# --- choices from registries -------------------------------------------------------------


def scorer_names() -> list[str]:
    """Scorers the command line can run: every registered one that needs no data batch."""
    from fxprune.scoring import SCORERS, get_scorer

    return [name for name in sorted(SCORERS) if not getattr(get_scorer(name), "needs_data", False)]


def dataset_names() -> list[str]:
    from hpo.registry import DATASETS

    return list(DATASETS)


def provider_names() -> list[str]:
    from fxprune.deploy.runtime import PROVIDERS

    return list(PROVIDERS)  # "auto" is one of them


def sampler_names() -> list[str]:
    from hpo.registry import SAMPLERS

    return list(SAMPLERS)


def pruner_names() -> list[str]:
    from hpo.registry import PRUNERS

    return list(PRUNERS)


def heads_modes() -> list[str]:
    from fxprune.ops.attention import HEADS_MODES

    return list(HEADS_MODES)


REGISTRIES: dict[str, Callable[[], list[str]]] = {
    "scorers": scorer_names,
    "heads": heads_modes,
    "datasets": dataset_names,
    "providers": provider_names,
    "samplers": sampler_names,
    "pruners": pruner_names,
}


# Copies of the registries that live in torch-importing modules: (module, names). A
# command's --help lists these, so it answers without importing torch (~1.7 s of CPU);
# tests/cli/test_cli_common.py checks each equals its registry.
HELP_CHOICES: dict[str, tuple[str, tuple[str, ...]]] = {
    "scorers": ("fxprune.scoring", ("l1", "random", "synflow", "synflow_flops")),
    "heads": ("fxprune.ops.attention", ("dims", "whole", "both")),
    "providers": ("fxprune.deploy.runtime", ("auto", "cpu", "cuda", "tensorrt")),
}


def help_choices(key: str) -> list[str]:
    """The choices a help text lists: the registry itself once its module is loaded (a
    running command, a test), else its torch-free copy in ``HELP_CHOICES``."""
    module, names = HELP_CHOICES.get(key, (None, ()))
    if module is not None and module not in sys.modules:
        return list(names)
    return REGISTRIES[key]()


def check_choice(option: str, value: str, registry: str) -> str:
    """``value`` if the registry holds it, else one ``ConfigError`` line listing the choices."""
    names = REGISTRIES[registry]()
    if value not in names:
        noun = "heads mode" if registry == "heads" else registry.removesuffix("s")
        raise ConfigError(f"unknown {noun} {value!r} ({option}); choose one of {', '.join(names)}")
    return value


class RegistryCommand(TyperCommand):
    """Fills ``{scorers}``-style placeholders in option help from the registries, lazily:
    only when this command's help is shown (parsing never imports a registry)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        for param in self.params:
            text = getattr(param, "help", None)
            if text and "{" in text:
                param.help = fill_choices(text)
        super().format_help(ctx, formatter)


def fill_choices(text: str) -> str:
    """``"Scorer: {scorers}."`` -> ``"Scorer: l1, random, synflow, synflow_flops."``"""
    for key in REGISTRIES:
        token = "{" + key + "}"
        if token in text:
            try:
                text = text.replace(token, ", ".join(help_choices(key)))
            except Exception:  # noqa: BLE001 - an optional dependency missing: help still renders
                text = text.replace(token, f"see the {key} registry")
    return text


# --- shared options ----------------------------------------------------------------------

MODEL_HELP = (
    "path/to/model.py (defining build_model() or `model`, optionally example_inputs()), "
    "path/to/model.py:name, torchvision:NAME or fxprune:NAME (see `fxprune models`)."
)
ModelArg = Annotated[str, typer.Argument(help=MODEL_HELP, show_default=False, metavar="MODEL")]
SlimOrModelArg = Annotated[str, typer.Argument(
    help=MODEL_HELP + " Also a slim folder written by `fxprune prune --out`.",
    show_default=False, metavar="MODEL_OR_DIR")]
InputShapeOpt = Annotated[list[str] | None, typer.Option(
    "--input-shape",
    help="Example input, one per model input, batch dim first: SHAPE[:DTYPE[:LOW-HIGH]], "
         "e.g. 1,3,32,32 or 1,40:int64:0-1000 (integers drawn from range(LOW, HIGH)).",
    show_default=False)]
LeafOpt = Annotated[list[str] | None, typer.Option(
    "--leaf", help="Module path or class name kept opaque by tracing (repeatable).",
    show_default=False)]
OutDirOpt = Annotated[Path, typer.Option(
    "--out", "-o", help="Output folder (created complete, or not at all).", show_default=False)]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Replace an existing output folder, if fxprune wrote it.")]
ThreadsOpt = Annotated[int | None, typer.Option(
    "--threads", help="CPU threads for torch (and onnxruntime); default: all cores.",
    show_default=False)]


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` to torch (before any work)."""
    if threads is None:
        return
    if threads < 1:
        raise ConfigError(f"--threads {threads}: expected a positive number")
    import torch

    torch.set_num_threads(threads)


def load(model: str, input_shape: list[str] | None, num_classes: int | None = None) -> Any:
    """``(network, example_inputs, specs)`` for MODEL and the ``--input-shape`` values."""
    from fxprune.loading import load_model, parse_input_specs

    network, inputs = load_model(model, input_shape or None, num_classes)
    try:
        specs = parse_input_specs(input_shape or None)
    except ConfigError:
        specs = None  # load_model already explained it
    return network, inputs, specs


def resolve_leaves(network: Any, leaf: list[str] | None) -> list[Any]:
    """``--leaf`` names: a module path in the model, or a class name anywhere in it."""
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


def protected_paths(model: str) -> list[Path]:
    """Files an output folder must never contain (the model file being pruned)."""
    from fxprune.loading import model_file

    path = model_file(model)
    return [path] if path is not None else []


def output_folder(out: Path, force: bool, model: str, kind: str) -> Any:
    """``--out`` checked before any work (``io.OutputFolder``), its marker saying ``kind``
    and this version; says what it did about leftovers of killed runs."""
    from fxprune import __version__, io

    folder = io.OutputFolder.prepare(out, force=force, protect=protected_paths(model),
                                     kind=kind, fxprune_version=__version__)
    for line in folder.cleaned:
        progress_line(line)
    return folder


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def progress_line(message: str) -> None:
    """A progress line on stderr (export, timing and latency targets take tens of seconds);
    plain text, so it also reads when stderr is a file."""
    from rich.text import Text

    stderr_console().print(Text(f"... {message}", style="dim"), soft_wrap=True)


@contextlib.contextmanager
def stage(message: str) -> Iterator[Callable[[str], None]]:
    """A spinner while a stage runs when stderr is a terminal; when it is a file or a pipe
    (nohup, Slurm, CI, ``| tee``) a plain progress line instead, so a log shows where a long
    run is. Yields the function that announces the next step."""
    console = stderr_console()
    if console.is_terminal:
        with console.status(message) as status:
            yield status.update
    else:
        progress_line(message)
        yield progress_line


__all__ = [
    "HELP_CHOICES",
    "REGISTRIES",
    "ForceOpt",
    "InputShapeOpt",
    "LeafOpt",
    "ModelArg",
    "OutDirOpt",
    "RegistryCommand",
    "SlimOrModelArg",
    "ThreadsOpt",
    "check_choice",
    "cli_errors",
    "command",
    "error_line",
    "help_choices",
    "load",
    "output_folder",
    "progress_line",
    "protected_paths",
    "resolve_leaves",
    "set_threads",
    "stage",
]
