"""Residual sections: a nonlinear branch added to a skip path, which complexity-aware
training may gate and ``apply_plan`` may remove.

Found in the fx graph as an ``add`` whose one operand reaches a node ``X`` through
identity or a linear shortcut (1x1 conv, batch norm, average pooling) while ``X`` also
feeds the other operand, the branch. Removing a section replaces the add by its skip
operand; every node that then has no user left (``Section.nodes``) disappears with it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx, nn

from .trace import META_SHAPE

# modules a skip path may pass through: linear maps of the block input
_LINEAR_SHORTCUT_MODULES = (
    nn.Identity,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ("add", "add_", "__add__", "__iadd__")
_MAX_SKIP_DEPTH = 6


# ---------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class Section:
    """A residual section: ``add(branch, skip)`` where the branch can be dropped."""

    key: str  # name of the add node (stable through slim and re-tracing)
    name: str  # display name: the modules' common qualname prefix ("layer1.0")
    branch: str  # node name of the branch operand
    skip: str  # node name of the skip operand
    nodes: frozenset[str]  # nodes that die when the branch is cut
    modules: tuple[str, ...]  # call_module targets among them

    def to_dict(self) -> dict:
        return {"name": self.name, "add": self.key, "modules": list(self.modules)}


def _add_operands(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        if node.kwargs.get("alpha", 1) != 1 or len(node.args) != 2:
            return None
    elif not (node.op == "call_method" and node.target in _ADD_METHODS and len(node.args) == 2):
        return None
    a, b = node.args
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)) or a is b:
        return None
    shape = node.meta.get(META_SHAPE)
    if (
        not isinstance(shape, tuple)
        or a.meta.get(META_SHAPE) != shape
        or b.meta.get(META_SHAPE) != shape
    ):
        return None
    return a, b


def _is_linear_shortcut(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op != "call_module" or len(node.all_input_nodes) != 1:
        return False
    module = modules[node.target]
    if isinstance(module, _LINEAR_SHORTCUT_MODULES):
        return True
    return isinstance(module, nn.modules.conv._ConvNd) and all(k == 1 for k in module.kernel_size)


def _skip_source(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node:
    """Follow identity/linear shortcut modules back to the block input."""
    for _ in range(_MAX_SKIP_DEPTH):
        if not _is_linear_shortcut(node, modules):
            break
        node = node.all_input_nodes[0]
    return node


def _is_ancestor(x: fx.Node, node: fx.Node, position: dict[fx.Node, int]) -> bool:
    stack, seen = [node], {node}
    while stack:
        n = stack.pop()
        for a in n.all_input_nodes:
            if a is x:
                return True
            if a not in seen and position[a] > position[x]:
                seen.add(a)
                stack.append(a)
    return False


def _dead_with_branch(
    add: fx.Node, branch: fx.Node, order: list[fx.Node], position: dict[fx.Node, int]
) -> set[fx.Node]:
    """Nodes whose every use ends in the branch operand of ``add``."""
    dead: set[fx.Node] = set()
    for n in reversed(order[: position[add]]):
        if n.op in ("placeholder", "output") or not n.users:
            continue
        if all(u in dead or (u is add and n is branch) for u in n.users):
            dead.add(n)
    return dead


def _common_prefix(names: list[str]) -> str:
    parts = [n.split(".") for n in names]
    prefix: list[str] = []
    for column in zip(*parts):
        if len(set(column)) != 1:
            break
        prefix.append(column[0])
    if parts and len(prefix) == min(len(p) for p in parts):  # one module: drop its own name
        prefix = prefix[:-1]
    return ".".join(prefix)


def find_sections(gm: fx.GraphModule) -> list[Section]:
    """Every residual section of a shape-annotated GraphModule, in graph order."""
    modules = dict(gm.named_modules())
    order = list(gm.graph.nodes)
    position = {n: i for i, n in enumerate(order)}
    sections: list[Section] = []
    for node in order:
        operands = _add_operands(node)
        if operands is None:
            continue
        for skip, branch in (operands[::-1], operands):
            source = _skip_source(skip, modules)
            if not _is_ancestor(source, branch, position):
                continue
            if _skip_source(branch, modules) is source:  # both linear in X: no nonlinear branch
                continue
            dead = _dead_with_branch(node, branch, order, position)
            targets = sorted({n.target for n in dead if n.op == "call_module"})
            if not targets:
                continue
            name = _common_prefix(targets) or node.name
            sections.append(
                Section(
                    node.name,
                    name,
                    branch.name,
                    skip.name,
                    frozenset(n.name for n in dead),
                    tuple(targets),
                )
            )
            break
    _disambiguate(sections)
    return sections


def _disambiguate(sections: list[Section]) -> None:
    seen: dict[str, int] = {}
    for s in sections:
        seen[s.name] = seen.get(s.name, 0) + 1
    for i, s in enumerate(sections):
        if seen[s.name] > 1:
            sections[i] = Section(s.key, f"{s.name}[{s.key}]", s.branch, s.skip, s.nodes, s.modules)


def remove_sections(gm: fx.GraphModule, sections: list[Section]) -> fx.GraphModule:
    """Replace each section's add by its skip operand, in place (node names survive
    ``slim`` and re-tracing, so sections found on an earlier copy still apply). Dead
    nodes and the modules only they used are deleted. A section nested in one removed
    before it is already gone and skipped. Returns ``gm``."""
    for section in sections:
        by_name = {n.name: n for n in gm.graph.nodes}
        add, skip = by_name.get(section.key), by_name.get(section.skip)
        if add is None or skip is None:
            continue
        add.replace_all_uses_with(skip)
        gm.graph.erase_node(add)
        gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


__all__ = ["Section", "find_sections", "remove_sections"]
