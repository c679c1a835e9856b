"""Every file fxprune writes goes into place here, and every file of its own is read back here.

Writing. A file is written to a temporary sibling and renamed over the target
(``os.replace``), so a reader sees the old file or the new one, never half of one. An
output folder is built as a temporary sibling and renamed in only when complete; an old
folder it replaces is renamed aside first and deleted last, so there is no moment without
an output. One permission policy: files ``0644``, folders ``0755`` (outputs are meant to be
shared; ``mkstemp``/``mkdtemp`` alone would give ``0600``/``0700``).

Safety of ``--force``. A folder is replaced only if fxprune wrote it: it holds fxprune's
marker ``.fxprune.json`` (kind, fxprune version, the files written) and nothing else than
the files the marker lists, all of them fxprune's own names (``OWN_FILES``). A folder with
the right file names but no marker (a user's, or one written before markers existed) is
never replaced: ``meta.json`` or ``summary.json`` are common names. Never the current
folder or one that contains it, never a folder holding the model file, never a symbolic
link. Everything about an output is checked by ``OutputFolder.prepare`` /
``check_output_file`` *before* any work (including a real write probe: ``/proc``,
read-only mounts and paths under a file fail there, not after an hour of computing).

Leftovers of a killed run. A folder is staged as ``.NAME.tmp-XXXX`` next to it (and an old
one it replaces is set aside as ``.NAME.old-XXXX``); each holds a marker naming its owner
(pid, host, start time). A SIGKILL leaves them behind; the next ``prepare`` of the same
output removes those whose owner is gone (same host, no such process) or that are older
than ``STALE_SECONDS`` (staging takes seconds), and only when they hold nothing but
fxprune's own files. A set-aside old output whose replacement never arrived is put back.

Reading. ``read_json``, ``read_meta``, ``read_slim`` fail with one line naming the file and
what is wrong (missing, empty, corrupt JSON, truncated archive, a class that cannot be
imported) as a ``PlanError``.

meta.json (written by ``write_slim``, format 2)::

    {"format": "fxprune-slim", "version": 2,
     "inputs": [{"name": "x", "shape": [1, 3, 32, 32], "dtype": "float32"},
                {"name": "ids", "shape": [1, 40], "dtype": "int64", "low": 0, "high": 1000}],
     "input_shapes": [[1, 3, 32, 32], [1, 40]],          # kept for version-1 readers
     "outputs": {"kind": "dict", "keys": ["logits", "aux"], "items": [...]},
     ...caller's extra keys (model, settings, ...)}

Integer inputs are drawn from ``range(low, high)``. Version-1 files (``input_shapes``
only) still load, as float inputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import OutputError, PlanError

FILE_MODE = 0o644
DIR_MODE = 0o755

SLIM_FILE = "slim.pt"
META_FILE = "meta.json"
PLAN_FILE = "plan.json"
SUMMARY_FILE = "summary.json"
HISTORY_FILE = "history.json"  # train-prune
TRAIN_PLOT_FILE = "train_prune.png"  # train-prune
# A folder holding only these names was written by fxprune and may be replaced by --force.
OWN_FILES = frozenset({SLIM_FILE, META_FILE, PLAN_FILE, SUMMARY_FILE, HISTORY_FILE, TRAIN_PLOT_FILE})

META_FORMAT = "fxprune-slim"
META_VERSION = 2

MARKER_FILE = ".fxprune.json"  # in every output folder: {"format", "version", "kind", "files", ...}
MARKER_FORMAT = "fxprune-output"
MARKER_VERSION = 1
STALE_SECONDS = 6 * 3600  # a staging folder older than this is a leftover, whoever made it


# --- files -------------------------------------------------------------------------------


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _os_reason(exc: OSError) -> str:
    return exc.strerror or _one_line(exc) or type(exc).__name__


def _existing_ancestor(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def check_writable(folder: Path, option: str = "output", output: Path | None = None) -> None:
    """Raise ``OutputError`` unless something can be created in ``folder`` (or, when it does
    not exist yet, in its nearest existing ancestor). Probes with a real temporary folder:
    permission bits lie for root, ``/proc`` and read-only mounts. ``output``: the path the
    user gave (named in the message), when ``folder`` is its parent."""
    folder = Path(os.path.abspath(folder))
    shown = output or folder
    ancestor = _existing_ancestor(folder)
    if not ancestor.is_dir():
        raise OutputError(f"{option} {shown}: {ancestor} is a file, so nothing can be created under it")
    try:
        probe = tempfile.mkdtemp(prefix=".fxprune-probe-", dir=ancestor)
    except OSError as exc:
        raise OutputError(f"{option} {shown}: cannot write in {ancestor} ({_os_reason(exc)})") from None
    os.rmdir(probe)


EXAMPLE_FILE_NAMES = {"--json": "report.json", "--plot": "sweep.png", "--width-plot": "widths.png"}


def check_output_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """Check before any work that ``path`` can be written as a file; returns it absolute."""
    target = Path(os.path.abspath(path))
    if target.is_dir():
        example = target / EXAMPLE_FILE_NAMES.get(option, "model.onnx")
        raise OutputError(f"{option} {target} is a folder; give a file name, e.g. {example}")
    check_writable(target.parent, option, target)
    return target


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int = FILE_MODE) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write (by any means: ``torch.save``, an ONNX
    exporter, ``savefig``); on success it gets ``mode`` and is renamed onto ``path``, on any
    failure it is removed. The temporary name keeps the suffix, so writers that look at it
    (matplotlib) still work."""
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"{target} is a folder, not a file")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(
            prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent
        )
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {_os_reason(exc)}") from None
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int | None = 1) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=indent) + "\n")


