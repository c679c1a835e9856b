"""Tracing: ``torch.fx.symbolic_trace`` plus shape propagation on example inputs.

``trace_model`` returns a GraphModule that owns a deep copy of the user's modules (so
nothing later in the pipeline can touch the caller's model) and whose nodes carry
``node.meta["fxprune_shape"]``: the output shape (a tuple of ints) for tensor outputs,
a tuple/list of those for tuple outputs, ``None`` for anything else.

Graceful degradation
--------------------
torch.fx gives up on a whole model when one line anywhere in it cannot be traced. Here:

* **Automatic leaves.** When tracing fails inside a submodule, the innermost module on
  the call stack at the failure (the smallest failing one) becomes a *leaf*: it is
  called as one opaque ``call_module`` node and tracing starts again. No op rule knows
  such a module, so the channel graph freezes every channel at its boundary (its
  inputs and outputs are always kept) and prunes everything around it. Each leaf is
  recorded with the reason and the user's source line in ``gm.meta["fxprune_leaves"]``
  (plain dicts, so a pickled model loads without fxprune); ``leaves_of(gm)`` reads them.
* **Custom autograd functions stay calls.** ``MyFn.apply(x)`` would otherwise be inlined
  (its ``forward`` traced op by op, its ``backward`` lost: a straight-through quantiser
  then has zero gradients). It becomes a call of an ``AutogradFunctionCall`` module, a
  leaf like the above, so the slim model uses the user's ``backward``. Pickled, that
  module turns into a plain ``nn.Module`` calling ``MyFn.apply``: a saved slim model loads
  with torch and the user's module, without fxprune (``AutogradFunctionCall``).
* **Iterating a chunk.** ``list(x.chunk(2, 1))`` (YOLOv8's C2f) iterates a proxy, which
  torch.fx refuses; the number of pieces is known from the call, so it is allowed.
* **An untraceable root** (a detector's ``forward`` with data-dependent control flow)
  raises ``UntraceableRoot``; ``find_traceable_parts`` then runs the model once and
  returns its largest traceable submodules with the inputs they were called with, so a
  higher layer can prune those parts and keep the rest of the model as it is.

A failure that cannot be worked around is a ``TraceError`` whose one line names the
module that was being traced and the source line that broke, and suggests the fixes.
"""

from __future__ import annotations

import copy
import inspect
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import fx, nn

from .capture import capture_instead
from .errors import TraceError
from .shapes import run_on_meta

META_SHAPE = "fxprune_shape"
META_LEAVES = "fxprune_leaves"  # key in GraphModule.meta: list of Leaf dicts

MAX_AUTOMATIC_LEAVES = 64  # re-traces are cheap, but a runaway loop must end


class UntraceableRoot(TraceError):
    """The model's own ``forward`` cannot be traced (not one of its submodules)."""


@dataclass(frozen=True)
class Leaf:
    """A module kept whole: called as one opaque node, its boundary channels kept."""

    qualname: str  # module path in the traced model
    type_name: str  # class of the module (or of the autograd Function)
    kind: str  # "automatic" (tracing failed inside it), "user" (leaf_modules), "autograd"
    reason: str  # one line: why it is a leaf
    where: str  # the user's source line that broke, "" if not applicable

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def __str__(self) -> str:
        at = f" at {self.where}" if self.where else ""
        return f"{self.qualname} ({self.type_name}): {self.reason}{at}"


def leaves_of(gm: nn.Module) -> list[Leaf]:
    """The leaves recorded when ``gm`` was traced (empty for other modules)."""
    meta = getattr(gm, "meta", None)
    entries = meta.get(META_LEAVES) if isinstance(meta, dict) else None
    if entries is None:  # GraphModule pickling drops .meta but keeps plain attributes
        entries = getattr(gm, META_LEAVES, None) or []
    return [Leaf(**entry) for entry in entries]


# GraphModule.__deepcopy__ re-sets the attributes named in this meta entry (torch.fx's
# own mechanism; the name is private in torch, hence the fallback)
_PRESERVED = getattr(fx.graph_module, "_USER_PRESERVED_ATTRIBUTES_KEY", "_user_preserved_attributes")


def record_leaves(gm: fx.GraphModule, leaves: Iterable[Leaf]) -> None:
    """Store ``leaves`` on ``gm`` as a plain attribute, which pickling keeps, and ask
    ``copy.deepcopy`` (which ``slim`` uses) to keep it too."""
    entries = [leaf.to_dict() for leaf in leaves]
    gm.meta[META_LEAVES] = entries
    gm.meta.setdefault(_PRESERVED, {})[META_LEAVES] = entries
    setattr(gm, META_LEAVES, entries)


