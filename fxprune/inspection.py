"""``InspectReport``: the channel groups of a model, as data that renders itself; and the
per-layer width table the CLI prints after pruning."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from .api import analyze
from .cost import CostModel, count_params
from .ops import build_channel_graph
from .ops.heads import describe_blocks, head_blocks
from .partial import PartsReport, inspect_parts, needs_descent
from .trace import UntraceableRoot, leaves_of


@dataclass
class InspectReport:
    model: str
    params: int
    macs: int
    groups: list[dict[str, Any]]
    unhandled: list[dict[str, str]]
    leaves: list[dict[str, str]] = field(default_factory=list)  # modules kept whole (trace.Leaf)
    max_members: int = 4
    extra: dict[str, Any] = field(default_factory=dict)
    # one row per attention block (fxprune.ops.heads.describe_blocks)
    attention: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "params": self.params, "macs": self.macs,
                "groups": self.groups, "unhandled_ops": self.unhandled, "leaves": self.leaves,
                "attention": self.attention}

    def __rich__(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        t = Table(title=f"channel groups of {self.model}", title_justify="left")
        for col, kw in [("id", {"justify": "right"}), ("members", {}), ("channels", {"justify": "right"}),
                        ("FLOPs share", {"justify": "right"}), ("status", {})]:
            t.add_column(col, **kw)
        for g in self.groups:
            members = g["members"]
            shown = ", ".join(members[: self.max_members])
            if len(members) > self.max_members:
                shown += f", ... (+{len(members) - self.max_members})"
            if g["prunable"]:
                status = "[green]prunable[/]"
                if g["pinned"]:
                    status += f" ({g['pinned']} pinned)"
                if g["inexact"]:
                    status += " [yellow]~inexact[/]"
            else:
                status = f"[red]frozen[/]: {g['frozen_reason']}"
            t.add_row(str(g["id"]), shown, str(g["size"]), f"{100 * g['flops_share']:.1f}%", status)
        prunable = sum(g["size"] for g in self.groups if g["prunable"])
        total = sum(g["size"] for g in self.groups)
        lines = [t, Text(f"params {self.params:,}   MACs {self.macs:,}   groups {len(self.groups)}   "
                         f"prunable channels {prunable:,} of {total:,}")]
        if self.attention:
            lines.append(attention_table(self.attention))
        if self.unhandled:
            u = Table(title="ops that froze channels (no handler)", title_justify="left")
            u.add_column("node")
            u.add_column("op")
            u.add_column("reason")
            for op in self.unhandled:
                u.add_row(op["node"], op["target"], op["reason"])
            lines.append(u)
        if self.leaves:
            leaf_table = Table(title="modules kept whole (leaves: their input and output channels are kept)",
                               title_justify="left")
            for col in ("module", "type", "why", "where"):
                leaf_table.add_column(col)
            for leaf in self.leaves:
                leaf_table.add_row(leaf["qualname"], leaf["type_name"], leaf["reason"], leaf["where"])
            lines.append(leaf_table)
        return Group(*lines)


def attention_table(rows: list[dict[str, Any]], max_rows: int = 40):
    """Heads per attention block, and whether head dims / whole heads can be pruned."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="attention heads per block (can --heads dims / whole prune them?)",
              title_justify="left")
    for col, kw in [("block", {"overflow": "fold"}), ("heads", {"justify": "right"}),
                    ("head dim", {"justify": "right"}), ("kv heads", {"justify": "right"}),
                    ("head dims", {}), ("whole heads", {})]:
        t.add_column(col, **kw)

    def status(text: str | None) -> str:
        if text is None:
            return "-"
        return "[green]prunable[/]" if text == "prunable" else f"[red]{text.partition(':')[0]}[/]:{escape(text.partition(':')[2])}"

    for row in rows[:max_rows]:
        t.add_row(row["block"], str(row["heads"]), str(row["head_dim"]),
                  str(row["kv_heads"]) if row["kv_heads"] else "-", status(row["dims"]),
                  status(row["whole_heads"]))
    if len(rows) > max_rows:
        t.add_row(f"... {len(rows) - max_rows} more", "", "", "", "", "")
    return t


def inspect_model(model, example_inputs, leaf_modules=(),
                  name: str | None = None) -> InspectReport | PartsReport:
    """The channel groups of ``model``; for a model whose own forward does not trace, a
    ``PartsReport``: the same report for each submodule that traces (``fxprune.partial``)."""
    try:
        graph = analyze(model, example_inputs, leaf_modules)
    except UntraceableRoot as root_error:
        return inspect_parts(model, example_inputs, inspect_model, leaf_modules, root_error, name)
    if needs_descent(graph):  # as prune does: the layers sit in containers that do not trace
        try:
            return inspect_parts(model, example_inputs, inspect_model, leaf_modules, None, name)
        except UntraceableRoot:
            pass  # no part inside traces: the whole-model report says what is frozen
    cost = CostModel(graph, example_inputs)
    class_cost = cost.class_costs(split=True)
    total = max(1.0, float(cost.total))
    groups = []
    for g in graph.groups:
        groups.append({
            "id": g.id,
            "members": list(g.members),
            "size": g.size,
            "prunable": g.prunable,
            "pinned": g.frozen_classes if g.prunable else 0,
            "frozen_reason": None if g.prunable else g.frozen_reason,
            "inexact": g.inexact_reason,
            "flops_share": float(np.sum(class_cost[g.classes]) / total),
        })
    attention = []
    blocks = head_blocks(graph)
    if blocks:  # whole heads couple differently: label the same traced graph once more
        whole = build_channel_graph(graph.gm, {"heads": "whole"})  # graph.gm's labels are now whole's
        attention = describe_blocks(graph, whole, blocks)
    return InspectReport(
        model=name or type(model).__name__,
        params=count_params(model),
        macs=round(cost.total),
        groups=groups,
        unhandled=[u.__dict__ for u in graph.unhandled],
        leaves=[leaf.to_dict() for leaf in leaves_of(graph.gm)],
        attention=attention,
    )


_WIDTH_ATTRS = ("out_channels", "out_features", "embedding_dim")


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every conv/linear/norm module, by qualified name."""
    out = {}
    for name, m in model.named_modules():
        for attr in _WIDTH_ATTRS:
            value = getattr(m, attr, None)
            if isinstance(value, int):
                out[name] = value
                break
    return out


def widths_table(dense: nn.Module, result, max_rows: int = 40):
    """Per-layer widths before/after for layers that changed."""
    from rich.table import Table

    before, after = layer_widths(dense), layer_widths(result.model)
    t = Table(title="layer widths (changed layers)", title_justify="left")
    t.add_column("layer")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    t.add_column("kept", justify="right")
    changed = [(n, before[n], after[n]) for n in before if n in after and after[n] != before[n]]
    for name, b, a in changed[:max_rows]:
        t.add_row(name, str(b), str(a), f"{100 * a / b:.0f}%")
    if len(changed) > max_rows:
        t.add_row(f"... {len(changed) - max_rows} more", "", "", "")
    return t


__all__ = ["InspectReport", "attention_table", "inspect_model", "layer_widths", "widths_table"]