# --- output folders ----------------------------------------------------------------------


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of a folder fxprune made, or ``None`` (absent, unreadable, not ours)."""
    try:
        data = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MARKER_FORMAT else None


def _write_marker(folder: Path, **fields: Any) -> None:
    atomic_write_json(folder / MARKER_FILE, {"format": MARKER_FORMAT, "version": MARKER_VERSION,
                                             **fields})


def _owner() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "created": time.time()}


def _owner_gone(marker: dict[str, Any]) -> bool:
    """True when the process that made a staging folder cannot still be writing it."""
    try:
        if time.time() - float(marker["created"]) > STALE_SECONDS:
            return True
        if marker["host"] != socket.gethostname():
            return False  # another machine's process: only its age tells
        os.kill(int(marker["pid"]), 0)
    except ProcessLookupError:
        return True
    except (KeyError, TypeError, ValueError, OSError):  # alive but not ours, or a bad marker
        return False
    return False


def _is_own_file(name: str) -> bool:
    """One of fxprune's names, or a temporary ``atomic_path`` makes for one."""
    if name in OWN_FILES or name == MARKER_FILE:
        return True
    return name.startswith(".") and ".tmp" in name and any(
        name.startswith(f".{Path(own).stem}.") for own in (*OWN_FILES, MARKER_FILE))


def clean_leftovers(path: str | os.PathLike) -> list[str]:
    """Remove the staging folders of ``path`` left by killed runs (see the module text); put
    back an old output a killed run had set aside. Returns one description per leftover
    handled; never fails (a leftover that cannot be handled is left alone)."""
    path = Path(os.path.abspath(path))
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return []
    done = []
    for entry in siblings:
        kind = next((k for k in ("tmp", "old") if entry.name.startswith(f".{path.name}.{k}-")), None)
        if kind is None or entry.is_symlink() or not entry.is_dir():
            continue
        marker = _read_marker(entry)
        try:
            names = {item.name for item in entry.iterdir()}
            if marker is None:  # an older release's staging folder: no owner, judged by age
                if kind != "tmp" or time.time() - entry.stat().st_mtime <= STALE_SECONDS:
                    continue
                marker = {"state": "staging", "created": entry.stat().st_mtime}
            if not _owner_gone(marker):
                continue
            if kind == "tmp" and marker.get("state") in ("staging", "complete") and all(
                    map(_is_own_file, names)):
                shutil.rmtree(entry)
                done.append(f"removed {entry.name}, left by an interrupted run")
            elif kind == "old" and marker.get("state") == "aside" and names <= {MARKER_FILE, path.name}:
                kept = entry / path.name
                if kept.is_dir() and not path.exists() and _read_marker(kept) is not None:
                    os.replace(kept, path)  # its replacement never arrived: put it back
                    done.append(f"restored {path.name} from {entry.name}, left by an interrupted run")
                else:
                    done.append(f"removed {entry.name}, left by an interrupted run")
                shutil.rmtree(entry)
        except OSError:
            continue
    return done


