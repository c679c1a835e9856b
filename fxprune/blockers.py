"""What keeps channels from being pruned, in one line.

"1.00x and an empty table" is not an answer. When a pruning run removes nothing, the user
needs to know why: ops no rule knows (which freeze what they touch), leaves (modules kept
whole: untraceable, marked by the user, or custom autograd functions), the model's
outputs, or settings that leave every group at its floor. ``describe_blockers`` names
them, most frequent first, with the node or module and what to do.

    >>> describe_blockers(graph)  # doctest: +SKIP
    'nothing to prune in Quantised: every channel is frozen. Unhandled ops: Tensor.round
    (node round_1). Frozen groups: 2 reach the model output, 1 unhandled op at node ...'
"""

from __future__ import annotations

from collections import Counter

from .analysis import ChannelGraph
from .trace import leaves_of

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


def _more(total: int) -> str:
    return f" and {total - MAX_LISTED} more" if total > MAX_LISTED else ""


__all__ = ["describe_blockers"]
