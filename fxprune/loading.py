"""Resolve the MODEL argument a CLI user types into ``(model, example_inputs)``.

Accepted forms:

* ``path/to/model.py``        the file defines ``build_model()`` or a module-level ``model``
* ``path/to/model.py:name``   ``name`` is a function or class in the file, called with no args
* ``torchvision:resnet50``    ``torchvision.models.get_model(name, weights=None)`` (and
                              ``weights_backbone=None``: nothing is ever downloaded)
* ``fxprune:resnet56``        the built-in registry in ``fxprune.models``

Example inputs come from, in order: explicit input specs (``--input-shape``, repeatable,
one per input: ``1,3,32,32`` or ``1,40:int64:0-1000``), the file's optional
``example_inputs()``, the built-in/torchvision default shape. Float inputs are
``torch.randn``, integer inputs ``torch.randint(low, high)``, drawn in order from one
generator seeded with ``EXAMPLE_INPUT_SEED`` so every run sees the same tensors. A shape
without its batch dimension is refused with a hint. The model is returned in eval() mode.
Every failure is one-line ``ModelLoadError`` (``parse_shape``/``InputSpec.parse`` alone
raise ``ConfigError``, being pure option parsers).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import itertools
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
INT_DTYPES = ("int64", "int32", "int16", "int8", "uint8", "bool")
FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")
DEFAULT_INT_RANGE = (0, 2)  # values 0 and 1: valid for any embedding table or index

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


@dataclass(frozen=True)
class InputSpec:
    """One model input: shape (batch dim first), dtype, and for integer inputs the value
    range ``range(low, high)``. Round-trips through ``to_dict``/``from_dict`` (meta.json).

    >>> InputSpec.parse("1,40:int64:0-1000")
    InputSpec(shape=(1, 40), dtype='int64', low=0, high=1000, name=None)
    >>> InputSpec.parse("1,3,32,32").make(torch.Generator().manual_seed(0)).shape
    torch.Size([1, 3, 32, 32])
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    low: int | None = None
    high: int | None = None
    name: str | None = None

    def __post_init__(self):
        shape = tuple(self.shape)
        if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                                for d in shape):
            raise ConfigError(f"bad shape {shape!r}: expected positive ints, e.g. 1,3,32,32")
        object.__setattr__(self, "shape", shape)
        if self.dtype not in INT_DTYPES + FLOAT_DTYPES:
            raise ConfigError(
                f"unknown dtype {self.dtype!r}: use one of {', '.join(FLOAT_DTYPES + INT_DTYPES)}"
            )
        if self.is_integer:
            low, high = DEFAULT_INT_RANGE if self.low is None else (self.low, self.high)
            if high is None or not low < high:
                raise ConfigError(f"bad value range {low}-{high}: expected LOW-HIGH with LOW < HIGH")
            object.__setattr__(self, "low", int(low))
            object.__setattr__(self, "high", int(high))
        elif self.low is not None or self.high is not None:
            raise ConfigError(f"a value range is for integer inputs; {self.dtype} inputs are randn")

    @property
    def is_integer(self) -> bool:
        return self.dtype in INT_DTYPES

    @classmethod
    def parse(cls, text: str) -> InputSpec:
        """``SHAPE[:DTYPE[:LOW-HIGH]]``, e.g. ``1,3,32,32`` or ``1,40:int64:0-1000``."""
        shape_text, _, rest = str(text).partition(":")
        dtype_text, _, range_text = rest.partition(":")
        low = high = None
        if range_text:
            match = re.fullmatch(r"\s*(-?\d+)\s*-\s*(-?\d+)\s*", range_text)
            if not match:
                raise ConfigError(f"bad value range {range_text!r} in {text!r}: expected LOW-HIGH, "
                                  "e.g. 1,40:int64:0-1000")
            low, high = int(match.group(1)), int(match.group(2))
        try:
            return cls(parse_shape(shape_text), dtype_text.strip() or "float32", low, high)
        except ConfigError as err:
            raise ConfigError(f"--input-shape {text!r}: {err}") from None

    @classmethod
    def of_tensor(cls, tensor: torch.Tensor, name: str | None = None) -> InputSpec:
        """The spec of an example tensor (integer range: observed ``[min, max + 1)``)."""
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype in INT_DTYPES and tensor.numel():
            low, high = int(tensor.min()), int(tensor.max()) + 1
            return cls(tuple(tensor.shape), dtype, low, high, name)
        if dtype not in INT_DTYPES + FLOAT_DTYPES:
            dtype = "float32"
        return cls(tuple(tensor.shape), dtype, name=name)

    def named(self, name: str) -> InputSpec:
        return InputSpec(self.shape, self.dtype, self.low, self.high, name)

    def with_batch(self, batch: int) -> InputSpec:
        return InputSpec((batch, *self.shape[1:]), self.dtype, self.low, self.high, self.name)

    def make(self, generator: torch.Generator) -> torch.Tensor:
        """A random tensor of this spec, drawn from ``generator``."""
        dtype = getattr(torch, self.dtype)
        if self.is_integer:
            return torch.randint(self.low, self.high, self.shape, generator=generator).to(dtype)
        return torch.randn(self.shape, generator=generator).to(dtype)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"shape": list(self.shape), "dtype": self.dtype}
        if self.name is not None:
            out = {"name": self.name, **out}
        if self.is_integer:
            out.update(low=self.low, high=self.high)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> InputSpec:
        return cls(tuple(data["shape"]), data.get("dtype", "float32"), data.get("low"),
                   data.get("high"), data.get("name"))


