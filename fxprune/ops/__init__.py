"""The op registry: the one home of per-op knowledge.

Three registries, one per kind of dispatch, each keyed by exactly what is dispatched on:

* ``MODULE_RULES``   keyed by module class (or its ``"module.QualName"`` string, so a
  rule can name a class from an optional package without importing it);
* ``FUNCTION_RULES`` keyed by the callable of a ``call_function`` node;
* ``METHOD_RULES``   keyed by the method name of a ``call_method`` node.

Registering a key twice is an error. A node whose key nobody registered is *unhandled*:
it freezes every channel it touches and is reported (see ``Builder.unhandled_op``).
A rule's hooks (labels, slicing, argument rewriting, MACs, the producer dim scorers
read, the expected cost under gates) are listed in ``registry.py``; the rule files
group ops by family: ``layers`` (conv, linear, norms), ``elementwise`` (activations,
pooling, padding), ``layout`` (views, permutes, cat/split, indexing), ``reductions``.
"""

from . import attention, elementwise, extra, layers, layout, reductions, rope, shapes, swin  # noqa: F401  (fills the registries)
from .registry import (
    FUNCTION_RULES,
    METHOD_RULES,
    MODULE_RULES,
    ModuleRule,
    OpRule,
    build_channel_graph,
    dispatch,
    module_rule_for,
    node_macs,
    register_function,
    register_method,
    register_module,
    rule_for,
)

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
]
