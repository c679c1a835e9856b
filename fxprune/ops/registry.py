"""The three rule registries, their decorators, the one lookup rule, and dispatch.

A rule is everything fxprune knows about one op. Module types get a ``ModuleRule``
subclass; ``call_function`` targets and ``call_method`` names get an ``OpRule``. Hooks:

* ``propagate``: output labels + couplings recorded on the ``Builder`` (required);
* ``slice_`` (modules): shrink the slim copy's parameters and size attributes;
* ``rewrite`` (functions/methods): edit constant arguments in the slim graph (view
  shapes, split sizes, slice bounds);
* ``macs``: multiply-accumulates of one call (whole batch), from the shapes in
  ``node.meta``; ops without one cost none;
* ``producer_weight`` (modules): which weight dim indexes a producer space, for scorers;
* ``expected_cost`` (modules): the polynomial rows of the module's MACs and parameters
  under keep probabilities (``fxprune.cost.expected``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import fx, nn

from ..analysis import META_SIZE_OF, Builder, ChannelGraph, walk
from ..trace import META_SHAPE

Propagate = Callable[[Builder, fx.Node], Any]
Rewrite = Callable[[fx.Node, Any], None]
Macs = Callable[[fx.Node], int]


@dataclass(frozen=True)
class OpRule:
    """Rule of a ``call_function`` target or a ``call_method`` name."""

    propagate: Propagate
    rewrite: Rewrite | None = None
    macs: Macs | None = None


class ModuleRule:
    """Base for module types; one instance is registered per decorated class."""

    def propagate(self, b: Builder, node: fx.Node, module: nn.Module, name: str) -> Any:
        raise NotImplementedError

    def slice_(self, module: nn.Module, keep: dict[str, np.ndarray]) -> None:
        """Shrink ``module`` in place (it belongs to the slim copy): ``keep`` maps an
        attribute name ("out_channels") to the kept indices along it."""

    def macs(self, node: fx.Node, module: nn.Module) -> int:
        """Multiply-accumulates of this call (whole batch); shapes are in ``node.meta``."""
        return 0

    def producer_weight(self, module: nn.Module, attr: str) -> tuple[str, int] | None:
        """``(parameter name, dim)`` whose slices along ``dim`` are the channels of the
        producer space ``attr`` (``"out_channels"`` -> ``("weight", 0)``), or None."""
        return None

    def masked(self, module: nn.Module, masks: dict[str, np.ndarray]) -> nn.Module | None:
        """For a leaf with channels inside (attention heads): a copy of ``module`` with
        the pruned ones zeroed (``masks``: attribute -> keep mask), the masked-dense
        oracle's reference. None: masking inputs and outputs is enough."""
        return None

    def expected_cost(self, cb: Any, node: fx.Node, module: nn.Module, name: str,
                      first: bool) -> None:
        """Add this call's rows to the expected-cost polynomial (``cb`` is a
        ``fxprune.cost.expected.CostBuilder``: ``weight_pair``, ``vector``,
        ``module_const``, ``units``); ``first`` is False when the module is called again
        (parameters count once). Default: this call's ``macs`` and the module's
        parameters, neither depending on the gates (they die with the call's sections)."""
        cb.module_const(node, module, first, self.macs(node, module) / cb.batch)


MODULE_RULES: dict[Any, ModuleRule] = {}
FUNCTION_RULES: dict[Any, OpRule] = {}
METHOD_RULES: dict[str, OpRule] = {}


def _register(table: dict, keys, value) -> None:
    # aliases (F.avg_pool1d is torch.avg_pool1d) collapse within one registration
    for key in dict.fromkeys(keys):
        if key in table:
            raise KeyError(f"fxprune: a rule for {key!r} is already registered")
        table[key] = value


def register_module(*types):
    """Class decorator on a ``ModuleRule`` subclass: ``@register_module(nn.Conv2d)``.
    A key is a module class or its ``"package.module.QualName"`` string (for classes of
    optional packages)."""

    def deco(cls):
        _register(MODULE_RULES, types, cls())
        return cls

    return deco


