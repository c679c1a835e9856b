"""What keeps channels from being pruned: in one line when nothing could be pruned
(``describe_blockers``), and as a list after a successful run (``kept_whole``).

"1.00x and an empty table" is not an answer. When a pruning run removes nothing, the user
needs to know why: ops no rule knows (which freeze what they touch), leaves (modules kept
whole: untraceable, marked by the user, or custom autograd functions), the model's
outputs, or settings that leave every group at its floor. ``describe_blockers`` names
them, most frequent first, with the node or module and what to do.

    >>> describe_blockers(graph)  # doctest: +SKIP
    'nothing to prune in Quantised: every channel is frozen. Unhandled ops: Tensor.round
    (node round_1). Frozen groups: 2 reach the model output, 1 unhandled op at node ...'

After a run that did prune, ``kept_whole(result)`` lists what was left whole on purpose:
the leaves (module, kind, reason, the user's source line that made it one) and, for a
model pruned part by part, the submodules that were not pruned and why (untraceable,
nothing prunable, failed the oracle and kept dense). ``fxprune prune`` prints it and
writes it into summary.json.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .analysis import ChannelGraph
from .trace import Leaf, leaves_of

MAX_LISTED = 5


def describe_blockers(graph: ChannelGraph) -> str:
    """One line: why nothing (or nothing more) can be pruned in ``graph``."""
    name = type(graph.gm).__name__
    prunable = graph.prunable_groups()
    if prunable:
        free = int(sum(g.size - g.frozen_classes for g in prunable))
        return (f"nothing to prune in {name}: {len(prunable)} groups with {free} prunable channels, "
                "but the ratio, min_ratio, round_to or target keep all of them. Fix: raise --ratio "
                "or lower --min-ratio / --round-to.")
    parts = [f"nothing to prune in {name}: every channel is frozen."]
    unhandled = Counter(u.target for u in graph.unhandled)
    if unhandled:
        first_node = {u.target: u.node for u in reversed(graph.unhandled)}
        listed = [f"{target} (node {first_node[target]}{f', {n} calls' if n > 1 else ''})"
                  for target, n in unhandled.most_common(MAX_LISTED)]
        parts.append("Unhandled ops: " + ", ".join(listed) + _more(len(unhandled)) + ".")
    leaves = leaves_of(graph.gm)
    if leaves:
        parts.append("Leaves (kept whole): " + "; ".join(str(leaf) for leaf in leaves[:MAX_LISTED])
                     + _more(len(leaves)) + ".")
    reasons = Counter(g.frozen_reason or "frozen" for g in graph.groups)
    if reasons:
        parts.append("Frozen groups: " + ", ".join(f"{n} x {reason}" for reason, n in reasons.most_common(MAX_LISTED))
                     + _more(len(reasons)) + ".")
    parts.append("Fix: register a rule for the unhandled ops (fxprune.ops), or mark fewer modules "
                 "as leaves.")
    return " ".join(parts)


@dataclass
class KeptWhole:
    """Modules a successful run left whole: ``leaves`` (``trace.Leaf``) and ``not_pruned``
    ``(module, why)`` (parts of an untraceable root). Renders itself; ``to_dict`` is what
    summary.json records."""

    leaves: list[Leaf] = field(default_factory=list)
    not_pruned: list[tuple[str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.leaves or self.not_pruned)

    def to_dict(self) -> dict[str, Any]:
        return {"leaves": [leaf.to_dict() for leaf in self.leaves],
                "not_pruned": [{"module": module, "reason": why} for module, why in self.not_pruned]}

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table

        tables = []
        if self.leaves:
            t = Table(title=f"kept whole: {len(self.leaves)} leaves (their input and output channels are kept)",
                      title_justify="left")
            for col in ("module", "type", "kind", "why", "where"):
                t.add_column(col)
            for leaf in self.leaves:
                t.add_row(leaf.qualname, leaf.type_name, leaf.kind, leaf.reason, leaf.where)
            tables.append(t)
        if self.not_pruned:
            t = Table(title=f"not pruned: {len(self.not_pruned)} modules (they run as they were)",
                      title_justify="left")
            t.add_column("module")
            t.add_column("why")
            for module, why in self.not_pruned:
                t.add_row(module, why)
            tables.append(t)
        return Group(*tables)


def kept_whole(result: Any) -> KeptWhole:
    """What ``result`` (an ``api.PruneResult`` or a ``partial.PartialPruneResult``) left
    whole: the leaves of its traced graph(s) and the parts it did not prune."""
    if hasattr(result, "parts"):  # pruned part by part: leaves are named from the root
        return KeptWhole(list(result.leaves), list(result.skipped))
    gm = getattr(getattr(result, "graph", None), "gm", None)
    return KeptWhole(leaves_of(gm) if gm is not None else [])


def _more(total: int) -> str:
    return f" and {total - MAX_LISTED} more" if total > MAX_LISTED else ""


__all__ = ["KeptWhole", "describe_blockers", "kept_whole"]
