"""Op handlers: how channel labels flow through each op, and how surgery edits it.

Three registries, one per kind of dispatch, each keyed by exactly what is dispatched on:

* ``MODULE_HANDLERS``  keyed by module class (or its ``"module.QualName"`` string, so a
  handler can name a class from an optional package without importing it);
* ``FUNCTION_HANDLERS`` keyed by the callable of a ``call_function`` node;
* ``METHOD_HANDLERS``   keyed by the method name of a ``call_method`` node.

Registering a key twice is an error. A node whose key nobody registered is *unhandled*:
it freezes every channel it touches and is reported (see ``Builder.unhandled_op``).

A function/method rule is an ``OpRule(propagate, rewrite)``: ``propagate(b, node)``
returns the output labels and records couplings on the ``Builder``; the optional
``rewrite(node, ctx)`` edits constant arguments (split sizes, view shapes, slice bounds)
in the slim graph. A module handler additionally knows its *spaces* and how to slice
its parameters (``slice_``).
"""

from . import elementwise, layers, layout, reductions  # noqa: F401  (fills the registries)
from .registry import (
    FUNCTION_HANDLERS,
    METHOD_HANDLERS,
    MODULE_HANDLERS,
    ModuleHandler,
    OpRule,
    dispatch,
    module_handler_for,
    register_function,
    register_method,
    register_module,
    rule_for,
)

__all__ = [
    "OpRule",
    "ModuleHandler",
    "MODULE_HANDLERS",
    "FUNCTION_HANDLERS",
    "METHOD_HANDLERS",
    "register_module",
    "register_function",
    "register_method",
    "module_handler_for",
    "rule_for",
    "dispatch",
]
