"""Shape propagation without compute: run a traced graph on meta tensors.

A meta tensor has a shape, a dtype and strides but no data, so every op costs only its
shape function: a ResNet-50 at 224 px propagates in milliseconds instead of a real forward
pass, and a model built on the meta device (a 7B LLaMA with no weights) can be analysed
at all. Sizes read inside the graph (``x.size(1)``, ``x.shape[-1] // 2``) are the same
concrete ints as in a real run.

``run_on_meta(gm, inputs, record)`` converts the example inputs to meta tensors and runs
the graph node by node, calling ``record(node, value)`` for each node. Submodules are
called on meta copies (parameters, buffers and tensor attributes on meta; the caller's
modules are never touched) and any other tensor an op meets (a constant, a tensor a
factory made on the CPU) is moved to meta first. It returns ``(True, output)``, or
``(False, reason)`` when an op cannot run on meta: a data-dependent op (``nonzero``,
boolean masking, ``.item()``, ``.tolist()``, ``unique``) or one without a meta kernel. The
caller (``trace.propagate_shapes``) then runs the example inputs for real; the reason is
logged at debug level on the ``fxprune.shapes`` logger. A model built on the meta device
(no weights) cannot run for real: there such an op is a ``TraceError``.
"""

from __future__ import annotations

import itertools
import logging
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

from .errors import TraceError

log = logging.getLogger("fxprune.shapes")

META = torch.device("meta")


def to_meta(t: torch.Tensor) -> torch.Tensor:
    """The same shape, dtype and strides on the meta device (no data is copied)."""
    if t.is_meta:
        return t
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=META)