class AutogradFunctionCall(nn.Module):
    """One call of a custom ``torch.autograd.Function``, kept opaque so that its own
    ``backward`` runs (tracing would inline ``forward`` and drop ``backward``).

    Pickled (``torch.save``, ``slim.pt``), it becomes ``portable()``: a plain
    ``torch.nn.Module`` whose ``forward`` is the user's ``Function.apply``, so a saved slim
    model loads with torch and the user's module alone, without fxprune. (Not a
    GraphModule: unpickling re-traces a GraphModule's code, which would inline ``apply``
    again; the outer GraphModule's re-trace keeps every submodule call as a call.)
    Copies keep the class.
    """

    def __init__(self, function: type):
        super().__init__()
        self.function = function

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.function.apply(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.function.__module__}.{self.function.__qualname__}"

    def portable(self) -> nn.Module:
        """The same call as a module of torch's own class (``forward`` is ``apply``)."""
        module = nn.Module()
        module.forward = self.function.apply  # pickled as getattr(the user's Function, "apply")
        return module.train(self.training)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # protocol 1's form, (copyreg's reconstructor, (nn.Module, object, None), state):
        # protocol 2's __newobj__ form must name the pickled object's own class
        return self.portable().__reduce_ex__(1)

    def __copy__(self) -> AutogradFunctionCall:
        return AutogradFunctionCall(self.function).train(self.training)

    def __deepcopy__(self, memo: dict) -> AutogradFunctionCall:
        return self.__copy__()


def _contains_proxy(args: Any, kwargs: Any) -> bool:
    found = False

    def visit(x: Any) -> Any:
        nonlocal found
        found = found or isinstance(x, fx.Proxy)
        return x

    fx.node.map_aggregate((args, kwargs), visit)
    return found


class _Proxy(fx.Proxy):
    """A proxy whose length is known when it is the result of ``chunk(n)`` and the like
    (``list(proxy)`` asks for the length before iterating)."""

    def __len__(self) -> int:
        count = _known_length(self.node)
        return super().__len__() if count is None else count


class _Tracer(fx.Tracer):
    """A tracer that treats user-chosen module types / qualified names as leaves,
    remembers which module it was inside (so errors can name it), keeps custom autograd
    functions as calls, and allows iterating ``chunk``/``split`` results."""

    # defaults: GraphModule pickling re-creates the tracer class with no arguments
    def __init__(self, leaf_types: tuple[type, ...] = (), leaf_names: frozenset[str] = frozenset()):
        super().__init__()
        self.leaf_types = leaf_types
        self.leaf_names = leaf_names
        self.fxprune_stack: list[str] = []
        self.autograd_calls: dict[str, AutogradFunctionCall] = {}

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

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def iter(self, obj: fx.Proxy) -> Iterator:
        count = _known_length(obj.node)
        if count is None:
            return super().iter(obj)
        return iter([obj[i] for i in range(count)])

    def trace(self, root, concrete_args=None):
        function_cls = torch.autograd.Function
        original = function_cls.__dict__["apply"]
        tracer = self

        def apply(cls, *args, **kwargs):
            if _contains_proxy(args, kwargs):
                return tracer.autograd_call(cls, args, kwargs)
            return original.__get__(None, cls)(*args, **kwargs)

        function_cls.apply = classmethod(apply)
        try:
            return super().trace(root, concrete_args)
        finally:
            function_cls.apply = original

    def autograd_call(self, function: type, args: tuple, kwargs: dict) -> fx.Proxy:
        target = f"autograd_{function.__name__}_{len(self.autograd_calls)}"
        self.autograd_calls[target] = AutogradFunctionCall(function)
        return self.create_proxy("call_module", target, args, kwargs)