@dataclass(frozen=True)
class OutputFolder:
    """An output folder checked before any work and filled atomically::

        folder = OutputFolder.prepare(out, force=force, protect=[model_file], kind="prune")
        ...                                              # the long computation
        with folder.staging() as tmp:                    # a temporary sibling, 0755
            write_slim(tmp, ...)                         # fill it
        # now renamed into place with its marker; a replaced old folder was deleted only after

    ``cleaned``: what ``prepare`` did about leftovers of killed runs (``clean_leftovers``).
    """

    path: Path
    option: str = "--out"
    kind: str = "output"
    fxprune_version: str = ""
    cleaned: tuple[str, ...] = ()

    @classmethod
    def prepare(
        cls,
        out: str | os.PathLike,
        *,
        force: bool = False,
        protect: Iterable[str | os.PathLike] = (),
        option: str = "--out",
        kind: str = "output",
        fxprune_version: str = "",
    ) -> OutputFolder:
        """``kind`` (``"prune"``, ``"train-prune"``) and ``fxprune_version`` go into the
        marker (this layer does not import the package that knows the version)."""
        path = Path(os.path.abspath(out))
        folder = cls(path, option, kind, fxprune_version, tuple(clean_leftovers(path)))
        folder.check_replaceable(force, protect)
        check_writable(path.parent, option, path)
        return folder

    def check_replaceable(self, force: bool, protect: Iterable[str | os.PathLike] = ()) -> None:
        """Refuse (one line) anything but a new folder, an empty one, or, with ``force``,
        one fxprune wrote (marker, nothing unlisted) that contains neither the current
        folder nor a protected file."""
        path, option = self.path, self.option
        if path.is_symlink():
            raise OutputError(f"{option} {path} is a symbolic link; give the real folder")
        if not path.exists():
            return
        if not path.is_dir():
            raise OutputError(f"{option} {path} is an existing file, not a folder; choose another path")
        if _is_within(Path.cwd().resolve(), path.resolve()):
            raise OutputError(f"{option} {path} is the current folder or contains it; choose a new folder")
        resolved = path.resolve()
        for item in protect:
            if _is_within(Path(os.path.abspath(item)).resolve(), resolved):
                raise OutputError(f"{option} {path} contains {item}, which fxprune never deletes; "
                                  "choose another folder")
        entries = sorted(entry.name for entry in path.iterdir())
        if not entries:
            return
        marker = _read_marker(path)
        if (marker is None or marker.get("state") != "complete") and all(
                name in OWN_FILES or name == MARKER_FILE for name in entries):
            what = "a damaged marker" if MARKER_FILE in entries else f"no marker {MARKER_FILE}"
            raise OutputError(
                f"{option} {path} has fxprune's file names but {what}, so it may be yours (or "
                "written by an fxprune without markers); it is never replaced: delete it "
                "yourself or choose a new folder")
        # without a marker (refused either way) the names that are not fxprune's are shown
        listed = set(marker.get("files", ())) if marker else OWN_FILES
        foreign = [name for name in entries if name != MARKER_FILE and (
            name not in listed or name not in OWN_FILES or (path / name).is_dir())]
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise OutputError(
                f"{option} {path} holds files fxprune did not write ({shown}); "
                "it is never replaced, choose a new folder"
            )
        if not force:
            raise OutputError(f"output folder {path} already exists; pass --force to replace it")

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A temporary sibling to fill; on a normal end it gets its marker (kind, version, the
        files written) and is renamed onto ``path``."""
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        except OSError as exc:
            raise OutputError(f"{self.option} {path}: cannot create it ({_os_reason(exc)})") from None
        try:
            os.chmod(temporary, DIR_MODE)
            owner = _owner()  # kept in the final marker: a kill while renaming leaves it here
            _write_marker(temporary, state="staging", **owner)
            yield temporary
            files = sorted(item.name for item in temporary.iterdir() if item.name != MARKER_FILE)
            _write_marker(temporary, state="complete", kind=self.kind,
                          fxprune_version=self.fxprune_version, files=files, **owner)
            self._commit(temporary)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)

    def _commit(self, temporary: Path) -> None:
        path = self.path
        if not path.exists():
            os.replace(temporary, path)
            return
        self.check_replaceable(force=True)  # still ours? (it may have changed meanwhile)
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        _write_marker(aside, state="aside", **_owner())
        os.replace(path, aside / path.name)
        try:
            os.replace(temporary, path)
        except BaseException:
            os.replace(aside / path.name, path)  # put the old one back
            shutil.rmtree(aside, ignore_errors=True)
            raise
        shutil.rmtree(aside, ignore_errors=True)  # the old output goes only now


# --- fxprune's own files -----------------------------------------------------------------


def read_json(path: str | os.PathLike, what: str = "file") -> dict[str, Any]:
    """A JSON object from one of fxprune's files, or one ``PlanError`` line naming it."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"{what} {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"{what} {path} cannot be read: {_one_line(exc)}") from None
    if not text.strip():
        raise PlanError(f"{what} {path} is empty; re-create it")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanError(
            f"{what} {path} is not valid JSON ({exc.msg} at line {exc.lineno}); "
            "it may be truncated or edited by hand: re-create it"
        ) from None
    if not isinstance(data, dict):
        raise PlanError(f"{what} {path} holds a JSON {type(data).__name__}, expected an object")
    return data


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """``meta.json`` of a slim folder, upgraded to format 2 (``inputs`` always present)."""
    path = Path(directory) / META_FILE
    meta = read_json(path, "slim metadata")
    from .loading import InputSpec  # same layer; loading never imports io

    try:
        if "inputs" in meta:
            specs = [InputSpec.from_dict(item) for item in meta["inputs"]]
        else:  # version 1: float inputs of these shapes
            specs = [InputSpec(tuple(shape)) for shape in meta.get("input_shapes", [[1, 3, 32, 32]])]
    except Exception as exc:  # a hand-edited or foreign file
        raise PlanError(f"slim metadata {path}: bad input description: {_one_line(exc)}") from exc
    meta["inputs"] = [spec.to_dict() for spec in specs]
    meta.setdefault("outputs", None)
    return meta


