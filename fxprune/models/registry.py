"""Built-in model registry, filled by the ``@register_model`` decorator (timm style).

A builder is a function ``name(num_classes: int = 10, **kw) -> nn.Module``; its
``__name__`` is the registry key. Each entry also records the default example-input
shape, which ``load_model("fxprune:<name>")`` uses when the user gives none.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from fxprune.errors import ConfigError, ModelLoadError

ModelBuilder = Callable[..., nn.Module]
BuilderT = TypeVar("BuilderT", bound=ModelBuilder)

CIFAR_INPUT_SHAPE: tuple[int, ...] = (1, 3, 32, 32)

_MODEL_REGISTRY: dict[str, ModelBuilder] = {}
_DEFAULT_INPUT_SHAPES: dict[str, tuple[int, ...]] = {}


def register_model(
    builder: BuilderT | None = None, *, input_shape: tuple[int, ...] = CIFAR_INPUT_SHAPE
) -> BuilderT | Callable[[BuilderT], BuilderT]:
    """Register ``builder`` under its ``__name__``; usable as ``@register_model`` or
    ``@register_model(input_shape=(1, 3, 64, 64))``. Registering a name twice raises."""

    def decorate(fn: BuilderT) -> BuilderT:
        name = fn.__name__
        if name in _MODEL_REGISTRY:
            existing = _MODEL_REGISTRY[name]
            raise ConfigError(
                f"model {name!r} is already registered by "
                f"{existing.__module__}.{existing.__qualname__}; pick another name"
            )
        _MODEL_REGISTRY[name] = fn
        _DEFAULT_INPUT_SHAPES[name] = tuple(input_shape)
        return fn

    return decorate if builder is None else decorate(builder)


def list_models(filter: str = "") -> list[str]:
    """Sorted registered names, optionally restricted by an fnmatch pattern (``"resnet*"``)."""
    names = sorted(_MODEL_REGISTRY)
    if not filter:
        return names
    return [name for name in names if fnmatch.fnmatchcase(name, filter)]


def _builder(name: str) -> ModelBuilder:
    try:
        return _MODEL_REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_MODEL_REGISTRY), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see list_models()"
        raise ModelLoadError(
            f"unknown built-in model {name!r}: {hint} "
            f"(available: {', '.join(sorted(_MODEL_REGISTRY))})"
        ) from None


def create_model(name: str, num_classes: int = 10, **kw: object) -> nn.Module:
    """Build the registered model ``name`` with freshly initialised weights (never downloads)."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive int, got {num_classes!r} for {name!r}")
    return _builder(name)(num_classes=num_classes, **kw)


def default_input_shape(name: str) -> tuple[int, ...]:
    """Example-input shape for the registered model ``name``, batch first: (1, 3, 32, 32)."""
    _builder(name)  # raises ModelLoadError with close matches for unknown names
    return _DEFAULT_INPUT_SHAPES[name]


__all__ = ["create_model", "default_input_shape", "list_models", "register_model"]