def _known_length(node: fx.Node) -> int | None:
    """How many pieces ``chunk(n)`` / ``split([sizes])`` / ``tensor_split(n)`` return."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", None)
    if node.op not in ("call_method", "call_function") or name not in ("chunk", "split", "tensor_split"):
        return None
    arg = node.args[1] if len(node.args) > 1 else node.kwargs.get("chunks", node.kwargs.get(
        "split_size_or_sections", node.kwargs.get("split_size", node.kwargs.get("sections"))))
    if name in ("chunk", "tensor_split") and isinstance(arg, int):
        return arg  # chunk(n) on a dim of size >= n gives n pieces; shape propagation checks
    if isinstance(arg, (list, tuple)) and all(isinstance(x, int) for x in arg):
        return len(arg) + (1 if name == "tensor_split" else 0)
    return None


def _user_frame(exc: BaseException) -> str:
    """The innermost traceback frame outside torch itself: the user's line that broke."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        fname = frame.filename.replace("\\", "/")
        if "/torch/" not in fname and "/fxprune/" not in fname:
            return f"{fname}:{frame.lineno} ({frame.line.strip() if frame.line else '?'})"
    return "unknown location"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def as_input_tuple(example_inputs: Any) -> tuple:
    """Example inputs as a tuple: a single tensor becomes a 1-tuple."""
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
    automatic_leaves: bool = True,
) -> fx.GraphModule:
    """Trace ``model`` (which is NOT copied: callers copy first) into a GraphModule.

    With ``automatic_leaves`` a submodule that cannot be traced becomes a leaf (see the
    module docstring); the root failing raises ``UntraceableRoot``.
    """
    leaf_modules = tuple(leaf_modules)
    leaf_types = tuple(x for x in leaf_modules if isinstance(x, type))
    leaf_names = frozenset(x for x in leaf_modules if isinstance(x, str))
    automatic: dict[str, Leaf] = {}
    while True:
        tracer = _Tracer(leaf_types, leaf_names | frozenset(automatic))
        try:
            graph = tracer.trace(model, concrete_args=concrete_args)
            break
        except Exception as exc:  # torch.fx raises many types; all mean "cannot trace"
            failing = [q for q in tracer.fxprune_stack if q not in tracer.leaf_names]
            if not automatic_leaves or not failing or len(automatic) >= MAX_AUTOMATIC_LEAVES:
                raise _trace_error(model, failing[-1] if failing else "", exc) from exc
            where = failing[-1]
            automatic[where] = Leaf(where, type(model.get_submodule(where)).__name__, "automatic",
                                    f"torch.fx cannot trace it ({_first_line(exc)})", _user_frame(exc))
    # forget our tracer class: a pickled slim model must load with torch alone
    graph._tracer_cls = None
    gm = _graph_module(tracer, graph, type(model).__name__)
    gm._tracer_cls = None
    record_leaves(gm, _leaves(gm, tracer, automatic))
    return gm


def _trace_error(model: nn.Module, where: str, exc: BaseException) -> TraceError:
    owner = type(model.get_submodule(where)).__name__ if where else type(model).__name__
    if not where:
        return UntraceableRoot(
            f"torch.fx could not trace the model's own forward ({owner}) at {_user_frame(exc)}: "
            f"{_first_line(exc)}. Fix: move that code into a submodule, which then becomes a "
            "leaf (its channels are kept), or from Python pass trace_model(..., concrete_args=...)."
        )
    return TraceError(
        f"torch.fx could not trace module '{where}' ({owner}) at {_user_frame(exc)}: "
        f"{_first_line(exc)}. Fix: mark it as a leaf module (--leaf {where}, or "
        f"leaf_modules=['{where}'] in Python)."
    )


def _graph_module(tracer: _Tracer, graph: fx.Graph, name: str) -> fx.GraphModule:
    if not tracer.autograd_calls:
        return fx.GraphModule(tracer.root, graph, name)
    # the autograd-call modules are not in the user's model (which must stay untouched):
    # build from a dict of every module/attribute the graph refers to
    attributes: dict[str, Any] = {}
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr"):
            attributes[node.target] = tracer.autograd_calls.get(node.target) or _fetch(tracer.root, node.target)
    gm = fx.GraphModule(attributes, graph, name)
    gm.train(tracer.root.training)
    return gm


def _fetch(root: nn.Module, target: str) -> Any:
    value: Any = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _leaves(gm: fx.GraphModule, tracer: _Tracer, automatic: dict[str, Leaf]) -> list[Leaf]:
    """Every opaque module call in the final graph, in graph order."""
    out: list[Leaf] = []
    seen: set[str] = set()
    for node in gm.graph.nodes:
        target = node.target
        if node.op != "call_module" or target in seen:
            continue
        seen.add(target)
        module = gm.get_submodule(target)
        if isinstance(module, AutogradFunctionCall):
            out.append(Leaf(target, module.function.__qualname__, "autograd",
                            "custom torch.autograd.Function: kept as one call so its backward runs", ""))
        elif target in automatic:
            out.append(automatic[target])
        elif target in tracer.leaf_names or (tracer.leaf_types and isinstance(module, tracer.leaf_types)):
            out.append(Leaf(target, type(module).__name__, "user", "marked as a leaf module", ""))
    return out


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once and stores every node's output shape in ``node.meta``."""

    current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        result = super().run_node(n)
        n.meta[META_SHAPE] = _shape_of(result)
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


