"""Resolve the MODEL argument a CLI user types into ``(model, example_inputs)``.

Accepted forms:

* ``path/to/model.py``        the file defines ``build_model()`` or a module-level ``model``
* ``path/to/model.py:name``   ``name`` is a function or class in the file, called with no args
* ``torchvision:resnet50``    ``torchvision.models.get_model(name, weights=None)``
* ``fxprune:resnet56``        the built-in registry in ``fxprune.models``

Example inputs come from, in order: an explicit ``input_shape``, the file's optional
``example_inputs()``, the built-in/torchvision default shape. They are ``torch.randn``
drawn from a generator seeded with ``EXAMPLE_INPUT_SEED`` so every run sees the same
tensors. The model is returned in eval() mode. Every failure is one-line ``ModelLoadError``
(``parse_shape`` alone raises ``ConfigError``, being a pure option parser).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import itertools
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from fxprune.errors import ConfigError, ModelLoadError

EXAMPLE_INPUT_SEED = 0
TORCHVISION_PREFIX = "torchvision:"
FXPRUNE_PREFIX = "fxprune:"
IMAGENET_INPUT_SHAPE: tuple[int, ...] = (1, 3, 224, 224)
# torchvision models whose stem needs a larger input than 224x224.
TORCHVISION_INPUT_SHAPES: dict[str, tuple[int, ...]] = {"inception_v3": (1, 3, 299, 299)}
SHAPE_HINT = "pass --input-shape 1,3,32,32"

ExampleInputs = tuple[torch.Tensor, ...]
_module_counter = itertools.count()


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,32,32"`` -> ``(1, 3, 32, 32)``; positive ints separated by commas."""
    parts = [part.strip() for part in str(text).strip().strip("()[]").split(",")]
    if parts and parts[-1] == "":  # allow a trailing comma: "8,"
        parts = parts[:-1]
    try:
        shape = tuple(int(part) for part in parts)
    except ValueError:
        shape = ()
    if not shape or any(dim < 1 for dim in shape):
        raise ConfigError(
            f"bad shape {text!r}: expected positive integers separated by commas, e.g. 1,3,32,32"
        )
    return shape


def load_model(
    spec: str,
    input_shape: tuple[int, ...] | str | None = None,
    num_classes: int | None = None,
) -> tuple[nn.Module, ExampleInputs]:
    """Build the model named by ``spec`` and example inputs for tracing it (see module doc)."""
    shape = _checked_shape(input_shape) if input_shape is not None else None
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ModelLoadError(f"{spec}: num_classes must be a positive int, got {num_classes!r}")

    if spec.startswith(TORCHVISION_PREFIX):
        model, default_shape = _load_torchvision(spec[len(TORCHVISION_PREFIX) :], num_classes)
        file_inputs = None
    elif spec.startswith(FXPRUNE_PREFIX):
        model, default_shape = _load_builtin(spec[len(FXPRUNE_PREFIX) :], num_classes)
        file_inputs = None
    else:
        model, file_inputs = _load_file(spec, num_classes, want_inputs=shape is None)
        default_shape = None

    if shape is not None:
        inputs = _random_inputs(shape)
    elif file_inputs is not None:
        inputs = file_inputs
    elif default_shape is not None:
        inputs = _random_inputs(default_shape)
    else:
        raise ModelLoadError(
            f"{spec}: cannot tell the input shape (no example_inputs() in the file); {SHAPE_HINT}"
        )
    return model.eval(), inputs


# --- shapes and inputs ------------------------------------------------------------------


def _checked_shape(input_shape: tuple[int, ...] | str) -> tuple[int, ...]:
    if isinstance(input_shape, str):
        try:
            return parse_shape(input_shape)
        except ConfigError as err:
            raise ModelLoadError(f"input shape: {err}") from None
    shape = tuple(input_shape)
    if not shape or not all(isinstance(dim, int) and dim >= 1 for dim in shape):
        raise ModelLoadError(
            f"bad input shape {input_shape!r}: expected positive ints; {SHAPE_HINT}"
        )
    return shape


def _random_inputs(shape: tuple[int, ...]) -> ExampleInputs:
    generator = torch.Generator().manual_seed(EXAMPLE_INPUT_SEED)
    return (torch.randn(shape, generator=generator),)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# --- built-in registry and torchvision ----------------------------------------------------


def _load_builtin(name: str, num_classes: int | None) -> tuple[nn.Module, tuple[int, ...]]:
    from fxprune.models import create_model, default_input_shape

    model = create_model(name, num_classes=10 if num_classes is None else num_classes)
    return model, default_input_shape(name)