def register_function(*fns, rewrite: Rewrite | None = None, macs: Macs | None = None):
    """Decorator on ``propagate(b, node)`` for ``call_function`` targets (callables, or
    ``"module.qualname"`` strings)."""

    def deco(fn):
        _register(FUNCTION_RULES, fns, OpRule(fn, rewrite, macs))
        return fn

    return deco


def register_method(*names: str, rewrite: Rewrite | None = None, macs: Macs | None = None):
    """Decorator on ``propagate(b, node)`` for ``call_method`` names (``"view"``)."""

    def deco(fn):
        _register(METHOD_RULES, names, OpRule(fn, rewrite, macs))
        return fn

    return deco


def module_rule_for(module: nn.Module) -> ModuleRule | None:
    """The ONE lookup rule for modules, used by the graph, surgery, MAC counting, the
    scorers and the expected cost: the exact class (or its qualified-name string), else
    a registered base class, but only if the subclass keeps the base's ``forward``
    (a subclass with its own forward is unknown: its channels are frozen)."""
    cls = type(module)
    if cls in MODULE_RULES:
        return MODULE_RULES[cls]
    key = f"{cls.__module__}.{cls.__qualname__}"
    if key in MODULE_RULES:
        return MODULE_RULES[key]
    for base in cls.__mro__[1:]:
        if base in MODULE_RULES and cls.forward is base.forward:
            return MODULE_RULES[base]
    return None


def rule_for(node: fx.Node) -> OpRule | None:
    """The rule of a ``call_function`` or ``call_method`` node, or None."""
    if node.op == "call_function":
        try:
            rule = FUNCTION_RULES.get(node.target)
        except TypeError:  # unhashable target
            return None
        if rule is None:
            t = node.target
            rule = FUNCTION_RULES.get(
                f"{getattr(t, '__module__', '')}.{getattr(t, '__qualname__', '')}"
            )
        return rule
    if node.op == "call_method":
        return METHOD_RULES.get(node.target)
    return None


def size_sources(node: fx.Node) -> frozenset:
    """The (tensor node name, dim) pairs a size value depends on."""
    got = node.meta.get(META_SIZE_OF, frozenset())
    return frozenset().union(*got) if isinstance(got, tuple) else got


def dispatch(b: Builder, node: fx.Node) -> Any:
    """Labels of one call node, from its rule; an op nobody registered freezes."""
    from .shapes import guard_size_uses

    guard_size_uses(b, node)
    if node.op == "call_module":
        module = b.modules[node.target]
        rule = module_rule_for(module)
        if rule is None:
            return b.unhandled_op(node, f"no handler for module type {type(module).__name__}")
        return rule.propagate(b, node, module, node.target)
    rule = rule_for(node)
    if rule is None:
        if not any(b.shape(a) is not None for a in node.all_input_nodes) and (
            node.meta.get(META_SHAPE) is None
        ):
            # pure Python arithmetic on sizes and the like: keep where sizes came from
            from .shapes import size_arithmetic

            size_arithmetic(node)
            return None
        return b.unhandled_op(node, "no handler registered")
    return rule.propagate(b, node)


def build_channel_graph(gm: fx.GraphModule, options: dict[str, Any] | None = None
                        ) -> ChannelGraph:
    """Analyse a shape-annotated GraphModule (from ``trace_model``) with the registry;
    ``options`` reach the rules as ``Builder.options``."""
    return walk(gm, dispatch, options)


def node_macs(node: fx.Node, modules: dict[str, nn.Module]) -> int:
    """MACs of one node (whole batch) by its rule; 0 for ops without a MAC hook."""
    if node.op == "call_module":
        module = modules[node.target]
        rule = module_rule_for(module)
        return int(rule.macs(node, module)) if rule is not None else 0
    rule = rule_for(node)
    return int(rule.macs(node)) if rule is not None and rule.macs is not None else 0


__all__ = [
    "FUNCTION_RULES",
    "METHOD_RULES",
    "MODULE_RULES",
    "ModuleRule",
    "OpRule",
    "build_channel_graph",
    "dispatch",
    "module_rule_for",
    "node_macs",
    "register_function",
    "register_method",
    "register_module",
    "rule_for",
    "size_sources",
]
