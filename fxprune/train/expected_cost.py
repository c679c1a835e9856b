"""Expected MACs and parameters of a gated network, as exact multilinear polynomials.

Every unit gate ``xi_c ~ Bern(theta_c)`` and section gate ``xi_s ~ Bern(zeta_s)`` is
independent, so the expected cost of a layer is a polynomial in the keep probabilities.
A weight element ``W[o, i, ...]`` exists iff its output channel, its input channel and
every section containing the layer exist; its expectation is the product of the
*distinct* probabilities involved (``xi^2 = xi``: when ``o`` and ``i`` are the same class,
as in a depthwise conv, the element costs ``theta_c``, not ``theta_c^2``). Summed per conv
group this is

    E[cost] = w * prod(zeta_s) * sum_g [ (sum_{o in g} theta_o)(sum_{i in g} theta_i)
                                         + sum_c K_gc (theta_c - theta_c^2) ]

with ``K_gc`` the number of (o, i) pairs of group ``g`` that are both of class ``c``. The
weight ``w`` is ``prod(kernel)`` for parameters and ``prod(kernel) * output spatial size``
for MACs (per example, the convention of ``cost.py``). Biases and per-channel norm
parameters are linear in theta; anything the rules do not know (a functional conv, a
custom leaf module) is a constant times its sections. At theta = 1 the polynomials equal
``macs_report(...).macs`` and ``count_params`` for conv/linear/norm networks.

``ExpectedCost.l2`` is the same construction weighted by squared weights: the expected
squared norm ``E[||xi * W||^2]`` of the weights the sampled network actually uses (the
weight decay of ``train_prune``).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fxprune.analysis import ChannelGraph
from fxprune.trace import META_SHAPE

CostRule = Callable[["CostBuilder", fx.Node, nn.Module, str, bool], None]
COST_RULES: dict[type, CostRule] = {}


def register_cost(*types: type):
    """Decorator: ``@register_cost(nn.Conv2d)`` on ``rule(builder, node, module, name,
    first_call)``; ``first_call`` is False when a module is called again (params count once)."""

    def deco(rule: CostRule) -> CostRule:
        for t in types:
            if t in COST_RULES:
                raise KeyError(f"fxprune: a cost rule for {t!r} is already registered")
            COST_RULES[t] = rule
        return rule

    return deco


def _rule_for(module: nn.Module) -> CostRule | None:
    for cls in type(module).__mro__:
        if cls in COST_RULES:
            return COST_RULES[cls]
    return None


@dataclass
class _L2Entry:
    param: nn.Parameter
    groups: int
    rows: torch.Tensor  # (G, r) extended unit index of each row of the param
    cols: torch.Tensor | None  # (G, c) for a pair, None for a per-row vector
    same: torch.Tensor | None  # (G, r, c) bool: row and column are the same unit
    set_id: int


@dataclass
class CostBuilder:
    """Collects polynomial rows while the rules walk the graph."""

    graph: ChannelGraph
    unit_of_class: np.ndarray
    num_units: int
    node_sets: dict[str, frozenset[int]]
    batch: int
    set_ids: dict[frozenset[int], int] = field(default_factory=lambda: {frozenset(): 0})
    a_rows: list[np.ndarray] = field(default_factory=list)
    a_idx: list[np.ndarray] = field(default_factory=list)
    b_rows: list[np.ndarray] = field(default_factory=list)
    b_idx: list[np.ndarray] = field(default_factory=list)
    row_set: list[int] = field(default_factory=list)
    w_macs: list[float] = field(default_factory=list)
    w_params: list[float] = field(default_factory=list)
    l2: list[_L2Entry] = field(default_factory=list)
    seen_params: set[int] = field(default_factory=set)

    # -- lookups ------------------------------------------------------------------------
    def units(self, space_key: str) -> np.ndarray | None:
        """Extended unit index per position of a space (``num_units`` = always on)."""
        space = self.graph.spaces.get(space_key)
        if space is None:
            return None
        u = self.unit_of_class[self.graph.atom_class[space.atoms]]
        return np.where(u >= 0, u, self.num_units)

    def set_of(self, sections: frozenset[int]) -> int:
        return self.set_ids.setdefault(sections, len(self.set_ids))

    # -- polynomial rows ----------------------------------------------------------------
    def pair(
        self,
        a: np.ndarray,
        b: np.ndarray,
        groups: int,
        macs: float,
        params: float,
        sections: frozenset[int],
    ) -> None:
        """``sum_g (sum_{o in g} theta_o)(sum_{i in g} theta_i)``, weighted."""
        if macs == 0 and params == 0:
            return
        a2, b2 = a.reshape(groups, -1), b.reshape(groups, -1)
        first = len(self.row_set)
        rows = np.arange(first, first + groups)
        self.a_rows.append(np.repeat(rows, a2.shape[1]))
        self.a_idx.append(a2.ravel())
        self.b_rows.append(np.repeat(rows, b2.shape[1]))
        self.b_idx.append(b2.ravel())
        set_id = self.set_of(sections)
        self.row_set += [set_id] * groups
        self.w_macs += [macs] * groups
        self.w_params += [params] * groups

    def single(self, a: np.ndarray, macs: float, params: float, sections: frozenset[int]) -> None:
        self.pair(a, np.full(1, self.num_units), 1, macs, params, sections)

    def const(self, macs: float, params: float, sections: frozenset[int]) -> None:
        self.single(np.full(1, self.num_units), macs, params, sections)

    # -- expected squared weights -------------------------------------------------------
    def decay_pair(
        self,
        param: torch.Tensor | None,
        rows: np.ndarray,
        cols: np.ndarray,
        groups: int,
        sections: frozenset[int],
    ) -> None:
        """A weight laid out ``(groups * r, c, ...)``: row and column channels per group."""
        if not self._fresh(param):
            return
        r = torch.as_tensor(rows.reshape(groups, -1), dtype=torch.long)
        c = torch.as_tensor(cols.reshape(groups, -1), dtype=torch.long)
        same = (r[:, :, None] == c[:, None, :]) & (r[:, :, None] < self.num_units)
        self.l2.append(
            _L2Entry(param, groups, r, c, same if bool(same.any()) else None, self.set_of(sections))
        )

    def decay_single(
        self, param: torch.Tensor | None, rows: np.ndarray, sections: frozenset[int]
    ) -> None:
        if not self._fresh(param):
            return
        r = torch.as_tensor(rows.reshape(1, -1), dtype=torch.long)
        self.l2.append(_L2Entry(param, 1, r, None, None, self.set_of(sections)))

    def decay_const(self, param: torch.Tensor | None, sections: frozenset[int]) -> None:
        """The whole tensor lives and dies with its sections only."""
        self.decay_single(param, np.full(1, self.num_units), sections)

    def _fresh(self, param: torch.Tensor | None) -> bool:
        if not isinstance(param, nn.Parameter) or id(param) in self.seen_params:
            return False
        self.seen_params.add(id(param))
        return True

    def finish(self, num_sections: int) -> ExpectedCost:
        return ExpectedCost(self, num_sections)


def _long(parts: list[np.ndarray]) -> torch.Tensor:
    return torch.as_tensor(
        np.concatenate(parts) if parts else np.zeros(0, np.int64), dtype=torch.long
    )


class ExpectedCost:
    """``cost(theta, zeta) -> (E[MACs], E[params])``; batched over a leading dim too."""

    def __init__(self, b: CostBuilder, num_sections: int):
        self.num_units = b.num_units
        self.num_sections = num_sections
        self.a_rows, self.a_idx = _long(b.a_rows), _long(b.a_idx)
        self.b_rows, self.b_idx = _long(b.b_rows), _long(b.b_idx)
        self.num_rows = len(b.row_set)
        self.row_set = torch.as_tensor(b.row_set, dtype=torch.long)
        self.w = torch.tensor([b.w_macs, b.w_params], dtype=torch.float64).T.reshape(-1, 2)
        self.sets = [sorted(s) for s, _ in sorted(b.set_ids.items(), key=lambda kv: kv[1])]
        self.k_rows, self.k_idx, self.k_count = self._same_unit_pairs()
        self.l2_entries = b.l2

    def _same_unit_pairs(self):
        """(row, unit, count) for pairs whose two sides are the same unit (``xi^2 = xi``)."""
        span = self.num_units + 1
        keys = []
        for rows, idx in ((self.a_rows, self.a_idx), (self.b_rows, self.b_idx)):
            k = (rows * span + idx).numpy()
            keys.append(np.unique(k[idx.numpy() < self.num_units], return_counts=True))
        (ua, ca), (ub, cb) = keys
        common, ia, ib = np.intersect1d(ua, ub, assume_unique=True, return_indices=True)
        return (
            torch.as_tensor(common // span, dtype=torch.long),
            torch.as_tensor(common % span, dtype=torch.long),
            torch.as_tensor(ca[ia] * cb[ib], dtype=torch.float64),
        )

    def to(self, device: torch.device | str) -> ExpectedCost:
        """Move the index tensors next to the probabilities (in place)."""
        for name in (
            "a_rows",
            "a_idx",
            "b_rows",
            "b_idx",
            "row_set",
            "w",
            "k_rows",
            "k_idx",
            "k_count",
        ):
            setattr(self, name, getattr(self, name).to(device))
        for e in self.l2_entries:
            e.rows = e.rows.to(device)
            e.cols = e.cols.to(device) if e.cols is not None else None
            e.same = e.same.to(device) if e.same is not None else None
        return self

    # -- evaluation ---------------------------------------------------------------------
    def _extended(self, theta: torch.Tensor) -> torch.Tensor:
        t = theta.to(torch.float64)
        return torch.cat([t, t.new_ones(*t.shape[:-1], 1)], -1)  # (..., U + 1)

    def _set_multipliers(self, zeta: torch.Tensor) -> torch.Tensor:
        z = zeta.to(torch.float64)
        ones = z.new_ones(z.shape[:-1])
        return torch.stack([z[..., s].prod(-1) if s else ones for s in self.sets], -1)

    def __call__(
        self, theta: torch.Tensor, zeta: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batched = theta.dim() == 2
        theta = theta if batched else theta[None]
        zeta = zeta if batched else zeta[None]
        g = self._extended(theta)  # (B, U + 1)
        zeros = g.new_zeros(g.shape[0], self.num_rows)
        a = zeros.index_add(1, self.a_rows, g[:, self.a_idx])
        b = zeros.index_add(1, self.b_rows, g[:, self.b_idx])
        k = zeros.index_add(1, self.k_rows, (g - g * g)[:, self.k_idx] * self.k_count)
        m = self._set_multipliers(zeta)[:, self.row_set]  # (B, R)
        out = ((a * b + k) * m) @ self.w  # (B, 2)
        macs, params = out[:, 0], out[:, 1]
        return (macs, params) if batched else (macs[0], params[0])

    def at_ones(self) -> tuple[float, float]:
        macs, params = self(torch.ones(self.num_units), torch.ones(self.num_sections))
        return float(macs), float(params)

    def l2(self, theta: torch.Tensor, zeta: torch.Tensor) -> torch.Tensor:
        """``E[sum ||xi * W||^2]`` over every parameter (see module docstring)."""
        g = self._extended(theta).to(torch.float32)
        m = self._set_multipliers(zeta).to(torch.float32)
        total = g.new_zeros(())
        for e in self.l2_entries:
            p = e.param
            if e.cols is None:
                if e.rows.shape[1] == 1:  # constant: the whole tensor
                    total = total + p.pow(2).sum() * g[e.rows[0, 0]] * m[e.set_id]
                    continue
                w2 = p.pow(2).reshape(p.shape[0], -1).sum(1)  # (r,)
                total = total + (w2 * g[e.rows[0]]).sum() * m[e.set_id]
                continue
            rows, cols = e.rows.shape[1], e.cols.shape[1]
            w2 = p.pow(2).reshape(e.groups, rows, cols, -1).sum(-1)  # (G, r, c)
            gr, gc = g[e.rows], g[e.cols]  # (G, r), (G, c)
            prob = gr[:, :, None] * gc[:, None, :]
            if e.same is not None:
                prob = torch.where(e.same, gr[:, :, None].expand_as(prob), prob)
            total = total + (w2 * prob).sum() * m[e.set_id]
        return total


# ------------------------------------------------------------------------------- rules
def _per_example(node: fx.Node, batch: int, channels: int) -> float:
    shape = node.meta.get(META_SHAPE)
    return math.prod(shape) / (batch * channels) if isinstance(shape, tuple) and channels else 0.0


@register_cost(
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d
)
def _conv_cost(cb: CostBuilder, node: fx.Node, m: nn.Module, name: str, first: bool) -> None:
    sections = cb.node_sets.get(node.name, frozenset())
    out_u, in_u = cb.units(f"{name}.out_channels"), cb.units(f"{name}.in_channels")
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
    kernel = math.prod(m.kernel_size)
    if transposed:  # MACs follow the input: in.numel * C_out/groups * kernel
        spatial = _per_example(node.args[0], cb.batch, m.in_channels)
    else:  # out.numel * C_in/groups * kernel
        spatial = _per_example(node, cb.batch, m.out_channels)
    if out_u is None or in_u is None:
        full = m.out_channels * m.in_channels // m.groups
        cb.const(spatial * kernel * full, kernel * full if first else 0, sections)
    else:
        cb.pair(out_u, in_u, m.groups, spatial * kernel, kernel if first else 0, sections)
    if first:
        if out_u is None or in_u is None:
            cb.decay_const(m.weight, sections)
        elif transposed:  # weight (C_in, C_out/groups, *k)
            cb.decay_pair(m.weight, in_u, out_u, m.groups, sections)
        else:  # weight (C_out, C_in/groups, *k)
            cb.decay_pair(m.weight, out_u, in_u, m.groups, sections)
        if m.bias is not None:
            _linear_in(cb, m.bias, out_u, sections)


@register_cost(nn.Linear)
def _linear_cost(cb: CostBuilder, node: fx.Node, m: nn.Linear, name: str, first: bool) -> None:
    sections = cb.node_sets.get(node.name, frozenset())
    out_u, in_u = cb.units(f"{name}.out_features"), cb.units(f"{name}.in_features")
    rows = _per_example(node, cb.batch, m.out_features)
    if out_u is None or in_u is None:
        full = m.out_features * m.in_features
        cb.const(rows * full, full if first else 0, sections)
        if first:
            cb.decay_const(m.weight, sections)
    else:
        cb.pair(out_u, in_u, 1, rows, 1 if first else 0, sections)
        if first:
            cb.decay_pair(m.weight, out_u, in_u, 1, sections)
    if first and m.bias is not None:
        _linear_in(cb, m.bias, out_u, sections)


def _linear_in(
    cb: CostBuilder,
    param: torch.Tensor,
    units: np.ndarray | None,
    sections: frozenset[int],
    per_index: float = 1.0,
) -> None:
    """A parameter whose dim 0 follows ``units`` (bias, norm affine)."""
    if units is None or len(units) != param.shape[0]:
        cb.const(0, param.numel(), sections)
        cb.decay_const(param, sections)
        return
    cb.single(units, 0, per_index * (param.numel() // param.shape[0]), sections)
    cb.decay_single(param, units, sections)


def _per_channel_rule(attr: str):
    def rule(cb: CostBuilder, node: fx.Node, m: nn.Module, name: str, first: bool) -> None:
        if not first:
            return
        sections = cb.node_sets.get(node.name, frozenset())
        units = cb.units(f"{name}.{attr}")
        for p in (getattr(m, "weight", None), getattr(m, "bias", None)):
            if isinstance(p, nn.Parameter):
                _linear_in(cb, p, units, sections)

    return rule


register_cost(
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)(_per_channel_rule("num_features"))
register_cost(nn.GroupNorm)(_per_channel_rule("num_channels"))
register_cost(nn.LayerNorm)(_per_channel_rule("normalized_shape"))
register_cost(nn.PReLU)(_per_channel_rule("num_parameters"))


@register_cost(nn.Embedding)
def _embedding_cost(
    cb: CostBuilder, node: fx.Node, m: nn.Embedding, name: str, first: bool
) -> None:
    if not first:
        return
    sections = cb.node_sets.get(node.name, frozenset())
    units = cb.units(f"{name}.embedding_dim")
    if units is None:
        cb.const(0, m.weight.numel(), sections)
        cb.decay_const(m.weight, sections)
    else:
        cb.single(units, 0, m.num_embeddings, sections)
        cb.decay_const(m.weight, sections)


def _default_module_cost(
    cb: CostBuilder, node: fx.Node, m: nn.Module, name: str, first: bool
) -> None:
    if not first:
        return
    sections = cb.node_sets.get(node.name, frozenset())
    for p in m.parameters():
        if id(p) not in cb.seen_params:
            cb.const(0, p.numel(), sections)
            cb.decay_const(p, sections)


_FUNCTIONAL_CONV = (F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d)
_MATMUL_FUNCTIONS = (torch.matmul, operator.matmul, torch.bmm, torch.mm)


def _functional_macs(node: fx.Node, batch: int) -> float:
    """MACs of functional convs / linears / matmuls, as ``cost.py`` counts them."""
    out = node.meta.get(META_SHAPE)
    if not isinstance(out, tuple):
        return 0.0
    numel = math.prod(out)

    def shape(i: int):
        a = node.args[i] if len(node.args) > i else None
        s = a.meta.get(META_SHAPE) if isinstance(a, fx.Node) else None
        return s if isinstance(s, tuple) else None

    if node.op == "call_function" and node.target in _FUNCTIONAL_CONV and shape(1):
        return numel * math.prod(shape(1)[1:]) / batch
    if node.op == "call_function" and node.target is F.linear and shape(1):
        return numel * shape(1)[1] / batch
    if (node.op == "call_function" and node.target in _MATMUL_FUNCTIONS) or (
        node.op == "call_method" and node.target in ("matmul", "bmm", "mm")
    ):
        return numel * shape(0)[-1] / batch if shape(0) else 0.0
    return 0.0


def build_expected_cost(
    graph: ChannelGraph,
    unit_of_class: np.ndarray,
    num_units: int,
    sections_nodes: list[frozenset[str]],
) -> ExpectedCost:
    """The polynomials for ``graph.gm`` with the given unit map and gated sections
    (``sections_nodes[s]``: names of the nodes that die with section ``s``)."""
    gm = graph.gm
    node_sets: dict[str, set[int]] = {}
    for s, names in enumerate(sections_nodes):
        for n in names:
            node_sets.setdefault(n, set()).add(s)
    frozen_sets = {k: frozenset(v) for k, v in node_sets.items()}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    first_shape = placeholders[0].meta.get(META_SHAPE) if placeholders else None
    batch = first_shape[0] if isinstance(first_shape, tuple) and first_shape else 1
    cb = CostBuilder(graph, unit_of_class, num_units, frozen_sets, max(1, int(batch)))

    # a module called several times: its parameters live while any call does
    calls: dict[str, list[fx.Node]] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls.setdefault(n.target, []).append(n)
    module_sets = {
        t: frozenset.intersection(*[frozen_sets.get(n.name, frozenset()) for n in ns])
        for t, ns in calls.items()
    }
    seen_modules: set[str] = set()
    for n in gm.graph.nodes:
        if n.op == "call_module":
            m = gm.get_submodule(n.target)
            first = n.target not in seen_modules
            seen_modules.add(n.target)
            rule = _rule_for(m) or _default_module_cost
            if first and len(calls[n.target]) > 1:
                # parameters are charged with the sections every call shares
                saved = cb.node_sets.get(n.name)
                cb.node_sets[n.name] = module_sets[n.target]
                rule(cb, n, m, n.target, True)
                cb.node_sets[n.name] = saved if saved is not None else frozenset()
            else:
                rule(cb, n, m, n.target, first)
        elif n.op in ("call_function", "call_method"):
            macs = _functional_macs(n, cb.batch)
            if macs:
                cb.const(macs, 0, cb.node_sets.get(n.name, frozenset()))
        elif n.op == "get_attr":
            _get_attr_cost(cb, n)
    return cb.finish(len(sections_nodes))


def _get_attr_cost(cb: CostBuilder, node: fx.Node) -> None:
    obj: object = cb.graph.gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, nn.Parameter) or id(obj) in cb.seen_params:
        return
    sections = cb.node_sets.get(node.name, frozenset())
    dims = [(d, cb.units(f"{node.target}#{d}")) for d in range(obj.dim())]
    dims = [(d, u) for d, u in dims if u is not None]
    numel = obj.numel()
    if not dims:
        cb.const(0, numel, sections)
    elif len(dims) == 1:
        u = dims[0][1]
        cb.single(u, 0, numel / len(u), sections)
    else:  # first two labelled dims exactly, any further ones counted as full
        u0, u1 = dims[0][1], dims[1][1]
        cb.pair(u0, u1, 1, 0, numel / (len(u0) * len(u1)), sections)
    if len(dims) == 1 and dims[0][0] == 0:
        cb.decay_single(obj, dims[0][1], sections)
    else:
        cb.decay_const(obj, sections)


__all__ = ["ExpectedCost", "CostBuilder", "build_expected_cost", "register_cost", "COST_RULES"]