def mutable_args(value: Any) -> Any:
    """``value`` with fx's immutable lists (how an Interpreter hands a node its list
    arguments) turned into plain lists: some callees mutate theirs (torchvision's video
    swin ``_get_window_and_shift_size``), which the traced model's own code allows."""
    if isinstance(value, fx.immutable_collections.immutable_list):
        return [mutable_args(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(mutable_args(v) for v in value)
    if isinstance(value, fx.immutable_collections.immutable_dict):
        return {k: mutable_args(v) for k, v in value.items()}
    return value


def _meta_args(value: Any) -> Any:
    """``value`` with every tensor inside tuples, lists and dicts (fx's immutable ones
    included) moved to meta; containers are rebuilt only where something changes."""
    if isinstance(value, torch.Tensor):
        return to_meta(value)
    if isinstance(value, (tuple, list)) and not isinstance(value, torch.Size):
        new = [_meta_args(v) for v in value]
        if isinstance(value, fx.immutable_collections.immutable_list):
            return new  # a plain list, as mutable_args gives
        if all(a is b for a, b in zip(new, value)):
            return value
        if isinstance(value, list):
            return new
        return type(value)(*new) if hasattr(value, "_fields") else tuple(new)
    if isinstance(value, dict):
        new_dict = {k: _meta_args(v) for k, v in value.items()}
        return value if all(new_dict[k] is v for k, v in value.items()) else new_dict
    return value


def meta_module(module: nn.Module, memo: dict[int, nn.Module]) -> nn.Module:
    """A shallow copy of ``module`` (and of its submodules) whose parameters, buffers and
    plain tensor attributes are meta tensors; the original is not modified."""
    done = memo.get(id(module))
    if done is not None:
        return done
    cls = type(module)
    new = cls.__new__(cls)
    memo[id(module)] = new
    state = dict(module.__dict__)
    state["training"] = False  # shapes as in eval mode, like the real pass
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
            state[key] = to_meta(value)
    state["_parameters"] = {
        k: None if p is None else nn.Parameter(to_meta(p), requires_grad=p.requires_grad)
        for k, p in module._parameters.items()
    }
    state["_buffers"] = {k: None if b is None else to_meta(b) for k, b in module._buffers.items()}
    state["_modules"] = {
        k: None if m is None else meta_module(m, memo) for k, m in module._modules.items()
    }
    new.__dict__.update(state)
    if isinstance(new, nn.RNNBase):  # keeps a list of its weights outside _parameters
        new._init_flat_weights()
    return new


class _Calls:
    """Runs call nodes on meta: a shape rule for the common shape-preserving and
    elementwise ops (their meta kernels are Python decompositions costing 0.2-3 ms a call),
    and a cache of every other call keyed by the op and its arguments' shapes, strides
    and dtypes (a transformer's 32 identical layers run their meta kernels once)."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self.memo: dict[int, nn.Module] = {}
        self.cache: dict[Any, Any] = {}
        self.module_keys: dict[str, Any] = {}

    def run(self, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        op, target = node.op, node.target
        if op == "call_module":
            module = self.modules[target]
            fast = module_shape(module, args, kwargs)
            if fast is not None:
                return fast
            what = self.module_keys.get(target)
            if what is None:
                what = self.module_keys[target] = _module_key(module, target)
        else:
            fast = function_shape(target, args, kwargs) if op == "call_function" else (
                method_shape(target, args, kwargs))
            if fast is not None:
                return fast
            what = (op, target)
        try:
            key = (what, _signature(args), _signature(kwargs))
            hit = self.cache.get(key, _MISSING)
        except (TypeError, _Unhashable):
            key, hit = None, _MISSING
        if hit is not _MISSING:
            return _fresh(hit)
        if op == "call_function":
            value = target(*args, **kwargs)
        elif op == "call_method":
            self_obj, *rest = args
            value = getattr(self_obj, target)(*rest, **kwargs)
        else:
            value = meta_module(self.modules[target], self.memo)(*args, **kwargs)
        if key is not None:
            self.cache[key] = _fresh(value)
        return value


_MISSING = object()


class _Unhashable(Exception):
    pass


_PLAIN = (int, float, bool, complex, str, type(None), torch.dtype, torch.device, type(...),
          torch.memory_format, torch.layout)


def _signature(value: Any) -> Any:
    """A hashable description of an argument: what a shape function can depend on."""
    if isinstance(value, torch.Tensor):
        return ("T", tuple(value.shape), value.stride(), value.dtype, value.storage_offset())
    if isinstance(value, _PLAIN):
        return (type(value), value)  # 1, 1.0 and True differ
    if isinstance(value, (tuple, list)):  # torch.Size included
        return (type(value), tuple(_signature(v) for v in value))
    if isinstance(value, slice):
        return (slice, _signature(value.start), _signature(value.stop), _signature(value.step))
    if isinstance(value, dict):
        return (dict, tuple((k, _signature(v)) for k, v in value.items()))
    raise _Unhashable


def _fresh(value: Any) -> Any:
    """A cached result as a new object: tensors re-wrapped (an in-place metadata change
    of one use, ``unsqueeze_``, must not reach the cache), containers rebuilt."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    kind = type(value)
    if kind is tuple or kind is list:
        return kind(_fresh(v) for v in value)
    return value


def _module_key(module: nn.Module, target: str) -> Any:
    """Built-in torch.nn modules without hooks are keyed by their class, settings and
    tensor shapes (so identical layers share results); any other module by its name."""
    key = _builtin_key(module)
    return ("module", target) if key is None else ("module", key)


_MODULE_INTERNALS = frozenset(nn.Module().__dict__)  # parameters, hooks, ...


def _builtin_key(module: nn.Module) -> Any:
    cls = type(module)
    if not cls.__module__.startswith("torch.nn.modules") or module._forward_hooks \
            or module._forward_pre_hooks:
        return None
    try:
        settings = tuple(sorted((k, _signature(v)) for k, v in module.__dict__.items()
                                if k not in _MODULE_INTERNALS and not isinstance(v, torch.Tensor)))
    except _Unhashable:
        return None
    tensors = tuple((k, None if t is None else _signature(t))
                    for d in (module._parameters, module._buffers) for k, t in d.items())
    children = []
    for name, child in module._modules.items():
        child_key = None if child is None else _builtin_key(child)
        if child is not None and child_key is None:
            return None
        children.append((name, child_key))
    return (cls, settings, tensors, tuple(children))


def _has_meta_tensors(gm: nn.Module, inputs: Sequence[Any]) -> bool:
    tensors = itertools.chain(gm.parameters(), gm.buffers(),
                              (t for t in inputs if isinstance(t, torch.Tensor)))
    return any(t.is_meta for t in tensors)


def _fetch(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for atom in target.split("."):
        obj = getattr(obj, atom)
    return obj


def run_on_meta(
    gm: fx.GraphModule,
    inputs: Sequence[Any],
    record: Callable[[fx.Node, Any], None],
) -> tuple[bool, Any]:
    """Run ``gm``'s graph on meta tensors, calling ``record(node, value)`` per node.

    Returns ``(True, output)`` or, when some op cannot run on meta, ``(False, reason)``
    (``reason`` names the node and the error). Runs without gradients; modules are called
    in eval mode (their copies are, the originals keep their flags)."""
    calls = _Calls(dict(gm.named_modules()))
    memo = calls.memo
    env: dict[fx.Node, Any] = {}
    args_iter = iter(_meta_args(tuple(inputs)))
    node: fx.Node | None = None

    def load(n: fx.Node) -> Any:
        return env[n]

    try:
        with torch.no_grad():
            for node in gm.graph.nodes:
                op = node.op
                if op == "placeholder":
                    try:
                        value = next(args_iter)
                    except StopIteration:  # a default value, else the real pass says it
                        if not node.args:
                            raise TypeError(f"no example input for '{node.target}'") from None
                        value = _meta_args(node.args[0])
                elif op == "get_attr":
                    value = _fetch(gm, node.target)
                    if isinstance(value, nn.Module):
                        value = meta_module(value, memo)
                    elif isinstance(value, torch.Tensor):
                        value = to_meta(value)
                elif op == "output":
                    value = fx.node.map_arg(node.args[0], load)
                else:
                    args = _meta_args(fx.node.map_arg(node.args, load))
                    kwargs = _meta_args(fx.node.map_arg(node.kwargs, load))
                    value = calls.run(node, args, kwargs)
                env[node] = value
                record(node, value)
                if op == "output":
                    return True, value
    except Exception as exc:  # noqa: BLE001 - any failure on meta means: run it for real
        where = "the first node" if node is None else f"node '{node.name}' ({node.op} {node.target})"
        text = str(exc).strip().splitlines()
        reason = f"{where}: {type(exc).__name__}: {text[0] if text else ''}"
        if _has_meta_tensors(gm, inputs):  # a real pass would compute garbage, or fail
            raise TraceError(
                f"shape propagation failed at {reason}. The model (or an input) is on the meta "
                f"device, and this op needs real data: build the model with weights to analyse it"
            ) from None
        log.debug("shape propagation on meta failed at %s; running the example inputs for real", reason)
        return False, reason
    return True, None


# -- shape rules for the common ops whose meta kernels are slow -------------------------------
# Each returns a meta tensor of the output's shape and dtype, or None to run the meta kernel
# (also whenever an argument does not fit, so that the kernel raises its own error).

_SAME_SHAPE_MODULES = frozenset({
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softmax,
    nn.LogSoftmax, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.Identity,
})
_CHANNEL_NORMS = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}  # input dims
F = torch.nn.functional
_SAME_SHAPE_FUNCTIONS = frozenset({
    F.relu, F.relu6, F.hardtanh, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
    F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.softplus, F.softmax, F.log_softmax,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, torch.relu, torch.sigmoid, torch.tanh,
    torch.softmax, torch.log_softmax, torch.rsqrt, torch.exp, torch.neg, torch.abs,
})
_SAME_SHAPE_METHODS = frozenset({
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "softmax", "log_softmax",
    "rsqrt", "exp", "neg", "abs", "clone", "float", "type_as",
})
_BINARY = frozenset({
    operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub,
    torch.mul, torch.div,
})
_BINARY_METHODS = frozenset({"add", "sub", "mul", "div"})
_INPLACE_BINARY = frozenset({operator.iadd, operator.isub, operator.imul, operator.itruediv})
_INPLACE_METHODS = frozenset({"add_", "sub_", "mul_", "div_"})


def _float_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def _no_tensors(values: Any) -> bool:
    """No tensor and no dtype (which would change the result's dtype) among ``values``."""
    return not any(isinstance(v, (torch.Tensor, torch.dtype)) for v in values)


def _like(x: torch.Tensor) -> torch.Tensor:
    if x.is_contiguous():
        return torch.empty(x.shape, dtype=x.dtype, device=META)
    return torch.empty_like(x)


def module_shape(module: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor | None:
    cls = type(module)
    if len(args) != 1 or kwargs or not _float_tensor(args[0]) or module._forward_hooks \
            or module._forward_pre_hooks:
        return None
    x = args[0]
    if cls in _SAME_SHAPE_MODULES:
        return _like(x)
    if cls in _CHANNEL_NORMS:
        ok = x.dim() in _CHANNEL_NORMS[cls] and x.shape[1] == module.num_features
        return _like(x) if ok else None
    if cls is nn.LayerNorm or cls is getattr(nn, "RMSNorm", None):
        n = len(module.normalized_shape)
        return _like(x) if tuple(x.shape[x.dim() - n:]) == tuple(module.normalized_shape) else None
    if cls is nn.GroupNorm:
        return _like(x) if x.dim() >= 2 and x.shape[1] == module.num_channels else None
    if cls in _CONVS:
        return _conv(module, x)
    if cls in _ADAPTIVE_POOLS:
        return _adaptive_pool(x, module.output_size, _ADAPTIVE_POOLS[cls])
    if cls is nn.Linear and x.dim() >= 1 and x.shape[-1] == module.in_features \
            and x.dtype == module.weight.dtype:
        return torch.empty((*x.shape[:-1], module.out_features), dtype=x.dtype, device=META)
    return None


def function_shape(target: Any, args: tuple, kwargs: dict) -> torch.Tensor | None:
    if not args:
        return None
    if target in _BINARY or target in _INPLACE_BINARY:
        return _binary(args, kwargs, inplace=target in _INPLACE_BINARY)
    if target in _SAME_SHAPE_FUNCTIONS:
        ok = _float_tensor(args[0]) and _no_tensors(args[1:]) and _no_tensors(kwargs.values())
        return _like(args[0]) if ok else None
    if target is F.layer_norm:
        return _layer_norm(args, kwargs)
    if target is torch.cat:
        return _cat(args, kwargs)
    if target in _ADAPTIVE_POOL_FUNCTIONS and len(args) == 2 and not kwargs \
            and _float_tensor(args[0]):
        return _adaptive_pool(args[0], args[1], _ADAPTIVE_POOL_FUNCTIONS[target])
    return None


def method_shape(target: str, args: tuple, kwargs: dict) -> torch.Tensor | None:
    if not args:
        return None
    if target in _BINARY_METHODS or target in _INPLACE_METHODS:
        return _binary(args, kwargs, inplace=target in _INPLACE_METHODS)
    if target in _SAME_SHAPE_METHODS and _float_tensor(args[0]) and not kwargs:
        if target == "type_as":
            ok = len(args) == 2 and _float_tensor(args[1]) and args[1].dtype == args[0].dtype
        else:
            ok = _no_tensors(args[1:]) and (target != "float" or args[0].dtype == torch.float32)
        return _like(args[0]) if ok else None
    return None


def _binary(args: tuple, kwargs: dict, inplace: bool) -> torch.Tensor | None:
    if len(args) != 2 or any(k != "alpha" for k in kwargs):
        return None
    a, b = args
    tensors = [v for v in (a, b) if isinstance(v, torch.Tensor)]
    if not tensors or not all(isinstance(v, (torch.Tensor, int, float)) for v in (a, b)):
        return None
    if not all(t.is_floating_point() and t.is_contiguous() for t in tensors):
        return None
    dtype = torch.result_type(a, b)
    if not dtype.is_floating_point:
        return None
    sa = tuple(a.shape) if isinstance(a, torch.Tensor) else ()
    sb = tuple(b.shape) if isinstance(b, torch.Tensor) else ()
    try:
        shape = sa if sa == sb else tuple(torch.broadcast_shapes(sa, sb))
    except RuntimeError:
        return None
    if inplace:
        ok = isinstance(a, torch.Tensor) and shape == sa and dtype == a.dtype
        return a if ok else None
    return torch.empty(shape, dtype=dtype, device=META)


_CONVS = frozenset({nn.Conv1d, nn.Conv2d, nn.Conv3d})
_ADAPTIVE_POOLS = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
                   nn.AdaptiveMaxPool1d: 0, nn.AdaptiveMaxPool2d: 0, nn.AdaptiveMaxPool3d: 0}
_ADAPTIVE_POOL_FUNCTIONS = {F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2,
                            F.adaptive_avg_pool3d: 3}


def _conv(conv: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    n = len(conv.kernel_size)
    if x.dim() != n + 2 or x.shape[1] != conv.in_channels or x.dtype != conv.weight.dtype \
            or not x.is_contiguous():
        return None
    out = [x.shape[0], conv.out_channels]
    for d in range(n):
        size = x.shape[2 + d]
        if conv.padding == "same":
            out.append(size)
            continue
        pad = 0 if conv.padding == "valid" else conv.padding[d]
        span = conv.dilation[d] * (conv.kernel_size[d] - 1) + 1
        if size + 2 * pad < span:
            return None
        out.append((size + 2 * pad - span) // conv.stride[d] + 1)
    return torch.empty(out, dtype=x.dtype, device=META)


def _adaptive_pool(x: torch.Tensor, size: Any, n: int) -> torch.Tensor | None:
    """Adaptive pooling to ``size`` over the last ``n`` dims (max pooling, n=0: left to
    the kernel, it returns indices too when asked)."""
    if n == 0 or x.dim() != n + 2 or not x.is_contiguous() or 0 in x.shape:
        return None
    sizes = (size,) * n if isinstance(size, int) else tuple(size)
    if len(sizes) != n or not all(s is None or (isinstance(s, int) and s > 0) for s in sizes):
        return None
    spatial = [x.shape[2 + d] if s is None else s for d, s in enumerate(sizes)]
    return torch.empty((*x.shape[:2], *spatial), dtype=x.dtype, device=META)


def _cat(args: tuple, kwargs: dict) -> torch.Tensor | None:
    tensors = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if len(args) > 2 or any(k != "dim" for k in kwargs) or not isinstance(dim, int) \
            or not isinstance(tensors, (tuple, list)) or not tensors:
        return None
    first = tensors[0]
    if not all(isinstance(t, torch.Tensor) and t.dtype == first.dtype and t.dim() == first.dim()
               and t.is_contiguous() for t in tensors) or first.dim() == 0:
        return None
    d = dim + first.dim() if dim < 0 else dim
    if not 0 <= d < first.dim():
        return None
    rest = [tuple(t.shape[:d]) + tuple(t.shape[d + 1:]) for t in tensors]
    if any(r != rest[0] for r in rest):
        return None
    shape = list(first.shape)
    shape[d] = sum(t.shape[d] for t in tensors)
    return torch.empty(shape, dtype=first.dtype, device=META)


def _layer_norm(args: tuple, kwargs: dict) -> torch.Tensor | None:
    x = args[0]
    shape = args[1] if len(args) > 1 else kwargs.get("normalized_shape")
    if not _float_tensor(x) or not isinstance(shape, (tuple, list)):
        return None
    shape = tuple(shape)
    if tuple(x.shape[x.dim() - len(shape):]) != shape:
        return None
    for w in (*args[2:4], kwargs.get("weight"), kwargs.get("bias")):
        if isinstance(w, torch.Tensor) and tuple(w.shape) != shape:
            return None
    return _like(x)
