"""Selection under a latency budget, from a measured ``LatencyTable``.

Each prunable group has candidate widths: on the table's model of the layers it touches
(producers padded up to their runtime block, consumers' input side as measured), the
widths that run faster than every wider one, and its full width; never below its floor
(``ceil(min_ratio * size)``, its frozen channels, one). Within a group the best-scored
channels are kept, so a width fixes which channels stay.

The latency of a keep state is the sum over conv/linear layers of the table's model at
the layer's kept input and output widths, times ``scale``, plus ``act_ms`` per million
elements each layer writes at its padded width (the work between layers; both from
``LatencyModel``, set with ``set_costs``; 1 and 0 = the table alone). Greedy: start dense; repeatedly take the step
(one group down to a lower candidate width) that loses the least score per millisecond
saved, given the current widths of every other group, until the predicted latency is
within the budget; then steps back up that still fit (the last step down usually
overshoots), most score per millisecond first. Steps that would take any layer dimension below its own floor are
not taken. Only the groups sharing a layer with the one that moved are re-evaluated.
What the budget maximises (``objective``): ``score``, the scorer's total, or ``capacity``,
the MACs kept, each channel's MACs weighted by its score relative to its group's mean
(``capacity_scores``). With ``capacity`` the greedy loses the fewest MACs per millisecond
saved, so the budget goes to the layers that run the most MACs per millisecond on this
runtime; the scorer still decides which channels of a group stay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fxprune.cost import CostModel

from .latency_table import LatencyTable, LayerSpec

OBJECTIVES = ("score", "capacity")  # what a latency budget maximises (module doc)
LOOKAHEAD = 8  # lower candidate widths considered per group and step
EFFICIENT_GAIN = 0.005  # a width is a candidate if it runs >= 0.5% faster than every wider one


def capacity_scores(graph, scores) -> np.ndarray:
    """The ``capacity`` objective's class values: a class's MACs (its share of the MACs
    that depend on channels, ``CostModel.class_costs(split=True)``) times its score over
    the mean score of its group. Within a group the order is the scorer's; across groups
    a channel of average score is worth the compute it carries. A group whose scores are
    all zero (or not finite) counts every class at its MACs."""
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    macs = CostModel(graph).class_costs(split=True)
    values = np.array(macs, dtype=np.float64)
    for group in graph.groups:
        classes = np.asarray(group.classes)
        mean = float(np.abs(scores[classes]).mean()) if len(classes) else 0.0
        if mean > 0:
            values[classes] = macs[classes] * np.abs(scores[classes]) / mean
    return values


@dataclass
class _Layer:
    name: str
    spec: LayerSpec
    in_space: str | None
    out_space: str | None


class LatencySelector:
    """Greedy score-per-millisecond selection over one channel graph and one table."""

    def __init__(self, graph, specs: dict[str, LayerSpec], scores: np.ndarray, table: LatencyTable,
                 min_ratio: float, round_to: int | None = None):  # fmt: skip
        self.graph, self.table = graph, table
        self.scale, self.act_ms = 1.0, 0.0
        self.round_to = round_to
        self.last_widths: list[int] | None = None
        scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0, posinf=1e300, neginf=-1e300)
        self.layers = []
        for name, spec in specs.items():
            out_key, in_key = (f"{name}.out_features", f"{name}.in_features") if spec.kind == "linear" \
                else (f"{name}.out_channels", f"{name}.in_channels")  # fmt: skip
            self.layers.append(_Layer(name, spec, in_key if in_key in graph.spaces else None,
                                      out_key if out_key in graph.spaces else None))  # fmt: skip
        self.groups = [g for g in graph.groups if g.prunable]
        index_of = {g.id: i for i, g in enumerate(self.groups)}
        # per group: class order (frozen first, then best score first), prefix score sums
        self.order, self.prefix, self.floor = [], [], []
        for group in self.groups:
            classes = np.asarray(group.classes)
            frozen = graph.class_frozen[classes]
            order = np.lexsort((classes, -scores[classes], ~frozen))
            ordered = classes[order]
            self.order.append(ordered)
            self.prefix.append(np.concatenate([[0.0], np.cumsum(scores[ordered])]))
            self.floor.append(max(1, int(frozen.sum()), math.ceil(min_ratio * group.size - 1e-9)))
        # per space: atoms of classes outside prunable groups (fixed) + per group prefix counts
        self.space_fixed: dict[str, int] = {}
        self.space_cum: dict[str, list[tuple[int, np.ndarray]]] = {}
        self.space_floor: dict[str, int] = {}
        self.group_spaces: list[set[str]] = [set() for _ in self.groups]
        for key, space in graph.spaces.items():
            atom_classes = graph.atom_class[space.atoms]
            groups_here = graph.class_group[atom_classes]
            fixed = 0
            cums = []
            for gid in np.unique(groups_here):
                i = index_of.get(int(gid))
                in_group = atom_classes[groups_here == gid]
                if i is None:
                    fixed += len(in_group)
                    continue
                counts = dict(zip(*np.unique(in_group, return_counts=True)))
                per_class = np.array([counts.get(c, 0) for c in self.order[i]])
                cums.append((i, np.concatenate([[0], np.cumsum(per_class)])))
                self.group_spaces[i].add(key)
            self.space_fixed[key], self.space_cum[key] = fixed, cums
            self.space_floor[key] = max(1, math.ceil(min_ratio * len(atom_classes) - 1e-9))
        self.group_layers: list[list[int]] = [[] for _ in self.groups]
        for li, layer in enumerate(self.layers):
            for key in (layer.in_space, layer.out_space):
                for i, _ in self.space_cum.get(key, []) if key else []:
                    if li not in self.group_layers[i]:
                        self.group_layers[i].append(li)
        self.candidates = [self._candidates(i, round_to) for i in range(len(self.groups))]

    # ---- widths
    def _candidates(self, i: int, round_to: int | None) -> list[int]:
        """The widths worth having: those no wider width runs (nearly) as fast, on the
        table's model of the layers this group touches (other groups dense)."""
        size, floor = self.groups[i].size, self.floor[i]
        widths = self.dense_widths()
        allowed = [w for w in range(floor, size + 1) if not round_to or w % round_to == 0 or w == size]
        curve = {}
        for width in allowed:
            widths[i] = width
            curve[width] = sum(self.layer_ms(li, widths) for li in self.group_layers[i])
        efficient, fastest_wider = [], float("inf")
        for width in sorted(curve, reverse=True):
            if width == size or curve[width] < fastest_wider * (1 - EFFICIENT_GAIN):
                efficient.append(width)
            fastest_wider = min(fastest_wider, curve[width])
        return sorted(efficient)

    def set_costs(self, scale: float, act_ms: float) -> None:
        """Cost = ``scale`` x table + ``act_ms`` per million output elements; the
        candidate widths are recomputed (activations make every width save something)."""
        if (scale, act_ms) != (self.scale, self.act_ms):
            self.scale, self.act_ms = float(scale), float(act_ms)
            self.candidates = [self._candidates(i, self.round_to) for i in range(len(self.groups))]

    def features(self, widths: list[int]) -> tuple[float, float]:
        """(table ms, millions of output elements) summed over the layers at ``widths``."""
        table_ms = acts = 0.0
        for layer in self.layers:
            cin, cout = self._layer_widths(layer, widths)
            table_ms += self.table.layer_ms(layer.spec, cin, cout)
            acts += self._activations(layer.spec, cout)
        return table_ms, acts

    def space_width(self, key: str, widths: list[int]) -> int:
        return self.space_fixed[key] + sum(int(cum[widths[i]]) for i, cum in self.space_cum[key])

    def _layer_widths(self, layer: _Layer, widths: list[int]) -> tuple[int, int]:
        cout = self.space_width(layer.out_space, widths) if layer.out_space else layer.spec.out_channels
        cin = self.space_width(layer.in_space, widths) if layer.in_space else layer.spec.in_channels
        return cin, cout

    def layer_ms(self, li: int, widths: list[int]) -> float:
        layer = self.layers[li]
        cin, cout = self._layer_widths(layer, widths)
        cost = self.scale * self.table.layer_ms(layer.spec, cin, cout)
        if self.act_ms:
            cost += self.act_ms * self._activations(layer.spec, cout)
        return cost

    def _activations(self, spec: LayerSpec, cout: int) -> float:
        """Millions of elements a layer writes, at the width the runtime stores: blocked
        (NCHWc) tensors are padded to the block like the kernels, so an activation term
        never makes a width off the block look worth having."""
        return spec.output_elements(self.table.padded(spec, "out", cout)) / 1e6

    def predict(self, widths: list[int]) -> float:
        return sum(self.layer_ms(li, widths) for li in range(len(self.layers)))

    def dense_widths(self) -> list[int]:
        return [g.size for g in self.groups]

    def keep(self, widths: list[int]) -> np.ndarray:
        keep = np.ones(self.graph.num_classes, dtype=bool)
        for i, order in enumerate(self.order):
            keep[order[widths[i]:]] = False
        return keep

    # ---- greedy
    def select(self, budget: float) -> tuple[np.ndarray, float]:
        """Keep mask whose predicted latency is <= ``budget`` x dense (or as close as the
        floors allow) and the predicted fraction."""
        widths = self.dense_widths()
        times = [self.layer_ms(li, widths) for li in range(len(self.layers))]
        dense = sum(times)
        total = dense
        best = {i: self._best_step(i, widths, times) for i in range(len(self.groups))}
        while total > budget * dense:
            moves = [(step[0], i) for i, step in best.items() if step is not None]
            if not moves:
                break
            _, i = min(moves)
            widths[i] = best[i][1]
            affected = set()
            for li in self.group_layers[i]:
                new = self.layer_ms(li, widths)
                total += new - times[li]
                times[li] = new
            for li in self.group_layers[i]:
                for j in range(len(self.groups)):
                    if li in self.group_layers[j]:
                        affected.add(j)
            for j in affected | {i}:
                best[j] = self._best_step(j, widths, times)
        if total <= budget * dense:
            total = self._fill(widths, budget * dense)
        self.last_widths = list(widths)
        return self.keep(widths), total / dense if dense else 1.0

    def _fill(self, widths: list[int], limit: float) -> float:
        """The greedy's last step down often overshoots the budget: give back the steps up
        (most score per millisecond first) that still fit under ``limit``."""
        while True:
            times = [self.layer_ms(li, widths) for li in range(len(self.layers))]
            total = sum(times)
            best = None
            for i, candidates in enumerate(self.candidates):
                current = widths[i]
                before = sum(times[li] for li in self.group_layers[i])
                for width in [w for w in candidates if w > current][:LOOKAHEAD]:
                    widths[i] = width
                    grown = total - before + sum(self.layer_ms(li, widths) for li in self.group_layers[i])
                    widths[i] = current
                    gained = self.prefix[i][width] - self.prefix[i][current]
                    if grown <= limit and gained > 0:
                        rate = gained / max(grown - total, 1e-9)
                        if best is None or rate > best[0]:
                            best = (rate, i, width)
            if best is None:
                return total
            widths[best[1]] = best[2]

    def _best_step(self, i: int, widths: list[int], times: list[float]):
        """(score lost per ms saved, new width) of group ``i``'s best step down, or None."""
        current = widths[i]
        lower = [w for w in self.candidates[i] if w < current][-LOOKAHEAD:]
        if not lower:
            return None
        before = sum(times[li] for li in self.group_layers[i])
        best = None
        for width in lower:
            widths[i] = width
            if all(self.space_width(k, widths) >= self.space_floor[k] for k in self.group_spaces[i]):
                saved = before - sum(self.layer_ms(li, widths) for li in self.group_layers[i])
                if saved > 1e-9:
                    lost = self.prefix[i][current] - self.prefix[i][width]
                    rate = lost / saved
                    if best is None or rate < best[0]:
                        best = (rate, width)
        widths[i] = current
        return best


__all__ = ["OBJECTIVES", "LatencySelector", "capacity_scores"]
