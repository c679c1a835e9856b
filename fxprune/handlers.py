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

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .graph import Builder, Labels, iter_arrays, plain_labels
from .trace import META_SHAPE


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
            rule = FUNCTION_HANDLERS.get(f"{getattr(t, '__module__', '')}.{getattr(t, '__qualname__', '')}")
        return rule
    if node.op == "call_method":
        return METHOD_HANDLERS.get(node.target)
    return None


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
            return None  # pure Python arithmetic on sizes and the like
        return b.unhandled_op(node, "no handler registered")
    return rule.propagate(b, node)


# ----------------------------------------------------------------------------- helpers
def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def out_shape(node: fx.Node) -> tuple | None:
    s = node.meta.get(META_SHAPE)
    return s if isinstance(s, tuple) and all(isinstance(x, int) for x in s) else None


def merge_elementwise(b: Builder, node: fx.Node, operands: list[fx.Node], shape: tuple) -> Labels:
    """Broadcasting elementwise op: operand dims that line up are cut together."""
    pairs = [(b.shape(op), b.labels(op)) for op in operands]
    return merge_broadcast(b, node, [(s, lab) for s, lab in pairs if s is not None and lab is not None],
                           shape)


def merge_broadcast(b: Builder, node: fx.Node, operands: list[tuple[tuple, Labels]],
                    shape: tuple) -> Labels:
    """Union the labels of (shape, labels) operands along every non-broadcast dim of
    ``shape``; a channel dim meeting a plain dim of the same size is frozen."""
    n = len(shape)
    out: Labels = [None] * n
    for d in range(n):
        arrays, plain = [], False
        for s, lab in operands:
            k = d - (n - len(s))
            if k < 0 or (s[k] == 1 and shape[d] != 1):
                continue
            if lab[k] is None:
                plain = True
            else:
                arrays.append(lab[k])
        if arrays:
            for a in arrays[1:]:
                b.union(arrays[0], a)
            if plain:
                b.freeze(arrays[0], f"meets a non-channel dimension at node '{node.name}'")
            out[d] = arrays[0]
    return out


def elementwise(b: Builder, node: fx.Node) -> Labels | None:
    shape = out_shape(node)
    if shape is None:
        return b.unhandled_op(node, "elementwise op with a non-tensor output")
    return merge_elementwise(b, node, b.tensor_args(node), shape)


def _spatial_passthrough(b: Builder, node: fx.Node, x: fx.Node, spatial: int) -> Labels:
    """Ops acting on the trailing ``spatial`` dims (pooling, interpolation)."""
    xl = b.labels(x)
    shape = out_shape(node)
    if xl is None or shape is None:
        return b.unhandled_op(node, "spatial op on a non-tensor")
    lead = len(shape) - spatial
    for arr in xl[lead:]:
        b.freeze(arr, f"spatial op '{node.name}' acts on a channel dimension")
    return list(xl[:lead]) + [None] * spatial


# ------------------------------------------------------------------ elementwise family
_ELEMENTWISE_FUNCTIONS = [
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.neg,
    operator.pos, operator.abs, operator.pow, operator.mod, operator.eq, operator.ne,
    operator.lt, operator.le, operator.gt, operator.ge, operator.and_, operator.or_,
    torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div,
    torch.divide, torch.true_divide, torch.sigmoid, torch.tanh, torch.relu, torch.relu_,
    torch.exp, torch.log, torch.sqrt, torch.rsqrt, torch.abs, torch.neg, torch.clamp,
    torch.clip, torch.where, torch.maximum, torch.minimum, torch.pow, torch.erf,
    torch.sin, torch.cos, torch.square, torch.reciprocal, torch.sign, torch.addcmul,
    torch.lerp, torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like,
    torch.rand_like, torch.randn_like, torch.nan_to_num, torch.logical_and,
    torch.logical_or, torch.logical_not, torch.isfinite, torch.masked_fill,
    F.relu, F.relu6, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.sigmoid,
    F.tanh, F.leaky_relu, F.elu, F.selu, F.celu, F.softplus, F.hardtanh, F.dropout,
    F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.logsigmoid, F.threshold,
    F.softsign, F.tanhshrink, F.relu_, F.elu_, F.leaky_relu_, F.hardtanh_,
]
_ELEMENTWISE_METHODS = [
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "truediv", "relu",
    "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "exp_", "log", "clamp",
    "clamp_", "clamp_min", "clamp_max", "clip", "abs", "neg", "pow", "sqrt", "rsqrt",
    "float", "half", "double", "bfloat16", "to", "type", "type_as", "contiguous",
    "clone", "detach", "masked_fill", "masked_fill_", "sign", "square", "reciprocal",
    "erf", "zero_", "fill_", "addcmul", "lerp", "__add__", "__mul__", "__sub__",
    "__truediv__", "__radd__", "__rmul__", "sin", "cos", "requires_grad_",
    "hardtanh", "hardtanh_", "sigmoid", "nan_to_num", "cpu", "cuda",
]
register_function(*_ELEMENTWISE_FUNCTIONS,
                  "torchvision.ops.stochastic_depth.stochastic_depth")(elementwise)
