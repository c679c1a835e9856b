"""Tracing: ``torch.fx.symbolic_trace`` plus shape propagation on example inputs.

``trace_model`` returns a GraphModule that owns a deep copy of the user's modules (so
nothing later in the pipeline can touch the caller's model) and whose nodes carry
``node.meta["fxprune_shape"]``: the output shape (a tuple of ints) for tensor outputs,
a tuple/list of those for tuple outputs, ``None`` for anything else.

A failure to trace is turned into a ``TraceError`` whose one line names the module that
was being traced and the source line that broke, and suggests the usual fixes
(mark the module as a leaf, or pass ``concrete_args``).
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .errors import TraceError

META_SHAPE = "fxprune_shape"
META_DTYPE = "fxprune_dtype"


class _Tracer(fx.Tracer):
    """A tracer that treats user-chosen module types / qualified names as leaves and
    remembers which module it was inside, so errors can name it."""

    # defaults: GraphModule pickling re-creates the tracer class with no arguments
    def __init__(self, leaf_types: tuple[type, ...] = (), leaf_names: frozenset[str] = frozenset()):
        super().__init__()
        self.leaf_types = leaf_types
        self.leaf_names = leaf_names
        self.fxprune_stack: list[str] = []

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaf_names or (self.leaf_types and isinstance(m, self.leaf_types)):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        qualname = self.path_of_module(m)
        self.fxprune_stack.append(qualname)
        out = super().call_module(m, forward, args, kwargs)
        self.fxprune_stack.pop()
        return out


def _user_frame(exc: BaseException) -> str:
    """The innermost traceback frame outside torch itself: the user's line that broke."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        fname = frame.filename.replace("\\", "/")
        if "/torch/" not in fname and "/fxprune/" not in fname:
            return f"{fname}:{frame.lineno} ({frame.line.strip() if frame.line else '?'})"
    return "unknown location"


def _as_tuple(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs)
    raise TraceError(
        f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}"
    )


def symbolic_trace(
    model: nn.Module,
    leaf_modules: Iterable[type | str] = (),
    concrete_args: dict[str, Any] | None = None,
) -> fx.GraphModule:
    """Trace ``model`` (which is NOT copied: callers copy first) into a GraphModule."""
    leaf_types = tuple(x for x in leaf_modules if isinstance(x, type))
    leaf_names = frozenset(x for x in leaf_modules if isinstance(x, str))
    tracer = _Tracer(leaf_types, leaf_names)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args)
    except Exception as exc:  # torch.fx raises many types; all mean "cannot trace"
        where = tracer.fxprune_stack[-1] if tracer.fxprune_stack else "<root>"
        owner = type(model.get_submodule(where)).__name__ if where != "<root>" else type(model).__name__
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(
            f"torch.fx could not trace module '{where}' ({owner}) at {_user_frame(exc)}: "
            f"{type(exc).__name__}: {first}. Fix: mark it as a leaf module "
            f"(leaf_modules=[{owner}] / --leaf {owner}) or pass concrete_args for "
            "Python-level control flow."
        ) from exc
    name = type(model).__name__
    # forget our tracer class: a pickled slim model must load with torch alone
    graph._tracer_cls = None
    gm = fx.GraphModule(tracer.root, graph, name)
    gm._tracer_cls = None
    return gm


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once and stores every node's output shape in ``node.meta``."""

    current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        result = super().run_node(n)
        n.meta[META_SHAPE] = _shape_of(result)
        if isinstance(result, torch.Tensor):
            n.meta[META_DTYPE] = result.dtype
        return result


def tensor_leaves(x: Any) -> list[torch.Tensor]:
    """Every tensor inside a (nested) output: tensors, tuples/lists, dicts (sorted keys)."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for k in sorted(x) for t in tensor_leaves(x[k])]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in tensor_leaves(v)]
    return []


def _shape_of(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value):
        return type(value)(_shape_of(v) for v in value)
    return None


def propagate_shapes(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> Any:
    """Run ``gm`` in eval mode without gradients, annotate shapes; returns the output."""
    was_training = gm.training
    gm.eval()
    recorder = _ShapeRecorder(gm)
    try:
        with torch.no_grad():
            return recorder.run(*example_inputs)
    except Exception as exc:
        n = recorder.current
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        where = f"node '{n.name}' ({n.op} {n.target})" if n is not None else "the first node"
        shapes = ", ".join(str(tuple(t.shape)) for t in example_inputs if isinstance(t, torch.Tensor))
        raise TraceError(
            f"running example inputs of shape {shapes} failed at {where}: "
            f"{type(exc).__name__}: {first}. Check the input shape (e.g. --input-shape 1,3,32,32)."
        ) from None
    finally:
        gm.train(was_training)


def trace_model(
    model: nn.Module,
    example_inputs: Any,
    leaf_modules: Iterable[type | str] = (),
    concrete_args: dict[str, Any] | None = None,
    copy_model: bool = True,
) -> fx.GraphModule:
    """Trace ``model`` and annotate node shapes from ``example_inputs``.

    With ``copy_model`` (the default) the GraphModule owns a deep copy; without it, it
    shares the model's submodules (cheaper; for read-only analysis: nothing here writes
    to them, and the training flags are restored after shape propagation). A model that
    is already a GraphModule is re-used structurally (not re-traced).
    """
    inputs = _as_tuple(example_inputs)
    if not isinstance(model, nn.Module):
        raise TraceError(f"expected an nn.Module, got {type(model).__name__}")
    owned = copy.deepcopy(model) if copy_model else model
    if isinstance(owned, fx.GraphModule) and not leaf_modules and concrete_args is None:
        gm = owned if copy_model else fx.GraphModule(owned, copy.deepcopy(owned.graph))
    else:
        gm = symbolic_trace(owned, leaf_modules, concrete_args)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) < len(inputs):
        raise TraceError(
            f"{type(model).__name__}.forward takes {len(placeholders)} inputs but "
            f"{len(inputs)} example inputs were given"
        )
    propagate_shapes(gm, inputs)
    return gm


__all__ = ["trace_model", "symbolic_trace", "propagate_shapes", "META_SHAPE"]