def read_summary(directory: str | os.PathLike) -> dict[str, Any]:
    """``summary.json`` of a slim folder (params, MACs, settings, equivalence)."""
    return read_json(Path(directory) / SUMMARY_FILE, "summary")


def describe_output(value: Any) -> dict[str, Any]:
    """The structure of a model output: tensor, tuple/list (arity, items), dict (keys, items).
    Works on real outputs and on the arguments of an fx ``output`` node."""
    import torch
    from torch import fx

    if isinstance(value, (torch.Tensor, fx.Node)):
        return {"kind": "tensor"}
    if isinstance(value, dict):
        return {"kind": "dict", "keys": [str(k) for k in value],
                "items": [describe_output(v) for v in value.values()]}
    if isinstance(value, (tuple, list)):
        return {"kind": type(value).__name__, "arity": len(value),
                "items": [describe_output(v) for v in value]}
    return {"kind": "other", "type": type(value).__name__}


def output_names(structure: dict[str, Any] | None, prefix: str = "") -> list[str]:
    """Names of the tensors of an output structure, in flattening order: dict keys, tuple
    positions (``output_0``), ``output`` for a single tensor; nested ones joined by ``.``."""
    if not structure or structure.get("kind") == "tensor":
        return [prefix or "output"]
    if structure["kind"] == "dict":
        parts = [(f"{prefix}.{key}" if prefix else key, item)
                 for key, item in zip(structure["keys"], structure["items"])]
    elif structure["kind"] in ("tuple", "list"):
        parts = [(f"{prefix}.{i}" if prefix else f"output_{i}", item)
                 for i, item in enumerate(structure["items"])]
    else:
        return []
    return [name for sub, item in parts for name in output_names(item, sub)]


def input_names(model: Any, count: int) -> list[str]:
    """Names of the first ``count`` inputs: placeholders of a GraphModule, else the
    parameters of ``forward`` (``input_{i}`` where there is no name)."""
    import inspect

    from torch import fx

    if isinstance(model, fx.GraphModule):
        names = [node.target for node in model.graph.nodes if node.op == "placeholder"]
    else:
        try:
            parameters = inspect.signature(model.forward).parameters.values()
        except (TypeError, ValueError):
            parameters = []
        names = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = [str(name).lstrip("*") for name in names[:count]]
    return names + [f"input_{i}" for i in range(len(names), count)]