register_method(*dict.fromkeys(_ELEMENTWISE_METHODS))(elementwise)


_PASSTHROUGH_MODULES = [
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
    nn.Hardsigmoid, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus,
    nn.Hardtanh, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.Identity, nn.LogSigmoid, nn.Softsign, nn.Tanhshrink, nn.Threshold,
    "torchvision.ops.stochastic_depth.StochasticDepth",
]


class PassThrough(ModuleHandler):
    def propagate(self, b, node, module, name):
        return elementwise(b, node)


register_module(*_PASSTHROUGH_MODULES)(PassThrough)


# ---------------------------------------------------------------- spatial family
class Spatial(ModuleHandler):
    """Pooling / upsampling / padding modules: channels pass, trailing dims are plain."""

    def propagate(self, b, node, module, name):
        cls = type(module).__name__
        spatial = int(cls[-2]) if cls[-2].isdigit() else 2
        if isinstance(module, nn.Upsample):
            spatial = len(out_shape(node) or ()) - 2
        return _spatial_passthrough(b, node, node.args[0], spatial)


register_module(
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d,
    nn.LPPool2d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
    nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
)(Spatial)


def _functional_spatial(spatial: int):
    def propagate(b, node):
        return _spatial_passthrough(b, node, node.args[0], spatial)

    return propagate


for _k, _fns in {
    1: [F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d,
        torch.max_pool1d, torch.avg_pool1d, torch.adaptive_avg_pool1d],
    2: [F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
        F.lp_pool2d, torch.max_pool2d],
    3: [F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d, F.adaptive_max_pool3d],
}.items():
    register_function(*_fns)(_functional_spatial(_k))


@register_function(F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear)
def _interpolate(b, node):
    shape = out_shape(node)
    return _spatial_passthrough(b, node, node.args[0], len(shape) - 2 if shape else 0)


@register_function(F.pad, torch.constant_pad_nd)
def _pad(b, node):
    x = node.args[0]
    pad = arg(node, 1, "pad")
    xl = b.labels(x)
    if xl is None or not isinstance(pad, (tuple, list)) or not all(isinstance(p, int) for p in pad):
        return b.unhandled_op(node, "pad with non-constant amounts")
    out = list(xl)
    n = len(xl)
    for i in range(len(pad) // 2):
        d = n - 1 - i
        if pad[2 * i] or pad[2 * i + 1]:
            b.freeze(out[d], f"pad at node '{node.name}' pads a channel dimension")
            out[d] = None
    return out


# ------------------------------------------------------------------ conv / linear
def _channel_dim(ndim: int, spatial: int) -> int:
    return ndim - spatial - 1


def _couple_groups(b: Builder, in_atoms: np.ndarray, out_atoms: np.ndarray, groups: int) -> None:
    """Grouped conv: each conv group (its input and output channels) is one unit, so
    pruning removes whole groups and ``groups`` shrinks; depthwise is the case
    ``in_channels == groups``, with any channel multiplier."""
    ins = in_atoms.reshape(groups, -1)
    outs = out_atoms.reshape(groups, -1)
    head = ins[:, :1]
    b.union(np.repeat(head, ins.shape[1], axis=1).ravel(), ins.ravel())
    b.union(np.repeat(head, outs.shape[1], axis=1).ravel(), outs.ravel())


def _slice_param(module: nn.Module, name: str, dim: int, index: np.ndarray) -> None:
    t = getattr(module, name, None)
    if t is None:
        return
    idx = torch.as_tensor(index, dtype=torch.long, device=t.device)
    new = torch.index_select(t.data, dim, idx).clone()
    if isinstance(t, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=t.requires_grad))
    else:
        module._buffers[name] = new