def make_inputs(specs: Sequence[InputSpec]) -> ExampleInputs:
    """Example tensors for ``specs``, drawn in order from one generator seeded with
    ``EXAMPLE_INPUT_SEED`` (so one float spec gives the same tensor as always)."""
    generator = torch.Generator().manual_seed(EXAMPLE_INPUT_SEED)
    return tuple(spec.make(generator) for spec in specs)


def parse_input_specs(texts: object) -> list[InputSpec] | None:
    """``--input-shape`` values (one per input) -> specs; ``None`` when none were given.
    A plain tuple of ints is one shape (the API form ``input_shape=(1, 3, 32, 32)``)."""
    if texts is None:
        return None
    if isinstance(texts, (str, InputSpec)):
        texts = [texts]
    items = list(texts)  # type: ignore[call-overload]
    if not items:
        return None
    if all(isinstance(item, int) for item in items):
        return [InputSpec(tuple(items))]
    return [item if isinstance(item, InputSpec)
            else InputSpec(tuple(item)) if isinstance(item, (tuple, list))
            else InputSpec.parse(item) for item in items]


def model_file(spec: str) -> Path | None:
    """The Python file a MODEL spec names (``path.py`` or ``path.py:name``), else None."""
    if spec.startswith((TORCHVISION_PREFIX, FXPRUNE_PREFIX)):
        return None
    path_text = spec.rpartition(":")[0] if ".py:" in spec else spec
    return Path(path_text) if path_text.endswith(".py") else None


def load_model(
    spec: str,
    input_shape: object = None,
    num_classes: int | None = None,
) -> tuple[nn.Module, ExampleInputs]:
    """Build the model named by ``spec`` and example inputs for tracing it (see module doc).

    ``input_shape``: one shape (``(1, 3, 32, 32)`` or ``"1,3,32,32"``) or a list of input
    specs, one per input (``["1,3,64,64", "1,40:int64:0-1000"]``)."""
    try:
        specs = parse_input_specs(input_shape)
    except ConfigError as err:
        raise ModelLoadError(str(err)) from None  # it names the value and the expected form
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ModelLoadError(f"{spec}: num_classes must be a positive int, got {num_classes!r}")

    if spec.startswith(TORCHVISION_PREFIX):
        model, default_shape = _load_torchvision(spec[len(TORCHVISION_PREFIX) :], num_classes)
        file_inputs = None
    elif spec.startswith(FXPRUNE_PREFIX):
        model, default_shape = _load_builtin(spec[len(FXPRUNE_PREFIX) :], num_classes)
        file_inputs = None
    else:
        # with explicit specs, example_inputs() only tells how many inputs of which rank
        model, file_inputs = _load_file(spec, num_classes,
                                        want_inputs=True if specs is None else "optional")
        default_shape = None

    if specs is not None:
        reference = file_inputs or ((torch.empty(default_shape),) if default_shape else None)
        _check_batch_dims(spec, model, specs, reference)
        inputs = make_inputs(specs)
    elif file_inputs is not None:
        inputs = file_inputs
    elif default_shape is not None:
        inputs = make_inputs([InputSpec(default_shape)])
    else:
        raise ModelLoadError(
            f"{spec}: cannot tell the input shape (no example_inputs() in the file); {SHAPE_HINT}"
        )
    return model.eval(), inputs