def _output_structure(model: Any, inputs: tuple) -> dict[str, Any]:
    import torch
    from torch import fx

    if isinstance(model, fx.GraphModule):
        for node in model.graph.nodes:
            if node.op == "output":
                return describe_output(node.args[0])
    with torch.no_grad():
        return describe_output(model(*inputs))


def write_slim(directory: str | os.PathLike, model: Any, example_inputs: Any,
               extra: dict[str, Any] | None = None, specs: Iterable[Any] | None = None) -> None:
    """Write ``slim.pt`` (the pickled model) and a complete ``meta.json`` into ``directory``.

    ``specs`` (``loading.InputSpec``) describe the inputs when the caller knows them (the
    CLI's ``--input-shape 1,40:int64:0-1000``); otherwise they are read off the tensors
    (integer ranges: the observed ``[min, max + 1)``)."""
    import torch

    from .loading import InputSpec

    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    names = input_names(model, len(inputs))
    given = list(specs) if specs is not None else []
    if len(given) != len(inputs):
        given = [InputSpec.of_tensor(t) for t in inputs]
    described = [spec.named(name) for spec, name in zip(given, names)]
    meta = {
        "format": META_FORMAT,
        "version": META_VERSION,
        "inputs": [spec.to_dict() for spec in described],
        "input_shapes": [list(spec.shape) for spec in described],
        "outputs": _output_structure(model, inputs),
        **(extra or {}),
    }
    folder = Path(directory)
    with atomic_path(folder / SLIM_FILE) as temporary:
        torch.save(model, temporary)
    atomic_write_json(folder / META_FILE, meta)


def read_slim(directory: str | os.PathLike,
              inputs_given: bool = False) -> tuple[Any, tuple, dict[str, Any]]:
    """``(model, example_inputs, meta)`` from a slim folder; one ``PlanError`` line for a
    missing folder or file, a truncated or foreign ``slim.pt``, a corrupt or missing
    ``meta.json``. ``inputs_given``: the caller has its own inputs (``--input-shape``), so a
    missing ``meta.json`` is no error (``example_inputs`` is then empty)."""
    import torch

    from .loading import EXAMPLE_INPUT_SEED, InputSpec

    folder = Path(directory)
    path = folder / SLIM_FILE
    if not path.is_file():
        raise PlanError(f"no slim model in {folder} (expected {SLIM_FILE})")
    has_meta = (folder / META_FILE).exists()
    meta = read_meta(folder) if has_meta else {"inputs": [], "outputs": None}  # fails fast
    if path.stat().st_size == 0:
        raise PlanError(f"could not load {path}: the file is empty; re-create the slim folder")
    try:
        model = torch.load(path, weights_only=False, map_location="cpu")
    except (ModuleNotFoundError, AttributeError) as exc:
        raise PlanError(
            f"could not load {path}: it needs {getattr(exc, 'name', None) or _one_line(exc)} "
            "importable (the source of a custom layer); add its folder to PYTHONPATH"
        ) from None
    except Exception as exc:  # truncated archive, not a torch file, foreign pickle
        first = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else ""
        raise PlanError(
            f"could not load {path}: not a complete torch file ({type(exc).__name__}: {first}); "
            "it may be truncated: re-create the slim folder"
        ) from exc
    if not has_meta and not inputs_given:  # a guessed input would mislead export and profile
        raise PlanError(f"slim metadata {folder / META_FILE} not found, so the model's inputs are "
                        "unknown; re-create the slim folder or give the input shapes (--input-shape)")
    generator = torch.Generator().manual_seed(EXAMPLE_INPUT_SEED)
    specs = [InputSpec.from_dict(item) for item in meta["inputs"]]
    return model, tuple(spec.make(generator) for spec in specs), meta


__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "MARKER_FILE",
    "META_FILE",
    "OWN_FILES",
    "PLAN_FILE",
    "SLIM_FILE",
    "SUMMARY_FILE",
    "OutputFolder",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_output_file",
    "check_writable",
    "clean_leftovers",
    "describe_output",
    "input_names",
    "output_names",
    "read_json",
    "read_meta",
    "read_slim",
    "read_summary",
    "write_slim",
]