def _kept_groups(keep_in: np.ndarray, per_group: int, groups: int) -> np.ndarray:
    kept = np.unique(keep_in // per_group)
    expect = (kept[:, None] * per_group + np.arange(per_group)).ravel()
    if len(expect) != len(keep_in) or not np.array_equal(np.sort(keep_in), expect):
        raise AssertionError("grouped conv: kept input channels are not whole groups")
    return kept


class _ConvBase(ModuleHandler):
    transposed = False

    def propagate(self, b, node, m, name):
        x = node.args[0]
        xl, shape = b.labels(x), out_shape(node)
        spatial = len(m.kernel_size)
        ch = _channel_dim(len(shape), spatial)
        out_atoms = b.module_space(name, "out_channels", m.out_channels, producer=True)
        in_atoms = b.module_space(name, "in_channels", m.in_channels, producer=False)
        b.tie(in_atoms, xl[ch], f"{name}.in_channels")
        if m.groups > 1:
            _couple_groups(b, in_atoms, out_atoms, m.groups)
        for arr in xl[ch + 1:]:
            b.freeze(arr, f"conv '{name}' reads a channel dimension as spatial")
        out: Labels = list(xl[:ch]) + [out_atoms] + [None] * spatial
        return out

    def slice_(self, m, keep):
        keep_out = keep.get("out_channels", np.arange(m.out_channels))
        keep_in = keep.get("in_channels", np.arange(m.in_channels))
        in_dim, out_dim = (0, 1) if self.transposed else (1, 0)
        if m.groups == 1:
            _slice_param(m, "weight", out_dim, keep_out)
            _slice_param(m, "weight", in_dim, keep_in)
        else:
            kept = _kept_groups(keep_in, m.in_channels // m.groups, m.groups)
            if self.transposed:
                _slice_param(m, "weight", 0, keep_in)
            else:
                _slice_param(m, "weight", 0, keep_out)
            m.groups = int(len(kept))
        _slice_param(m, "bias", 0, keep_out)
        m.in_channels, m.out_channels = int(len(keep_in)), int(len(keep_out))


@register_module(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class Conv(_ConvBase):
    pass


@register_module(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
class ConvTranspose(_ConvBase):
    transposed = True


@register_module(nn.Linear)
class Linear(ModuleHandler):
    def propagate(self, b, node, m, name):
        xl = b.labels(node.args[0])
        out_atoms = b.module_space(name, "out_features", m.out_features, producer=True)
        in_atoms = b.module_space(name, "in_features", m.in_features, producer=False)
        b.tie(in_atoms, xl[-1], f"{name}.in_features")
        return list(xl[:-1]) + [out_atoms]

    def slice_(self, m, keep):
        if "out_features" in keep:
            _slice_param(m, "weight", 0, keep["out_features"])
            _slice_param(m, "bias", 0, keep["out_features"])
            m.out_features = int(len(keep["out_features"]))
        if "in_features" in keep:
            _slice_param(m, "weight", 1, keep["in_features"])
            m.in_features = int(len(keep["in_features"]))


@register_module(nn.Embedding)
class Embedding(ModuleHandler):
    def propagate(self, b, node, m, name):
        shape = out_shape(node)
        atoms = b.module_space(name, "embedding_dim", m.embedding_dim, producer=True)
        return [None] * (len(shape) - 1) + [atoms]

    def slice_(self, m, keep):
        if "embedding_dim" in keep:
            _slice_param(m, "weight", 1, keep["embedding_dim"])
            m.embedding_dim = int(len(keep["embedding_dim"]))


# ------------------------------------------------------------------ normalisation
_CHANNEL_PARAMS = ("weight", "bias", "running_mean", "running_var")


class _PerChannel(ModuleHandler):
    """Norms with per-channel parameters on dim 1 (``num_features``)."""

    attr = "num_features"
    exact = True

    def channel_dim(self, m, ndim):
        return 1 if ndim > 1 else 0

    def propagate(self, b, node, m, name):
        xl = list(b.labels(node.args[0]))
        ch = self.channel_dim(m, len(xl))
        size = getattr(m, self.attr)
        atoms = b.module_space(name, self.attr, size, producer=False)
        b.tie(atoms, xl[ch], f"{name}.{self.attr}")
        if xl[ch] is None:
            xl[ch] = atoms
        if not self.exact:
            b.mark_inexact(atoms, f"{type(m).__name__} '{name}' normalises across channels")
        self.extra(b, m, name, atoms)
        return xl

    def extra(self, b, m, name, atoms):
        pass

    def slice_(self, m, keep):
        if self.attr in keep:
            for p in _CHANNEL_PARAMS:
                _slice_param(m, p, 0, keep[self.attr])
            setattr(m, self.attr, int(len(keep[self.attr])))


@register_module(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                 nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
class BatchNorm(_PerChannel):
    pass


@register_module(nn.GroupNorm)
class GroupNorm(_PerChannel):
    """GroupNorm: each normalisation group is one unit, so whole groups are pruned and
    the statistics of the kept groups are unchanged (exact). ``num_groups == 1`` is a
    LayerNorm over channels: any channel can go, but statistics change (inexact)."""

    attr = "num_channels"

    def extra(self, b, m, name, atoms):
        if m.num_groups == 1:
            b.mark_inexact(atoms, f"GroupNorm '{name}' with one group normalises across channels")
        elif m.num_groups < m.num_channels:
            rows = atoms.reshape(m.num_groups, -1)
            b.union(np.repeat(rows[:, :1], rows.shape[1], axis=1).ravel(), rows.ravel())

    def slice_(self, m, keep):
        if self.attr in keep:
            n = len(keep[self.attr])
            if m.num_groups > 1:
                m.num_groups = n // (m.num_channels // m.num_groups)
            for p in ("weight", "bias"):
                _slice_param(m, p, 0, keep[self.attr])
            m.num_channels = int(n)


@register_module(nn.LayerNorm)
class LayerNorm(ModuleHandler):
    def propagate(self, b, node, m, name):
        xl = list(b.labels(node.args[0]))
        k = len(m.normalized_shape)
        if k != 1:
            for arr in xl[-k:]:
                b.freeze(arr, f"LayerNorm '{name}' normalises over several dims")
            return xl
        atoms = b.module_space(name, "normalized_shape", m.normalized_shape[0], producer=False)
        b.tie(atoms, xl[-1], f"{name}.normalized_shape")
        b.mark_inexact(atoms, f"LayerNorm '{name}' normalises across channels")
        return xl

    def slice_(self, m, keep):
        if "normalized_shape" in keep:
            idx = keep["normalized_shape"]
            _slice_param(m, "weight", 0, idx)
            _slice_param(m, "bias", 0, idx)
            m.normalized_shape = (int(len(idx)),)


@register_module("torchvision.models.convnext.LayerNorm2d")
class LayerNorm2d(LayerNorm):
    """torchvision's channels-first LayerNorm (permute, LayerNorm, permute back)."""

    def propagate(self, b, node, m, name):
        xl = list(b.labels(node.args[0]))
        atoms = b.module_space(name, "normalized_shape", m.normalized_shape[0], producer=False)
        b.tie(atoms, xl[1], f"{name}.normalized_shape")
        b.mark_inexact(atoms, f"LayerNorm2d '{name}' normalises across channels")
        return xl


@register_module(nn.PReLU)
class PReLU(ModuleHandler):
    def propagate(self, b, node, m, name):
        xl = list(b.labels(node.args[0]))
        if m.num_parameters > 1:
            atoms = b.module_space(name, "num_parameters", m.num_parameters, producer=False)
            b.tie(atoms, xl[1 if len(xl) > 1 else 0], f"{name}.num_parameters")
        return xl

    def slice_(self, m, keep):
        if "num_parameters" in keep:
            _slice_param(m, "weight", 0, keep["num_parameters"])
            m.num_parameters = int(len(keep["num_parameters"]))


# ------------------------------------------------------------ functional parametric ops
def _bias_tie(b, bias, atoms, where):
    bl = b.labels(bias)
    if bl is not None and bl:
        b.tie(atoms, bl[0], where) if bl[0] is not None else b.freeze(atoms, where)


@register_function(F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d)
def _functional_conv(b, node):
    x, w, bias = node.args[0], arg(node, 1, "weight"), arg(node, 2, "bias")
    groups = arg(node, 6, "groups", 1)
    xl, wl, shape = b.labels(x), b.labels(w), out_shape(node)
    if xl is None or wl is None or shape is None or not isinstance(groups, int):
        return b.unhandled_op(node, "functional conv with unknown operands")
    spatial = len(b.shape(w)) - 2
    ch = _channel_dim(len(shape), spatial)
    b.freeze_labels(list(wl[2:]), f"kernel dims of the weight of '{node.name}'")
    out_atoms = wl[0] if wl[0] is not None else None
    if groups == 1 and wl[1] is not None:
        b.tie(wl[1], xl[ch], f"node '{node.name}' weight input dim")
    else:
        b.freeze_labels([xl[ch], wl[1], wl[0]], f"grouped functional conv '{node.name}'")
    if out_atoms is not None and bias is not None:
        _bias_tie(b, bias, out_atoms, f"bias of '{node.name}'")
    return list(xl[:ch]) + [out_atoms] + [None] * spatial


@register_function(F.linear)
def _functional_linear(b, node):
    x, w, bias = node.args[0], arg(node, 1, "weight"), arg(node, 2, "bias")
    xl, wl = b.labels(x), b.labels(w)
    if xl is None or wl is None or len(wl) != 2:
        return b.unhandled_op(node, "functional linear with unknown operands")
    if wl[1] is not None:
        b.tie(wl[1], xl[-1], f"node '{node.name}' weight input dim")
    else:
        b.freeze(xl[-1], f"linear '{node.name}' weight has a single input feature")
    if wl[0] is not None and bias is not None:
        _bias_tie(b, bias, wl[0], f"bias of '{node.name}'")
    return list(xl[:-1]) + [wl[0]]


@register_function(F.batch_norm, F.instance_norm)
def _functional_bn(b, node):
    xl = b.labels(node.args[0])
    if xl is None:
        return b.unhandled_op(node, "batch_norm on a non-tensor")
    for t in node.all_input_nodes[1:]:
        tl = b.labels(t)
        if tl:
            if tl[0] is None:
                b.freeze(xl[1], f"batch_norm '{node.name}' with scalar statistics")
            else:
                b.tie(tl[0], xl[1], f"batch_norm '{node.name}'")
    return list(xl)


@register_function(F.layer_norm)
def _functional_ln(b, node):
    xl = list(b.labels(node.args[0]))
    shape = arg(node, 1, "normalized_shape")
    if not isinstance(shape, (tuple, list)) or len(shape) != 1:
        b.freeze_labels(xl, f"layer_norm '{node.name}' over several dims")
        return xl
    b.mark_inexact(xl[-1], f"layer_norm '{node.name}' normalises across channels")
    for t in node.all_input_nodes[1:]:
        tl = b.labels(t)
        if tl:
            b.tie(tl[0], xl[-1], f"layer_norm '{node.name}'") if tl[0] is not None else None
    return xl


# ------------------------------------------------------------------ matmul family
@register_function(torch.matmul, operator.matmul, torch.mm, torch.bmm)
@register_method("matmul", "mm", "bmm", "__matmul__")
def _matmul(b, node):
    a, c = node.args[0], node.args[1]
    al, cl, shape = b.labels(a), b.labels(c), out_shape(node)
    if al is None or cl is None or shape is None or len(al) < 2 or len(cl) < 2:
        return b.unhandled_op(node, "matmul with vector or non-tensor operands")
    # contraction: a[..., k] with c[..., k, :]
    if al[-1] is not None and cl[-2] is not None:
        b.union(al[-1], cl[-2])
    else:
        b.freeze(al[-1], f"matmul '{node.name}' contracts against a plain dim")
        b.freeze(cl[-2], f"matmul '{node.name}' contracts against a plain dim")
    batch = [(b.shape(op)[:-2], b.labels(op)[:-2]) for op in (a, c)]
    return merge_broadcast(b, node, batch, shape[:-2]) + [al[-2], cl[-1]]


# ------------------------------------------------------------------ reductions
_SUM_LIKE = {"sum", "nansum"}
_MEAN_LIKE = {"mean", "nanmean", "std", "var", "logsumexp", "norm"}


def _reduction(kind: str):
    def propagate(b, node):
        x = node.args[0]
        xl, shape = b.labels(x), out_shape(node)
        if xl is None:
            return b.unhandled_op(node, f"{kind} of a non-tensor")
        n = len(xl)
        dims = arg(node, 1, "dim")
        if kind == "norm":
            dims = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else None)
        keepdim = bool(node.kwargs.get("keepdim", False))
        if dims is None:
            dims = list(range(n))
        elif isinstance(dims, int):
            dims = [dims]
        if not all(isinstance(d, int) for d in dims):
            return b.unhandled_op(node, f"{kind} over non-constant dims")
        dims = {_norm_dim(d, n) for d in dims}
        for d in dims:
            if xl[d] is None:
                continue
            if kind in _SUM_LIKE or kind == "norm":
                continue  # zeros add nothing: removing channels is exact
            if kind in _MEAN_LIKE:
                b.mark_inexact(xl[d], f"{kind} across channels at '{node.name}'")
            else:
                b.freeze(xl[d], f"{kind} across channels at '{node.name}'")
        if shape is None:
            return None
        if keepdim or len(shape) == n:
            return [None if d in dims else xl[d] for d in range(n)]
        return [xl[d] for d in range(n) if d not in dims]

    return propagate


for _name, _fn in {
    "sum": torch.sum, "mean": torch.mean, "amax": torch.amax, "amin": torch.amin,
    "std": torch.std, "var": torch.var, "logsumexp": torch.logsumexp, "prod": torch.prod,
    "nansum": torch.nansum, "nanmean": torch.nanmean, "norm": torch.norm,
}.items():
    register_function(_fn)(_reduction(_name))
    register_method(_name)(_reduction(_name))


def _softmax(b, node):
    x = node.args[0]
    xl = b.labels(x)
    if xl is None:
        return b.unhandled_op(node, "softmax of a non-tensor")
    dim = arg(node, 1, "dim")
    if not isinstance(dim, int):
        return b.unhandled_op(node, "softmax without a constant dim")
    d = _norm_dim(dim, len(xl))
    b.mark_inexact(xl[d], f"softmax across channels at '{node.name}'")
    return list(xl)


register_function(F.softmax, F.log_softmax, torch.softmax, torch.log_softmax)(_softmax)
register_method("softmax", "log_softmax")(_softmax)


@register_module(nn.Softmax, nn.LogSoftmax)
class Softmax(ModuleHandler):
    def propagate(self, b, node, m, name):
        xl = b.labels(node.args[0])
        if m.dim is None:
            return b.unhandled_op(node, "Softmax without dim")
        b.mark_inexact(xl[_norm_dim(m.dim, len(xl))], f"softmax across channels at '{name}'")
        return list(xl)


@register_function(F.normalize)
def _normalize(b, node):
    return list(b.labels(node.args[0]))  # an L2 norm over zeros is unchanged: exact


# ------------------------------------------------------------------ layout family
def _permute_labels(b, node, perm):
    xl = b.labels(node.args[0])
    if xl is None:
        return b.unhandled_op(node, "permute of a non-tensor")
    return [xl[_norm_dim(p, len(xl))] for p in perm]


@register_function(torch.permute)
@register_method("permute")
def _permute(b, node):
    dims = node.args[1:] if node.op == "call_method" else (arg(node, 1, "dims"),)
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = dims[0]
    if not all(isinstance(d, int) for d in dims):
        return b.unhandled_op(node, "permute with non-constant dims")
    return _permute_labels(b, node, dims)


@register_function(torch.transpose, torch.swapaxes, torch.swapdims)
@register_method("transpose", "swapaxes", "swapdims")
def _transpose(b, node):
    xl = b.labels(node.args[0])
    d0, d1 = arg(node, 1, "dim0"), arg(node, 2, "dim1")
    if xl is None or not isinstance(d0, int) or not isinstance(d1, int):
        return b.unhandled_op(node, "transpose with non-constant dims")
    perm = list(range(len(xl)))
    a, c = _norm_dim(d0, len(xl)), _norm_dim(d1, len(xl))
    perm[a], perm[c] = perm[c], perm[a]
    return _permute_labels(b, node, perm)


@register_function(torch.t)
@register_method("t")
def _t(b, node):
    xl = b.labels(node.args[0])
    return list(reversed(xl)) if xl is not None else b.unhandled_op(node, "t of a non-tensor")


def _reshape_groups(a: tuple, c: tuple) -> list[tuple[list[int], list[int]]]:
    """Pair up runs of input dims and output dims with equal products."""
    i = j = 0
    groups = []
    while i < len(a) or j < len(c):
        gi, gj, pa, pc = [], [], 1, 1
        if i < len(a):
            gi.append(i)
            pa *= a[i]
            i += 1
        if j < len(c):
            gj.append(j)
            pc *= c[j]
            j += 1
        while pa != pc:
            if pa < pc and i < len(a):
                gi.append(i)
                pa *= a[i]
                i += 1
            elif j < len(c):
                gj.append(j)
                pc *= c[j]
                j += 1
            else:
                return []
        groups.append((gi, gj))
    return groups


def reshape_labels(b: Builder, node: fx.Node, in_shape: tuple, xl: Labels, shape: tuple) -> Labels:
    """Labels through a view/reshape/flatten: channels may merge with spatial dims
    (flatten into a Linear) or split (channel shuffle, heads). A split whose pieces all
    vary keeps the channel identity on its largest axis and cuts the other axes together,
    so the slim tensor stays rectangular."""
    groups = _reshape_groups(in_shape, shape)
    out: Labels = [None] * len(shape)
    if not groups:
        b.freeze_labels(xl, f"reshape at '{node.name}' could not be matched")
        return out
    for gi, gj in groups:
        labeled = [d for d in gi if xl[d] is not None]
        if not labeled:
            continue
        if len(labeled) > 1 or (0 in gi and len(gi) > 1):
            b.freeze_labels([xl[d] for d in labeled], f"reshape at '{node.name}' mixes channel dims")
            continue
        if not gj:
            continue
        d0 = labeled[0]
        bshape = [in_shape[d] for d in gi]
        view = [1] * len(gi)
        view[gi.index(d0)] = in_shape[d0]
        joint = np.broadcast_to(xl[d0].reshape(view), bshape).reshape([shape[d] for d in gj])
        varying = [ax for ax in range(joint.ndim) if not _constant_along(joint, ax)]
        if len(varying) == 0:
            axis = int(np.argmax([shape[d] for d in gj]))
        elif len(varying) == 1:
            axis = varying[0]
        else:
            axis = max(varying, key=lambda ax: (joint.shape[ax], -ax))
            rows = np.moveaxis(joint, axis, -1).reshape(-1, joint.shape[axis])
            b.union(np.broadcast_to(rows[:1], rows.shape).ravel(), rows.ravel())
        first = np.moveaxis(joint, axis, 0).reshape(joint.shape[axis], -1)[:, 0]
        out[gj[axis]] = np.ascontiguousarray(first)
    return out


def _constant_along(arr: np.ndarray, axis: int) -> bool:
    if arr.shape[axis] <= 1:
        return True
    first = np.take(arr, [0], axis=axis)
    return bool((arr == first).all())


def _reshape(b, node):
    x = node.args[0]
    xl, in_shape, shape = b.labels(x), b.shape(x), out_shape(node)
    if xl is None or in_shape is None or shape is None:
        return b.unhandled_op(node, "reshape of a non-tensor")
    return reshape_labels(b, node, in_shape, xl, shape)


def _rewrite_shape_args(node: fx.Node, ctx) -> None:
    """Constant sizes on pruned dims of a view/reshape/expand become the kept counts."""
    shape = out_shape(node)
    labels = ctx.labels(node)
    if shape is None or labels is None:
        return
    if node.op == "call_method":
        sizes = list(node.args[1:])
        packed = len(sizes) == 1 and isinstance(sizes[0], (tuple, list))
        if packed:
            sizes = list(sizes[0])
    else:
        sizes = list(arg(node, 1, "shape"))
        packed = True
    if len(sizes) != len(shape):
        return
    changed = False
    for d, s in enumerate(sizes):
        if labels[d] is not None and isinstance(s, int) and s != -1:
            new = ctx.kept_count(labels[d])
            if new != s:
                sizes[d] = new
                changed = True
    if not changed:
        return
    if node.op == "call_method":
        node.args = (node.args[0], tuple(sizes)) if packed else (node.args[0], *sizes)
    elif len(node.args) > 1:
        node.args = (node.args[0], tuple(sizes), *node.args[2:])
    else:
        node.kwargs = {**node.kwargs, "shape": tuple(sizes)}


register_function(torch.reshape, rewrite=_rewrite_shape_args)(_reshape)
register_function(torch.flatten, torch.unflatten, torch.squeeze, torch.unsqueeze,
                  torch.ravel)(_reshape)
register_method("view", "reshape", rewrite=_rewrite_shape_args)(_reshape)
register_method("flatten", "unflatten", "squeeze", "unsqueeze", "ravel", "view_as",
                "reshape_as")(_reshape)


@register_module(nn.Flatten)
class Flatten(ModuleHandler):
    def propagate(self, b, node, m, name):
        return _reshape(b, node)


@register_method("expand", rewrite=_rewrite_shape_args)
def _expand(b, node):
    xl, shape = b.labels(node.args[0]), out_shape(node)
    if xl is None or shape is None:
        return b.unhandled_op(node, "expand of a non-tensor")
    lead = len(shape) - len(xl)
    return [None] * lead + [
        None if (xl[k] is None or len(xl[k]) != shape[lead + k]) else xl[k] for k in range(len(xl))
    ]


register_method("expand_as")(elementwise)


@register_function(torch.roll)
@register_method("roll")
def _roll(b, node):
    xl = b.labels(node.args[0])
    if xl is None:
        return b.unhandled_op(node, "roll of a non-tensor")
    dims = arg(node, 2, "dims")
    dims = [dims] if isinstance(dims, int) else dims
    if not isinstance(dims, (tuple, list)):
        b.freeze_labels(xl, f"roll without dims at '{node.name}'")
        return [None] * len(xl)
    out = list(xl)
    for d in dims:
        d = _norm_dim(d, len(xl))
        b.freeze(out[d], f"roll along a channel dim at '{node.name}'")
    return out


# ------------------------------------------------------------------ concat / split
@register_function(torch.cat, torch.concat, torch.concatenate)
def _cat(b, node):
    tensors = arg(node, 0, "tensors")
    dim = arg(node, 1, "dim", 0)
    shape = out_shape(node)
    if not isinstance(tensors, (tuple, list)) or shape is None or not isinstance(dim, int):
        return b.unhandled_op(node, "cat with unknown operands")
    labels = [b.labels(t) for t in tensors]
    if any(lab is None for lab in labels):
        return b.unhandled_op(node, "cat of non-tensors")
    dim = _norm_dim(dim, len(shape))
    out: Labels = [None] * len(shape)
    for d in range(len(shape)):
        if d == dim:
            parts = [lab[d] for lab in labels]
            if all(p is not None for p in parts):
                out[d] = np.concatenate(parts)
            else:
                for p in parts:
                    b.freeze(p, f"cat at '{node.name}' joins channels with a plain tensor")
        else:
            arrays = [lab[d] for lab in labels if lab[d] is not None]
            for a in arrays[1:]:
                b.union(arrays[0], a)
            if arrays and len(arrays) < len(labels):
                b.freeze(arrays[0], f"cat at '{node.name}' meets a non-channel dimension")
            out[d] = arrays[0] if arrays else None
    return out


@register_function(torch.stack)
def _stack(b, node):
    tensors = arg(node, 0, "tensors")
    dim = arg(node, 1, "dim", 0)
    shape = out_shape(node)
    if not isinstance(tensors, (tuple, list)) or shape is None or not isinstance(dim, int):
        return b.unhandled_op(node, "stack with unknown operands")
    dim = _norm_dim(dim, len(shape))
    merged = merge_elementwise(b, node, list(tensors), tuple(s for i, s in enumerate(shape) if i != dim))
    return merged[:dim] + [None] + merged[dim:]


def _split_sizes(node: fx.Node, in_shape: tuple) -> tuple[list[int], int] | None:
    """Sizes of the pieces of a split/chunk/unbind node along its dim."""
    shapes = node.meta.get(META_SHAPE)
    if not isinstance(shapes, (tuple, list)) or not shapes:
        return None
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    dim = arg(node, 2, "dim", 0)
    if not isinstance(dim, int):
        return None
    dim = _norm_dim(dim, len(in_shape))
    if name == "unbind":
        return None
    return [s[dim] for s in shapes], dim


def _split(b, node):
    x = node.args[0]
    xl, in_shape = b.labels(x), b.shape(x)
    got = _split_sizes(node, in_shape) if in_shape else None
    if xl is None or got is None:
        return b.unhandled_op(node, "split with unknown sizes")
    sizes, dim = got
    outs, start = [], 0
    for size in sizes:
        lab = list(xl)
        if xl[dim] is not None:
            lab[dim] = xl[dim][start:start + size]
        outs.append(lab)
        start += size
    return tuple(outs)


def _rewrite_split(node: fx.Node, ctx) -> None:
    """Pieces of a pruned split/chunk become an explicit list of kept sizes."""
    x = node.args[0]
    xl = ctx.labels(x)
    in_shape = x.meta.get(META_SHAPE)
    got = _split_sizes(node, in_shape)
    if got is None or xl is None:
        return
    sizes, dim = got
    if xl[dim] is None:
        return
    new_sizes, start = [], 0
    for size in sizes:
        new_sizes.append(ctx.kept_count(xl[dim][start:start + size]))
        start += size
    if new_sizes == sizes and node.target in ("split", torch.split):
        return
    if node.op == "call_method":
        node.target = "split"
    else:
        node.target = torch.split
    node.args = (x, new_sizes)
    node.kwargs = {"dim": dim}


register_function(torch.split, torch.chunk, rewrite=_rewrite_split)(_split)
register_method("split", "chunk", rewrite=_rewrite_split)(_split)


@register_function(operator.getitem, rewrite=None)
def _getitem(b, node):
    src, index = node.args
    src_labels = b.labels(src)
    if src_labels is None:
        return None if node.meta.get(META_SHAPE) is None else b.unhandled_op(node, "getitem")
    if isinstance(src.meta.get(META_SHAPE), (tuple, list)) and not b.shape(src):
        # indexing a tuple of tensors (split output)
        return src_labels[index] if isinstance(index, int) else b.unhandled_op(node, "tuple slice")
    return _tensor_index(b, node, src_labels, index)


def _index_parts(index) -> list:
    return list(index) if isinstance(index, tuple) else [index]


def _tensor_index(b, node, xl, index):
    parts = _index_parts(index)
    out: Labels = []
    d = 0
    n_consumed = sum(1 for p in parts if p is not None and p is not Ellipsis)
    for p in parts:
        if p is Ellipsis:
            skip = len(xl) - n_consumed
            out.extend(xl[d:d + skip])
            d += skip
        elif p is None:
            out.append(None)
        elif isinstance(p, slice):
            if xl[d] is not None:
                if not all(v is None or isinstance(v, int) for v in (p.start, p.stop, p.step)) or (
                    p.step not in (None, 1)
                ):
                    b.freeze(xl[d], f"strided or dynamic slice of channels at '{node.name}'")
                    out.append(None)
                else:
                    out.append(xl[d][p])
            else:
                out.append(None)
            d += 1
        elif isinstance(p, int):
            b.freeze(xl[d], f"integer index into channels at '{node.name}'")
            d += 1
        else:  # tensors, lists: advanced indexing
            b.freeze_labels(xl, f"advanced indexing at '{node.name}'")
            return plain_labels(node.meta.get(META_SHAPE))
    out.extend(xl[d:])
    shape = out_shape(node)
    if shape is None or len(out) != len(shape):
        b.freeze_labels(xl, f"indexing at '{node.name}' not understood")
        return plain_labels(node.meta.get(META_SHAPE))
    return out


def _rewrite_getitem(node: fx.Node, ctx) -> None:
    src, index = node.args
    xl = ctx.labels(src)
    if not isinstance(xl, list) or not b_is_tensor(src):
        return
    parts = _index_parts(index)
    n_consumed = sum(1 for p in parts if p is not None and p is not Ellipsis)
    d, new_parts, changed = 0, [], False
    for p in parts:
        if p is Ellipsis:
            d += len(xl) - n_consumed
        elif isinstance(p, slice):
            static = all(v is None or isinstance(v, int) for v in (p.start, p.stop))
            if xl[d] is not None and static and (p.start is not None or p.stop is not None):
                arr = xl[d]
                start = ctx.kept_count(arr[: p.start]) if p.start is not None else None
                stop = ctx.kept_count(arr[: p.stop]) if p.stop is not None else None
                if p.start is not None and p.start < 0:
                    start = -ctx.kept_count(arr[p.start:])
                if p.stop is not None and p.stop < 0:
                    stop = -ctx.kept_count(arr[p.stop:])
                if (start, stop) != (p.start, p.stop):
                    p = slice(start, stop, p.step)
                    changed = True
            d += 1
        elif p is not None:
            d += 1
        new_parts.append(p)
    if changed:
        node.args = (src, tuple(new_parts) if isinstance(index, tuple) else new_parts[0])


def b_is_tensor(n: fx.Node) -> bool:
    s = n.meta.get(META_SHAPE)
    return isinstance(s, tuple) and all(isinstance(x, int) for x in s)


FUNCTION_HANDLERS[operator.getitem] = OpRule(_getitem, _rewrite_getitem)


# ------------------------------------------------------------------ shape queries etc.
def _no_labels(b, node):
    return None


register_method("size", "dim", "numel", "type_as_str", "data_ptr", "get_device")(_no_labels)
register_function(getattr, len, torch.numel)(_no_labels)


@register_module("torchvision.ops.misc.Permute")
class TVPermute(ModuleHandler):
    def propagate(self, b, node, m, name):
        return _permute_labels(b, node, list(m.dims))


@register_module(nn.ChannelShuffle)
class ChannelShuffle(ModuleHandler):
    """Same as view(N, g, C/g, ...) -> transpose(1, 2) -> view(N, C, ...)."""

    def propagate(self, b, node, m, name):
        xl = list(b.labels(node.args[0]))
        if xl[1] is None:
            return xl
        rows = xl[1].reshape(m.groups, -1)
        b.union(np.broadcast_to(rows[:1], rows.shape).ravel(), rows.ravel())
        xl[1] = np.repeat(rows[0], m.groups)
        return xl


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
    "iter_arrays",
]