def propagate_shapes(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor],
                     meta: bool = True) -> Any:
    """Annotate shapes by running ``gm`` in eval mode without gradients, on meta tensors
    (no compute, ``fxprune.shapes``) unless an op cannot run there or ``meta=False``, else
    for real; returns the output (meta tensors when run on meta)."""
    if meta:
        done, output = run_on_meta(gm, example_inputs,
                                   lambda n, v: n.meta.update({META_SHAPE: _shape_of(v)}))
        if done:
            return output
    was_training = gm.training
    gm.eval()
    recorder = _ShapeRecorder(gm)
    try:
        with torch.no_grad():
            return recorder.run(*example_inputs)
    except Exception as exc:  # noqa: BLE001 - whatever the user's model raised: one line
        n = recorder.current
        where = f"node '{n.name}' ({n.op} {n.target})" if n is not None else "the first node"
        shapes = ", ".join(str(tuple(t.shape)) for t in example_inputs if isinstance(t, torch.Tensor))
        raise TraceError(
            f"running example inputs of shape {shapes} failed at {where}: "
            f"{_first_line(exc)}. Check the input shape (e.g. --input-shape 1,3,32,32)."
        ) from None
    finally:
        gm.train(was_training)


def unused_defaults(model: nn.Module, given: int) -> dict[str, Any] | None:
    """``forward`` parameters after the ``given`` positional example inputs that have a
    default, with that default: traced as constants (``mask=None`` takes its ``None``
    branch instead of tracing ``mask.view(...)`` on a proxy that is never given)."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                  inspect.Parameter.KEYWORD_ONLY)
    defaults = {p.name: p.default for p in parameters[given:]
                if p.kind in positional and p.default is not inspect.Parameter.empty}
    return defaults or None


def trace_model(
    model: nn.Module,
    example_inputs: Any,
    leaf_modules: Iterable[type | str] = (),
    concrete_args: dict[str, Any] | None = None,
    copy_model: bool = True,
    automatic_leaves: bool = True,
) -> fx.GraphModule:
    """Trace ``model`` and annotate node shapes from ``example_inputs``.

    With ``copy_model`` (the default) the GraphModule owns a deep copy; without it, it
    shares the model's submodules (cheaper; for read-only analysis: nothing here writes
    to them, and the training flags are restored after shape propagation). A model that
    is already a GraphModule is re-used structurally (not re-traced). Submodules that
    cannot be traced become leaves (``leaves_of(gm)``) unless ``automatic_leaves=False``.
    """
    inputs = as_input_tuple(example_inputs)
    if not isinstance(model, nn.Module):
        raise TraceError(f"expected an nn.Module, got {type(model).__name__}")
    leaf_modules = tuple(leaf_modules)
    if isinstance(model, fx.GraphModule) and not leaf_modules and concrete_args is None:
        owned = copy.deepcopy(model) if copy_model else model
        gm = owned if copy_model else fx.GraphModule(owned, copy.deepcopy(owned.graph))
        record_leaves(gm, leaves_of(model))
    else:
        owned = copy.deepcopy(model) if copy_model else model
        if concrete_args is None:
            concrete_args = unused_defaults(model, len(inputs))
        try:
            gm = symbolic_trace(owned, leaf_modules, concrete_args, automatic_leaves)
        except UntraceableRoot as root_error:  # HF transformers: one TorchDynamo graph instead
            gm = capture_instead(owned, inputs, root_error)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) < len(inputs):
        raise TraceError(
            f"{type(model).__name__}.forward takes {len(placeholders)} inputs but "
            f"{len(inputs)} example inputs were given"
        )
    propagate_shapes(gm, inputs)
    return gm


# -- untraceable roots: find the parts that do trace ---------------------------------------


@dataclass
class TraceablePart:
    """A submodule that traces on its own, with the inputs it was called with."""

    qualname: str
    gm: fx.GraphModule  # traced and shape-annotated (first call); shares the model's modules
    inputs: tuple  # the positional tensors of its first call
    calls: list[tuple] = field(default_factory=list)  # the inputs of every call, first included


def capture_module_inputs(model: nn.Module, example_inputs: Any) -> dict[str, list[tuple]]:
    """Run ``model`` once (eval, no grad) and record, for every submodule, the positional
    arguments of each call (kwargs calls are recorded as ``None``: not reproducible)."""
    inputs = as_input_tuple(example_inputs)
    calls: dict[str, list[Any]] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_module, args, kwargs, name=name):
            # a copy: the model may later change the tensor it passed in place
            calls.setdefault(name, []).append(None if kwargs else tuple(
                a.clone() if isinstance(a, torch.Tensor) else a for a in args))

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*inputs)
    except Exception as exc:
        raise TraceError(f"running {type(model).__name__} on the example inputs failed: "
                         f"{_first_line(exc)}. Check the input shape.") from exc
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return calls


def find_traceable_parts(
    model: nn.Module, example_inputs: Any, leaf_modules: Iterable[type | str] = (),
    calls: dict[str, list[tuple]] | None = None,
    descend: Callable[[TraceablePart], bool] | None = None,
) -> tuple[list[TraceablePart], list[tuple[str, str]]]:
    """Largest submodules of ``model`` that trace on their own, outermost first.

    Walks down from the root: a child that traces (possibly with automatic leaves
    inside) is a part; one whose own forward does not trace is descended into. A module
    called with keyword arguments, non-tensor arguments, or inputs of another rank on a
    later call is skipped; ``TraceablePart.calls`` lists every call's inputs, so a slim
    copy can be checked against each of them. Returns the parts
    and ``(qualname, reason)`` for each skipped module that has parameters. ``calls``:
    what ``capture_module_inputs`` recorded, if the caller has it already. ``descend``: a
    traced submodule for which it answers True is not a part; its children are tried
    instead (a container whose automatic leaves hold everything prunable).
    """
    leaf_modules = tuple(leaf_modules)
    if calls is None:
        calls = capture_module_inputs(model, example_inputs)
    parts: list[TraceablePart] = []
    skipped: list[tuple[str, str]] = []
    pending = [(name, child) for name, child in model.named_children()]
    while pending:
        name, module = pending.pop(0)
        if not any(True for _ in module.parameters()):
            continue
        inputs, why_not = _single_call_inputs(calls.get(name))
        part = None
        root_fails = True
        if inputs is not None:
            inner_leaves = [x if isinstance(x, type) else x[len(name) + 1:] for x in leaf_modules
                            if isinstance(x, type) or x.startswith(name + ".")]
            try:
                gm = trace_model(module, inputs, inner_leaves, copy_model=False)
                part = TraceablePart(name, gm, inputs, list(calls[name]))
            except UntraceableRoot as exc:
                why_not = str(exc).split(". Fix:")[0]
            except TraceError as exc:
                why_not, root_fails = str(exc).split(". Fix:")[0], False
        children = [(f"{name}.{child_name}", child) for child_name, child in module.named_children()]
        if part is not None and children and descend is not None and descend(part):
            pending[0:0] = children
            continue
        if part is not None:
            parts.append(part)
            continue
        if root_fails and children:
            pending[0:0] = children
        else:
            skipped.append((name, why_not or "not traceable"))
    return parts, skipped


def _single_call_inputs(recorded: list[Any] | None) -> tuple[tuple | None, str]:
    if not recorded:
        return None, "never called by the model's forward"
    if any(args is None for args in recorded):
        return None, "called with keyword arguments"
    first = recorded[0]
    if not first or not all(isinstance(a, torch.Tensor) for a in first):
        return None, "called with non-tensor arguments"
    # calls with other sizes are fine (an FPN head on every level): the slim part is
    # checked on each of them; a different number or rank of inputs is not
    signature = [a.dim() for a in first]
    if any([getattr(a, "ndim", -1) for a in args] != signature for args in recorded[1:]):
        return None, f"called {len(recorded)} times with inputs of different ranks"
    return first, ""


__all__ = [
    "META_LEAVES",
    "META_SHAPE",
    "AutogradFunctionCall",
    "Leaf",
    "TraceablePart",
    "UntraceableRoot",
    "as_input_tuple",
    "capture_module_inputs",
    "find_traceable_parts",
    "leaves_of",
    "propagate_shapes",
    "record_leaves",
    "symbolic_trace",
    "tensor_leaves",
    "trace_model",
]
