"""The running model of complexity-aware training: its channel graph, gates, expected-cost
polynomials and the bookkeeping that removes structure while training (``PruningState``).

Units are identified across re-analyses by their class id in the ORIGINAL graph
(``orig_of_class``), sections by their add node's name.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import fx, nn

from fxprune.analysis import ChannelGraph
from fxprune.cost.expected import ExpectedCost, build_expected_cost
from fxprune.ops import build_channel_graph
from fxprune.sections import Section, find_sections, remove_sections
from fxprune.surgery import kept_indices, slim
from fxprune.trace import trace_model
from fxprune.train.gates import build_gated_module


class PruningState:
    """The running model: its channel graph, gates, cost polynomials and bookkeeping.

    Units are identified across re-analyses by their class id in the ORIGINAL graph
    (``orig_of_class``), sections by their add node's name.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: tuple,
        *,
        learn_units: bool = True,
        learn_sections: bool = True,
        theta_init: float = 1.0,
    ):
        self.inputs = example_inputs
        self.learn_units = learn_units
        self.learn_sections = learn_sections
        self.theta_init = theta_init
        gm = trace_model(model, example_inputs)
        self.original = build_channel_graph(gm)
        self.original_sections = find_sections(self.original.gm)
        self.removed: list[Section] = []
        self.theta_of: dict[int, float] = {}  # original class id -> probability
        self.zeta_of: dict[str, float] = {}  # section key -> probability
        self.below_units: dict[int, int] = {}  # consecutive checks below the threshold
        self.below_sections: dict[str, int] = {}
        # the running copy: slim needs a graph whose gm it may deep-copy, so analyse anew
        running = build_channel_graph(trace_model(self.original.gm, example_inputs))
        running.gm.train(model.training)
        self._install(running, np.arange(running.num_classes))
        self.initial_units = [int(c) for c in self.orig_of_class[self.units]]
        self.initial_unit_groups = [int(self.graph.class_group[c]) for c in self.units]
        self.initial_sections = list(self.sections)
        self.initial_prunable = self.prunable_channels()

    # -- building -----------------------------------------------------------------------
    def _install(self, graph: ChannelGraph, orig_of_class: np.ndarray) -> None:
        self.graph = graph
        self.orig_of_class = orig_of_class
        self.units = (
            np.flatnonzero(~graph.class_frozen) if self.learn_units else np.zeros(0, dtype=np.int64)
        )
        self.unit_of_class = np.full(graph.num_classes, -1, dtype=np.int64)
        self.unit_of_class[self.units] = np.arange(len(self.units))
        self.sections = find_sections(graph.gm)
        self.gated_sections = self.sections if self.learn_sections else []
        theta = torch.tensor(
            [self.theta_of.get(int(orig_of_class[c]), self.theta_init) for c in self.units],
            dtype=torch.float32,
        )
        zeta = torch.tensor(
            [self.zeta_of.get(s.key, self.theta_init) for s in self.gated_sections],
            dtype=torch.float32,
        )
        device = device_of(graph.gm)
        self.gated, self.bank = build_gated_module(
            graph, self.unit_of_class, theta.to(device), self.gated_sections, zeta.to(device)
        )
        self.gated.train(graph.gm.training)
        self.cost: ExpectedCost = build_expected_cost(
            graph, self.unit_of_class, len(self.units), [s.nodes for s in self.gated_sections]
        ).to(device)
        self._inside_cache: dict[frozenset[str], np.ndarray] = {}

    @property
    def plain(self) -> fx.GraphModule:
        """The running model without gates (shares its parameters with ``gated``)."""
        return self.graph.gm

    def sync(self) -> None:
        """Store the current probabilities under their stable ids."""
        for c, t in zip(self.units, self.bank.theta.detach().cpu().tolist()):
            self.theta_of[int(self.orig_of_class[c])] = t
        for s, z in zip(self.gated_sections, self.bank.zeta.detach().cpu().tolist()):
            self.zeta_of[s.key] = z

    def live_units(self) -> int:
        return len(self.units)

    def prunable_channels(self) -> int:
        """Channel classes of the running model that could be pruned (gated or not)."""
        return int((~self.graph.class_frozen).sum())

    # -- pruning ------------------------------------------------------------------------
    def check(self, threshold: float, patience: int) -> dict[str, Any] | None:
        """One pruning check; removes what stayed below ``threshold`` ``patience`` times."""
        self.sync()
        theta = self.bank.theta.detach().cpu().numpy()
        zeta = self.bank.zeta.detach().cpu().numpy()
        dead_units = np.zeros(len(self.units), dtype=bool)
        for u, c in enumerate(self.units):
            key = int(self.orig_of_class[c])
            count = self.below_units.get(key, 0) + 1 if theta[u] < threshold else 0
            self.below_units[key] = count
            dead_units[u] = count >= patience
        dead_sections = np.zeros(len(self.gated_sections), dtype=bool)
        for i, s in enumerate(self.gated_sections):
            count = self.below_sections.get(s.key, 0) + 1 if zeta[i] < threshold else 0
            self.below_sections[s.key] = count
            dead_sections[i] = count >= patience
        return self.remove(dead_units, dead_sections)

    def round(self) -> dict[str, Any] | None:
        """Final rounding: everything below one half goes."""
        self.sync()
        theta = self.bank.theta.detach().cpu().numpy()
        zeta = self.bank.zeta.detach().cpu().numpy()
        return self.remove(theta < 0.5, zeta < 0.5)

    def _inside(self, modules: frozenset[str], nodes: frozenset[str]) -> np.ndarray:
        """Bool per class: every space carrying it belongs to the given modules/nodes."""
        key = modules | nodes
        if key in self._inside_cache:
            return self._inside_cache[key]
        g = self.graph
        attr_nodes = {n.target for n in g.gm.graph.nodes if n.op == "get_attr" and n.name in nodes}
        seen = np.zeros(g.num_classes, dtype=bool)
        outside = np.zeros(g.num_classes, dtype=bool)
        for space in g.spaces.values():
            cls = g.atom_class[space.atoms]
            within = space.owner in modules if space.kind == "module" else space.owner in attr_nodes
            (seen if within else outside)[cls] = True
        result = seen & ~outside
        self._inside_cache[key] = result
        return result

    def remove(self, dead_units: np.ndarray, dead_sections: np.ndarray) -> dict[str, Any] | None:
        """Remove the given units (bool per unit) and gated sections (bool per section)."""
        g = self.graph
        keep = np.ones(g.num_classes, dtype=bool)
        keep[self.units[dead_units]] = False
        cut = [s for s, d in zip(self.gated_sections, dead_sections) if d]
        cut_by_units = []
        if self.learn_sections:
            for s in self.gated_sections:
                if s in cut:
                    continue
                inside = self._inside(frozenset(s.modules), s.nodes)
                for group in g.groups:
                    cls = group.classes
                    if inside[cls].all() and not keep[cls].any():
                        cut_by_units.append(s)
                        break
        cut += cut_by_units
        if cut:  # what lives only inside a cut section goes with it, not through slim
            modules = frozenset(m for s in cut for m in s.modules)
            nodes = frozenset(n for s in cut for n in s.nodes)
            keep[self._inside(modules, nodes)] = True
        theta = np.ones(g.num_classes)
        theta[self.units] = self.bank.theta.detach().cpu().numpy()
        revived = []
        for space in g.spaces.values():  # never remove the last channel of a dimension
            cls = g.atom_class[space.atoms]
            if not keep[cls].any():
                candidates = np.unique(cls)
                best = int(candidates[np.argmax(theta[candidates])])
                keep[best] = True
                revived.append(best)
                self.below_units[int(self.orig_of_class[best])] = 0
        if keep.all() and not cut:
            return None
        event = {
            "units": int((~keep).sum()),
            "sections": [s.name for s in cut],
            "sections_by_units": [s.name for s in cut_by_units],
            "kept_last_channel": len(revived),
        }
        self._restructure(keep, cut)
        return event

    def _restructure(self, keep: np.ndarray, cut: list[Section]) -> None:
        g = self.graph
        self.sync()
        was_training = self.gated.training
        new = slim(g, keep)
        if cut:
            remove_sections(new, cut)
            self.removed += cut
        new.train(was_training)
        kept = kept_indices(g, keep)
        new_graph = build_channel_graph(trace_model(new, self.inputs))
        new_graph.gm.train(was_training)
        orig = np.full(new_graph.num_classes, -1, dtype=np.int64)
        for key, space in new_graph.spaces.items():
            old = g.spaces.get(key)
            if old is None:
                continue
            positions = kept.get(key, np.arange(len(old.atoms)))
            if len(positions) != len(space.atoms):
                continue
            old_classes = g.atom_class[old.atoms[positions]]
            new_classes = new_graph.atom_class[space.atoms]
            fresh = orig[new_classes] < 0
            orig[new_classes[fresh]] = self.orig_of_class[old_classes[fresh]]
        self._install(new_graph, orig)

    # -- reporting ----------------------------------------------------------------------
    def original_keep(self) -> np.ndarray:
        keep = np.zeros(self.original.num_classes, dtype=bool)
        alive = self.orig_of_class[self.orig_of_class >= 0]
        keep[alive] = True
        return keep

    def theta_snapshot(self) -> tuple[list[float], list[float]]:
        self.sync()
        alive_units = {int(self.orig_of_class[c]) for c in self.units}
        alive_sections = {s.key for s in self.sections}
        theta = [
            round(self.theta_of.get(u, self.theta_init), 4) if u in alive_units else 0.0
            for u in self.initial_units
        ]
        zeta = [
            round(self.zeta_of.get(s.key, 1.0), 4) if s.key in alive_sections else 0.0
            for s in self.initial_sections
        ]
        return theta, zeta


def device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


__all__ = ["PruningState", "device_of"]