# --- shapes and inputs ------------------------------------------------------------------

_FIRST_LAYER_RANK = {nn.Conv1d: 3, nn.Conv2d: 4, nn.Conv3d: 5, nn.BatchNorm2d: 4,
                     nn.BatchNorm3d: 5}


def _expected_rank(model: nn.Module) -> int | None:
    """The input rank of the first convolution / batch norm (they also accept an unbatched
    input, so a forgotten batch dim would otherwise run and under-count MACs)."""
    for module in model.modules():
        for kind, rank in _FIRST_LAYER_RANK.items():
            if isinstance(module, kind):
                return rank
    return None


def _required_inputs(model: nn.Module) -> list[str]:
    """Names of the positional ``forward`` parameters without a default."""
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in parameters
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]


def _check_batch_dims(spec: str, model: nn.Module, specs: Sequence[InputSpec],
                      reference: Sequence[torch.Tensor] | None) -> None:
    if reference is not None and len(reference) != len(specs):
        raise ModelLoadError(
            f"{spec}: {len(specs)} --input-shape given, the model takes {len(reference)} inputs "
            "(give one per input, in order)"
        )
    required = _required_inputs(model)
    if reference is None and len(specs) < len(required):
        raise ModelLoadError(
            f"{spec}: forward takes {len(required)} inputs ({', '.join(required)}) but "
            f"{len(specs)} --input-shape given; give one per input, in order"
        )
    for index, item in enumerate(specs):
        if reference is not None:
            wanted = reference[index].dim()
        elif index == 0 and not item.is_integer:
            wanted = _expected_rank(model)
        else:
            wanted = None
        if len(item.shape) == 1 or (wanted is not None and len(item.shape) == wanted - 1):
            given = ",".join(str(d) for d in item.shape)
            batched = ",".join(str(d) for d in (1, *item.shape))
            raise ModelLoadError(
                f"--input-shape {given} has no batch dimension; put it first, "
                f"e.g. --input-shape {batched}"
            )


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
    kwargs: dict[str, object] = {} if num_classes is None else {"num_classes": num_classes}
    builder = torchvision.models.get_model_builder(name)
    if "weights_backbone" in inspect.signature(builder).parameters:
        kwargs["weights_backbone"] = None  # detection/segmentation: no pretrained backbone either
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


def _module_name(resolved: Path) -> str:
    """The file's own stem when that name is free, so a pickled slim model refers to
    ``mymodel.Block`` and loads wherever ``mymodel`` is importable; else a private name."""
    stem = resolved.stem
    if stem.isidentifier() and stem not in sys.modules:
        try:
            found = importlib.util.find_spec(stem)
        except (ImportError, ValueError):
            found = None
        if found is None or (found.origin and Path(found.origin).resolve() == resolved):
            return stem
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    return f"_fxprune_user_{stem}_{digest}_{next(_module_counter)}"


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    resolved = path.resolve()
    module_name = _module_name(resolved)
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
            raise ModelLoadError(
                f"{where} takes no num_classes argument, but the model is built for the "
                "dataset's classes: define build_model(num_classes=10)"
            )
        kwargs["num_classes"] = num_classes
    try:
        return builder(**kwargs)
    except Exception as err:  # user code may raise anything
        raise ModelLoadError(f"{where}() raised {type(err).__name__}: {_one_line(err)}") from err


def _load_file(
    spec: str, num_classes: int | None, want_inputs: bool | str
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
                f"{where} is a ready-built model, but the model is built for the dataset's "
                "classes: define build_model(num_classes=10) instead"
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
    if not want_inputs:
        return model, None
    try:
        return model, _file_example_inputs(path, module)
    except ModelLoadError:
        if want_inputs == "optional":  # explicit --input-shape: example_inputs() only advises
            return model, None
        raise


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


__all__ = [
    "EXAMPLE_INPUT_SEED",
    "InputSpec",
    "load_model",
    "make_inputs",
    "model_file",
    "parse_input_specs",
    "parse_shape",
]
