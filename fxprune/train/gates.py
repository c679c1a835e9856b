"""Bernoulli gates for complexity-aware training: which structures get one, and where
the gate multiplies in the traced graph.

Two kinds of structure are gated (see ``fxprune.train.trainer`` for how they are trained):

* **units**: every non-frozen channel class of the ``ChannelGraph`` (the unit that
  ``slim`` removes), one gate ``xi_c ~ Bern(theta_c)`` each;
* **sections**: a nonlinear branch added to a skip path (found by ``sections.py``).
  The branch is multiplied by the section gate just before the add; the skip path is
  never gated. Removing a section replaces the add by its skip operand; every node that
  then has no user left (``Section.nodes``) disappears with it.

Where a unit gate goes
----------------------
A gate must make the gated network with gates fixed to a keep mask equal the slim
network, i.e. ``verify.masked_forward``. Multiplying only conv outputs would not do it: a
batch norm behind the conv turns the zero back into its shift. Instead a unit gate
multiplies a tensor where its channel is *consumed*: at the input of every node that reads
the channel and whose output no longer carries it (a conv, a linear, a reduction over
channels). Ops that keep channels apart (batch norm, activations, adds, pooling, concat)
pass the ungated value along, and nothing else ever mixes a channel into the others, so
the network equals the masked one; the gradient of ``theta_c`` sums one term per consumer,
which is the chain rule for "channel ``c`` is seen by each consumer times ``xi_c``".
Channels whose masking is inexact anyway (LayerNorm statistics, softmax over channels)
are gated at every node that reads them. Parameters (``get_attr`` tensors) are never
gated: the activation they meet is.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx, nn

from fxprune.analysis import META_LABELS, ChannelGraph, iter_arrays
from fxprune.sections import Section, find_sections, remove_sections
from fxprune.trace import META_SHAPE


# ------------------------------------------------------------------------- gate points
@dataclass(frozen=True)
class GatePoint:
    """One gated copy of a tensor: ``node`` times unit gates along ``dims``."""

    node: str
    dims: tuple[int, ...]
    units: tuple[np.ndarray, ...]  # per dim: unit index per position, -1 = always on
    consumers: tuple[str, ...]


def unit_gate_points(graph: ChannelGraph, unit_of_class: np.ndarray) -> list[GatePoint]:
    """Where each gated channel is consumed (see module docstring)."""
    found: dict[tuple, tuple[str, tuple[int, ...], tuple[np.ndarray, ...], list[str]]] = {}
    inexact = graph.class_inexact
    for n in graph.gm.graph.nodes:
        if n.op in ("placeholder", "output", "get_attr") or n.meta.get(META_SHAPE) is None:
            continue
        out_arrays = list(iter_arrays(n.meta.get(META_LABELS)))
        carried = (
            np.unique(graph.atom_class[np.concatenate(out_arrays)])
            if out_arrays
            else np.zeros(0, int)
        )
        for a in dict.fromkeys(n.all_input_nodes):
            labels = a.meta.get(META_LABELS)
            if a.op == "get_attr" or not isinstance(labels, list):
                continue
            dims, units = [], []
            for d, atoms in enumerate(labels):
                if atoms is None:
                    continue
                classes = graph.atom_class[atoms]
                u = unit_of_class[classes]
                consumed = (u >= 0) & (~np.isin(classes, carried) | inexact[classes])
                if consumed.any():
                    dims.append(d)
                    units.append(np.where(consumed, u, -1))
            if not dims:
                continue
            key = (a.name, tuple(dims), tuple(x.tobytes() for x in units))
            if key not in found:
                found[key] = (a.name, tuple(dims), tuple(units), [])
            found[key][3].append(n.name)
    return [
        GatePoint(name, dims, units, tuple(consumers))
        for name, dims, units, consumers in found.values()
    ]


# ------------------------------------------------------------------------------ gates
class GateBank(nn.Module):
    """The learnable keep probabilities and the gate values of one forward pass.

    ``theta`` (units) and ``zeta`` (sections) live in [0, 1]. In training every forward
    draws fresh gates ``xi ~ Bern(theta)`` and returns ``xi + theta - theta.detach()``
    (straight-through: the value is the 0/1 sample, the gradient goes to ``theta``); in
    eval mode the gates are ``theta`` rounded. ``fixed`` overrides both (tests, oracles).
    """

    def __init__(
        self,
        theta: torch.Tensor,
        zeta: torch.Tensor,
        points: list[GatePoint],
        shapes: list[tuple[int, ...]],
        section_slots: list[int],
    ):
        super().__init__()
        self.theta = nn.Parameter(theta.detach().clone().float())
        self.zeta = nn.Parameter(zeta.detach().clone().float())
        self.fixed: tuple[torch.Tensor, torch.Tensor] | None = None
        self._views: list[list[tuple[str, tuple[int, ...]]]] = []
        for k, (point, shape) in enumerate(zip(points, shapes)):
            views = []
            for j, (d, units) in enumerate(zip(point.dims, point.units)):
                name = f"units_{k}_{j}"
                # -1 (always on) indexes the trailing constant 1 of the extended gate vector
                self.register_buffer(
                    name, torch.as_tensor(units, dtype=torch.long), persistent=False
                )
                view = [1] * len(shape)
                view[d] = len(units)
                views.append((name, tuple(view)))
            self._views.append(views)
        self.section_slots = list(section_slots)

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fixed is not None:
            return self.fixed
        if not self.training:
            return (self.theta >= 0.5).float(), (self.zeta >= 0.5).float()
        out = []
        for p in (self.theta, self.zeta):
            sample = torch.bernoulli(p.detach().clamp(0, 1))
            out.append(sample + p - p.detach())
        return out[0], out[1]

    def forward(self) -> tuple[torch.Tensor, ...]:
        units, sections = self.draw()
        extended = torch.cat([units, units.new_ones(1)])  # (U + 1,)
        gates = []
        for views in self._views:
            vector = None
            for name, view in views:
                g = extended[getattr(self, name)].view(view)
                vector = g if vector is None else vector * g
            gates.append(vector)
        gates.extend(sections[s] for s in self.section_slots)
        return tuple(gates)


GATES_TARGET = "fxprune_gates"


def build_gated_module(
    graph: ChannelGraph,
    unit_of_class: np.ndarray,
    theta: torch.Tensor,
    sections: list[Section],
    zeta: torch.Tensor,
) -> tuple[fx.GraphModule, GateBank]:
    """A GraphModule computing ``graph.gm`` with unit and section gates inserted. It shares
    every module and parameter with ``graph.gm`` (training it trains the plain model)."""
    src = graph.gm
    points = unit_gate_points(graph, unit_of_class)
    new_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    output = new_graph.graph_copy(src.graph, env)
    new_graph.output(output)
    by_name = {n.name: n for n in new_graph.nodes}
    placeholders = [n for n in new_graph.nodes if n.op == "placeholder"]
    shapes = [by_name[p.node].meta[META_SHAPE] for p in points]
    bank = GateBank(theta, zeta, points, shapes, list(range(len(sections)))).to(theta.device)
    with (
        new_graph.inserting_after(placeholders[-1])
        if placeholders
        else new_graph.inserting_before()
    ):
        gates_node = new_graph.call_module(GATES_TARGET, ())
    slot = 0
    for point in points:
        consumers = [by_name[c] for c in point.consumers]
        with new_graph.inserting_before(consumers[0]):
            g = new_graph.call_function(operator.getitem, (gates_node, slot))
            gated = new_graph.call_function(operator.mul, (by_name[point.node], g))
        for c in consumers:
            c.replace_input_with(by_name[point.node], gated)
        slot += 1
    for section in sections:
        add = by_name[section.key]
        branch = by_name[section.branch]
        with new_graph.inserting_before(add):
            g = new_graph.call_function(operator.getitem, (gates_node, slot))
            gated = new_graph.call_function(operator.mul, (branch, g))
        add.replace_input_with(branch, gated)
        slot += 1
    root: dict[str, object] = {GATES_TARGET: bank}
    for n in new_graph.nodes:
        if n.op == "call_module" and n.target != GATES_TARGET:
            root[n.target] = src.get_submodule(n.target)
        elif n.op == "get_attr":
            obj: object = src
            for part in n.target.split("."):
                obj = getattr(obj, part)
            root[n.target] = obj
    new_graph.lint()
    gated_gm = fx.GraphModule(root, new_graph, "Gated" + type(src).__name__)
    return gated_gm, bank


__all__ = [
    "GATES_TARGET",
    "GateBank",
    "GatePoint",
    "Section",
    "build_gated_module",
    "find_sections",
    "remove_sections",
    "unit_gate_points",
]
