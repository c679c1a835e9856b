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
custom leaf module) is a constant times its sections. What each module contributes is its
op rule's ``expected_cost`` hook (``fxprune.ops``), written with the ``CostBuilder``
helpers below (``weight_pair``, ``vector``, ``module_const``); functional ops contribute
their rule's ``macs`` as a constant. At theta = 1 the polynomials equal
``macs_report(...).macs`` and ``count_params`` (leaf MAC estimates aside).

``ExpectedCost.l2`` is the same construction weighted by squared weights: the expected
squared norm ``E[||xi * W||^2]`` of the weights the sampled network actually uses (the
weight decay of ``train_prune``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx, nn

from ..analysis import ChannelGraph
from ..ops import module_rule_for, node_macs
from ..trace import META_SHAPE


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
    track_l2: bool = True  # False: MACs and params only (``CostModel``)

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

    def sections_of(self, node: fx.Node) -> frozenset[int]:
        """The gated sections a node dies with."""
        return self.node_sets.get(node.name, frozenset())

    # -- helpers for op rules -----------------------------------------------------------
    def weight_pair(self, node: fx.Node, first: bool, weight: torch.Tensor, out_key: str,
                    in_key: str, groups: int, macs: float, transposed: bool = False) -> None:
        """A weight connecting the spaces ``out_key`` and ``in_key`` (conv, linear), laid
        out ``(C_out, C_in/groups, ...)`` or, ``transposed``, ``(C_in, C_out/groups, ...)``;
        ``macs``: per example, of this call. Parameters and decay count on ``first``."""
        sections = self.sections_of(node)
        out_u, in_u = self.units(out_key), self.units(in_key)
        pairs = weight.shape[0] * weight.shape[1]  # (out, in) pairs over all groups
        if out_u is None or in_u is None:
            self.const(macs, weight.numel() if first else 0, sections)
            if first:
                self.decay_const(weight, sections)
            return
        self.pair(out_u, in_u, groups, macs / pairs, weight.numel() / pairs if first else 0,
                  sections)
        if first:
            rows, cols = (in_u, out_u) if transposed else (out_u, in_u)
            self.decay_pair(weight, rows, cols, groups, sections)

    def vector(self, node: fx.Node, first: bool, param: torch.Tensor | None, key: str) -> None:
        """A parameter whose dim 0 follows the space ``key`` (bias, norm affine)."""
        if not first or not isinstance(param, nn.Parameter):
            return
        sections = self.sections_of(node)
        units = self.units(key)
        if units is None or len(units) != param.shape[0]:
            self.const(0, param.numel(), sections)
            self.decay_const(param, sections)
            return
        self.single(units, 0, param.numel() // param.shape[0], sections)
        self.decay_single(param, units, sections)

    def module_const(self, node: fx.Node, module: nn.Module, first: bool,
                     macs: float = 0.0) -> None:
        """An op whose cost does not depend on the gates, only on its sections: ``macs``
        per example, and (on ``first``) every parameter not yet counted."""
        sections = self.sections_of(node)
        if macs:
            self.const(macs, 0, sections)
        if not first:
            return
        for p in module.parameters():
            if id(p) not in self.seen_params:
                self.const(0, p.numel(), sections)
                self.decay_const(p, sections)

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
        if not self._fresh(param) or not self.track_l2:
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
        if not self._fresh(param) or not self.track_l2:
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


# ------------------------------------------------------------------------------ build
def build_expected_cost(
    graph: ChannelGraph,
    unit_of_class: np.ndarray,
    num_units: int,
    sections_nodes: list[frozenset[str]],
    track_l2: bool = True,
) -> ExpectedCost:
    """The polynomials for ``graph.gm`` with the given unit map and gated sections
    (``sections_nodes[s]``: names of the nodes that die with section ``s``);
    ``track_l2=False`` skips the squared-weight terms."""
    gm = graph.gm
    node_sets: dict[str, set[int]] = {}
    for s, names in enumerate(sections_nodes):
        for n in names:
            node_sets.setdefault(n, set()).add(s)
    frozen_sets = {k: frozenset(v) for k, v in node_sets.items()}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    first_shape = placeholders[0].meta.get(META_SHAPE) if placeholders else None
    batch = first_shape[0] if isinstance(first_shape, tuple) and first_shape else 1
    cb = CostBuilder(graph, unit_of_class, num_units, frozen_sets, max(1, int(batch)),
                     track_l2=track_l2)
    modules = dict(gm.named_modules())

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
            m = modules[n.target]
            first = n.target not in seen_modules
            seen_modules.add(n.target)
            if first and len(calls[n.target]) > 1:
                # parameters are charged with the sections every call shares
                saved = cb.node_sets.get(n.name)
                cb.node_sets[n.name] = module_sets[n.target]
                _module_cost(cb, n, m, True)
                cb.node_sets[n.name] = saved if saved is not None else frozenset()
            else:
                _module_cost(cb, n, m, first)
        elif n.op in ("call_function", "call_method"):
            macs = node_macs(n, modules)
            if macs:
                cb.const(macs / cb.batch, 0, cb.sections_of(n))
        elif n.op == "get_attr":
            _get_attr_cost(cb, n)
    return cb.finish(len(sections_nodes))


def _module_cost(cb: CostBuilder, node: fx.Node, module: nn.Module, first: bool) -> None:
    rule = module_rule_for(module)
    if rule is None:  # unknown (frozen) module: its parameters, no MACs known
        cb.module_const(node, module, first)
    else:
        rule.expected_cost(cb, node, module, node.target, first)


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


__all__ = ["CostBuilder", "ExpectedCost", "build_expected_cost"]