def _load_torchvision(name: str, num_classes: int | None) -> tuple[nn.Module, tuple[int, ...]]:
    import difflib

    import torchvision  # lazily: importing it costs ~1 s

    available = torchvision.models.list_models()
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
        hint = (
            f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models()"
        )
        raise ModelLoadError(f"unknown torchvision model {name!r}: {hint}")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        model = torchvision.models.get_model(name, weights=None, **kwargs)  # never downloads
    except Exception as err:  # any constructor failure is a load failure
        raise ModelLoadError(
            f"torchvision:{name} could not be built: {type(err).__name__}: {_one_line(err)}"
        ) from err
    return model, TORCHVISION_INPUT_SHAPES.get(name, IMAGENET_INPUT_SHAPE)


# --- user files -------------------------------------------------------------------------


def _split_file_spec(spec: str) -> tuple[Path, str | None]:
    path_text, attr_name = spec, None
    if ".py:" in spec:
        path_text, _, attr_name = spec.rpartition(":")
        if not attr_name.isidentifier():
            raise ModelLoadError(f"{spec}: {attr_name!r} is not a Python name")
    if not path_text.endswith(".py"):
        raise ModelLoadError(
            f"unrecognised MODEL {spec!r}: use path/to/model.py[:name], "
            "torchvision:<name> or fxprune:<name>"
        )
    return Path(path_text), attr_name


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    module_name = f"_fxprune_user_{resolved.stem}_{digest}_{next(_module_counter)}"
    import_spec = importlib.util.spec_from_file_location(module_name, resolved)
    if import_spec is None or import_spec.loader is None:
        raise ModelLoadError(f"{path}: cannot be imported as a Python file")
    module = importlib.util.module_from_spec(import_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up here
    # The file's folder goes first on sys.path while it runs, so sibling imports work.
    sys.path.insert(0, str(resolved.parent))
    try:
        import_spec.loader.exec_module(module)
    except (Exception, SystemExit) as err:
        sys.modules.pop(module_name, None)
        raise ModelLoadError(
            f"{path}: importing it raised {type(err).__name__}: {_one_line(err)}"
        ) from err
    finally:
        if str(resolved.parent) in sys.path:
            sys.path.remove(str(resolved.parent))
    return module


def _call_builder(where: str, builder: Callable[..., object], num_classes: int | None) -> object:
    kwargs = {}
    if num_classes is not None:
        try:
            parameters = inspect.signature(builder).parameters
        except (TypeError, ValueError):
            parameters = {}
        if "num_classes" not in parameters:
            raise ModelLoadError(f"{where} takes no num_classes argument; drop --num-classes")
        kwargs["num_classes"] = num_classes
    try:
        return builder(**kwargs)
    except Exception as err:  # user code may raise anything
        raise ModelLoadError(f"{where}() raised {type(err).__name__}: {_one_line(err)}") from err


def _load_file(
    spec: str, num_classes: int | None, want_inputs: bool
) -> tuple[nn.Module, ExampleInputs | None]:
    path, attr_name = _split_file_spec(spec)
    module = _import_file(path)

    named_by_user = attr_name is not None
    if attr_name is None:
        if callable(getattr(module, "build_model", None)):
            attr_name = "build_model"
        elif hasattr(module, "model"):
            attr_name = "model"
        else:
            raise ModelLoadError(
                f"{path} defines no model: add build_model() or a module-level `model`, "
                "or name one with path.py:name"
            )
    elif not hasattr(module, attr_name):
        raise ModelLoadError(f"{path} defines no {attr_name!r}")

    where = f"{path}:{attr_name}"
    found = getattr(module, attr_name)
    if isinstance(found, nn.Module):  # a ready-built instance: callable, but not a builder
        if num_classes is not None:
            raise ModelLoadError(
                f"{where} is a ready-built model; drop --num-classes or "
                "define build_model(num_classes)"
            )
        model = found
    elif callable(found) and (named_by_user or attr_name == "build_model"):
        model = _call_builder(where, found, num_classes)
    else:
        expected = "a torch.nn.Module" + (
            " or a function/class building one" if named_by_user else ""
        )
        raise ModelLoadError(f"{where} is of type {type(found).__name__}, expected {expected}")

    if not isinstance(model, nn.Module):
        raise ModelLoadError(
            f"{where}() returned type {type(model).__name__}, expected a torch.nn.Module"
        )
    return model, _file_example_inputs(path, module) if want_inputs else None


def _file_example_inputs(path: Path, module: ModuleType) -> ExampleInputs | None:
    make_inputs = getattr(module, "example_inputs", None)
    if make_inputs is None:
        return None
    where = f"{path}:example_inputs"
    if not callable(make_inputs):
        raise ModelLoadError(f"{where} must be a function returning a tensor or tuple of tensors")
    inputs = _call_builder(where, make_inputs, None)
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if (
        not isinstance(inputs, (tuple, list))
        or not inputs
        or not all(isinstance(item, torch.Tensor) for item in inputs)
    ):
        raise ModelLoadError(
            f"{where}() returned {type(inputs).__name__}, expected a tensor or tuple of tensors"
        )
    return tuple(inputs)


__all__ = ["EXAMPLE_INPUT_SEED", "load_model", "parse_shape"]
