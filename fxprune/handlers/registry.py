"""The three handler registries, their decorators, and dispatch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.fx as fx
from torch import nn

from ..graph import META_SIZE_OF, Builder
from ..trace import META_SHAPE


@dataclass(frozen=True)
class OpRule:
    propagate: Callable[[Builder, fx.Node], Any]
    rewrite: Callable[[fx.Node, Any], None] | None = None


class ModuleHandler:
    """Base for parameter-owning (or shape-changing) module types."""

    def propagate(self, b: Builder, node: fx.Node, module: nn.Module, name: str) -> Any:
        raise NotImplementedError

    def slice_(self, module: nn.Module, keep: dict[str, np.ndarray]) -> None:
        """Shrink ``module`` in place (it belongs to the slim copy): ``keep`` maps an
        attribute name ("out_channels") to the kept indices along it."""


MODULE_HANDLERS: dict[Any, ModuleHandler] = {}
FUNCTION_HANDLERS: dict[Callable, OpRule] = {}
METHOD_HANDLERS: dict[str, OpRule] = {}


def _register(table: dict, keys, value) -> None:
    # aliases (F.avg_pool1d is torch.avg_pool1d) collapse within one registration
    for key in dict.fromkeys(keys):
        if key in table:
            raise KeyError(f"fxprune: a handler for {key!r} is already registered")
        table[key] = value


def register_module(*types):
    """Class decorator: ``@register_module(nn.Conv2d)`` on a ``ModuleHandler`` subclass."""

    def deco(cls):
        _register(MODULE_HANDLERS, types, cls())
        return cls

    return deco


def register_function(*fns, rewrite=None):
    def deco(fn):
        _register(FUNCTION_HANDLERS, fns, OpRule(fn, rewrite))
        return fn

    return deco


def register_method(*names, rewrite=None):
    def deco(fn):
        _register(METHOD_HANDLERS, names, OpRule(fn, rewrite))
        return fn

    return deco


def module_handler_for(module: nn.Module) -> ModuleHandler | None:
    cls = type(module)
    key = f"{cls.__module__}.{cls.__qualname__}"
    if cls in MODULE_HANDLERS:
        return MODULE_HANDLERS[cls]
    if key in MODULE_HANDLERS:
        return MODULE_HANDLERS[key]
    # a subclass of a known type counts only if it keeps the base class's forward
    for base in cls.__mro__[1:]:
        if base in MODULE_HANDLERS and cls.forward is base.forward:
            return MODULE_HANDLERS[base]
    return None


def rule_for(node: fx.Node) -> OpRule | None:
    if node.op == "call_function":
        try:
            rule = FUNCTION_HANDLERS.get(node.target)
        except TypeError:  # unhashable target
            return None
        if rule is None:
            t = node.target
            rule = FUNCTION_HANDLERS.get(
                f"{getattr(t, '__module__', '')}.{getattr(t, '__qualname__', '')}"
            )
        return rule
    if node.op == "call_method":
        return METHOD_HANDLERS.get(node.target)
    return None


def size_sources(node: fx.Node) -> frozenset:
    """The (tensor node name, dim) pairs a size value depends on."""
    got = node.meta.get(META_SIZE_OF, frozenset())
    return frozenset().union(*got) if isinstance(got, tuple) else got


def dispatch(b: Builder, node: fx.Node) -> Any:
    if node.op == "call_module":
        module = b.modules[node.target]
        handler = module_handler_for(module)
        if handler is None:
            return b.unhandled_op(node, f"no handler for module type {type(module).__name__}")
        return handler.propagate(b, node, module, node.target)
    rule = rule_for(node)
    if rule is None:
        if not any(b.shape(a) is not None for a in node.all_input_nodes) and (
            node.meta.get(META_SHAPE) is None
        ):
            # pure Python arithmetic on sizes and the like: keep where sizes came from
            deps = frozenset().union(*(size_sources(a) for a in node.all_input_nodes))
            if deps:
                node.meta[META_SIZE_OF] = deps
            return None
        return b.unhandled_op(node, "no handler registered")
    return rule.propagate(b, node)
