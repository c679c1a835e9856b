"""Elementwise ops and activations, and spatial ops (pooling, interpolation, padding)."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from .common import arg, elementwise, out_shape, spatial_passthrough
from .registry import ModuleRule, register_function, register_method, register_module

# ------------------------------------------------------------------ elementwise family
_ELEMENTWISE_FUNCTIONS = [
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.floordiv,
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.neg,
    operator.pos,
    operator.abs,
    operator.pow,
    operator.mod,
    operator.eq,
    operator.ne,
    operator.lt,
    operator.le,
    operator.gt,
    operator.ge,
    operator.and_,
    operator.or_,
    torch.add,
    torch.sub,
    torch.subtract,
    torch.mul,
    torch.multiply,
    torch.div,
    torch.divide,
    torch.true_divide,
    torch.sigmoid,
    torch.tanh,
    torch.relu,
    torch.relu_,
    torch.exp,
    torch.log,
    torch.sqrt,
    torch.rsqrt,
    torch.abs,
    torch.neg,
    torch.clamp,
    torch.clip,
    torch.where,
    torch.maximum,
    torch.minimum,
    torch.pow,
    torch.erf,
    torch.sin,
    torch.cos,
    torch.square,
    torch.reciprocal,
    torch.sign,
    torch.addcmul,
    torch.lerp,
    torch.zeros_like,
    torch.ones_like,
    torch.empty_like,
    torch.full_like,
    torch.rand_like,
    torch.randn_like,
    torch.nan_to_num,
    torch.logical_and,
    torch.logical_or,
    torch.logical_not,
    torch.isfinite,
    torch.masked_fill,
    F.relu,
    F.relu6,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.sigmoid,
    F.tanh,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.celu,
    F.softplus,
    F.hardtanh,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.logsigmoid,
    F.threshold,
    F.softsign,
    F.tanhshrink,
    F.relu_,
    F.elu_,
    F.leaky_relu_,
    F.hardtanh_,
]
_ELEMENTWISE_METHODS = [
    "add",
    "add_",
    "sub",
    "sub_",
    "mul",
    "mul_",
    "div",
    "div_",
    "truediv",
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "exp",
    "exp_",
    "log",
    "clamp",
    "clamp_",
    "clamp_min",
    "clamp_max",
    "clip",
    "abs",
    "neg",
    "pow",
    "sqrt",
    "rsqrt",
    "float",
    "half",
    "double",
    "bfloat16",
    "to",
    "type",
    "type_as",
    "contiguous",
    "clone",
    "detach",
    "masked_fill",
    "masked_fill_",
    "sign",
    "square",
    "reciprocal",
    "erf",
    "zero_",
    "fill_",
    "addcmul",
    "lerp",
    "__add__",
    "__mul__",
    "__sub__",
    "__truediv__",
    "__radd__",
    "__rmul__",
    "sin",
    "cos",
    "requires_grad_",
    "hardtanh",
    "hardtanh_",
    "sigmoid",
    "nan_to_num",
    "cpu",
    "cuda",
]
register_function(*_ELEMENTWISE_FUNCTIONS, "torchvision.ops.stochastic_depth.stochastic_depth")(
    elementwise
)
register_method(*dict.fromkeys(_ELEMENTWISE_METHODS))(elementwise)


_PASSTHROUGH_MODULES = [
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.Mish,
    nn.Softplus,
    nn.Hardtanh,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Identity,
    nn.LogSigmoid,
    nn.Softsign,
    nn.Tanhshrink,
    nn.Threshold,
    "torchvision.ops.stochastic_depth.StochasticDepth",
]


class PassThrough(ModuleRule):
    def propagate(self, b, node, module, name):
        return elementwise(b, node)


register_module(*_PASSTHROUGH_MODULES)(PassThrough)


# ---------------------------------------------------------------- spatial family
class Spatial(ModuleRule):
    """Pooling / upsampling / padding modules: channels pass, trailing dims are plain."""

    def propagate(self, b, node, module, name):
        cls = type(module).__name__
        spatial = int(cls[-2]) if cls[-2].isdigit() else 2
        if isinstance(module, nn.Upsample):
            spatial = len(out_shape(node) or ()) - 2
        return spatial_passthrough(b, node, node.args[0], spatial)


register_module(
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.LPPool1d,
    nn.LPPool2d,
    nn.Upsample,
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.ConstantPad3d,
    nn.ReflectionPad1d,
    nn.ReflectionPad2d,
    nn.ReflectionPad3d,
    nn.ReplicationPad1d,
    nn.ReplicationPad2d,
    nn.ReplicationPad3d,
)(Spatial)


def _functional_spatial(spatial: int):
    def propagate(b, node):
        return spatial_passthrough(b, node, node.args[0], spatial)

    return propagate


for _k, _fns in {
    1: [
        F.max_pool1d,
        F.avg_pool1d,
        F.adaptive_avg_pool1d,
        F.adaptive_max_pool1d,
        torch.max_pool1d,
        torch.avg_pool1d,
        torch.adaptive_avg_pool1d,
    ],
    2: [
        F.max_pool2d,
        F.avg_pool2d,
        F.adaptive_avg_pool2d,
        F.adaptive_max_pool2d,
        F.lp_pool2d,
        torch.max_pool2d,
    ],
    3: [F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d, F.adaptive_max_pool3d],
}.items():
    register_function(*_fns)(_functional_spatial(_k))


@register_function(F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear)
def _interpolate(b, node):
    shape = out_shape(node)
    return spatial_passthrough(b, node, node.args[0], len(shape) - 2 if shape else 0)


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
