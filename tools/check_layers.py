"""Check fxprune's layering: no import cycles and no upward imports.

Every ``import`` counts, including those inside functions (a lazy import hides a cycle
from Python, not from a reader). Each module of ``fxprune`` and ``hpo`` is given a layer
by the longest prefix in ``LAYERS``; a module may import its own layer or a lower one,
never a higher one, and the import graph between modules must have no cycle.

Run ``python tools/check_layers.py`` (exit 1 and one line per problem) or let
``tests/test_layers.py`` run it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fxprune", "hpo")

# low -> high; the longest matching prefix wins.
LAYERS: dict[str, int] = {
    "fxprune.errors": 0,
    "fxprune.io": 0,
    "fxprune.defaults": 0,
    "fxprune.models": 0,
    "fxprune.loading": 0,
    "fxprune.trace": 1,
    "fxprune.capture": 1,  # TorchDynamo capture of models symbolic_trace cannot trace (HF), called by trace
    "fxprune.shapes": 1,  # meta-device shape propagation, called by trace
    "fxprune.analysis": 2,
    "fxprune.ops": 3,
    "fxprune.scoring": 4,
    "fxprune.cost": 4,
    "fxprune.selection": 4,
    "fxprune.surgery": 5,
    "fxprune.plan": 5,
    "fxprune.verify": 5,
    "fxprune.composed": 5,  # heads="both": two passes composed into one graph and plan
    "fxprune.sections": 5,
    "fxprune.blockers": 5,
    "fxprune.api": 6,
    "fxprune.inspection": 6,
    "fxprune.partial": 6,
    "fxprune.deploy": 7,
    "fxprune.train": 7,
    "fxprune.train_prune": 7,  # the first release's name, re-exporting fxprune.train
    "fxprune": 8,  # only the package facade itself; it re-exports the public API of the layers below
    "hpo": 9,
    "hpo.cli": 10,
    "fxprune.cli": 10,
}


def layer_of(module: str) -> tuple[str, int] | None:
    if module == "fxprune":
        return module, LAYERS[module]
    parts = module.split(".")
    for n in range(len(parts), 1 if parts[0] == "fxprune" else 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return key, LAYERS[key]
    return None


def module_files() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``module`` imports, anywhere in its body."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                stem = ".".join(anchor + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import sub` depends on pkg.sub when that is a module
            names = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem for a in node.names]
        else:
            continue
        for name in names:
            # the nearest enclosing project module
            parts = name.split(".")
            while parts and ".".join(parts) not in known:
                parts.pop()
            if parts and ".".join(parts) != module:
                targets.add(".".join(parts))
    return targets


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def problems() -> list[str]:
    known = module_files()
    graph = {m: imports_of(m, p, known) for m, p in known.items()}
    found = []
    for module in sorted(known):
        if layer_of(module) is None:
            found.append(f"{module}: no layer assigned (add it to LAYERS in tools/check_layers.py)")
    for module, targets in sorted(graph.items()):
        mine = layer_of(module)
        for target in sorted(targets):
            theirs = layer_of(target)
            if mine and theirs and theirs[1] > mine[1]:
                found.append(
                    f"{module} (layer {mine[1]}, {mine[0]}) imports {target} "
                    f"(layer {theirs[1]}, {theirs[0]}): a lower layer must not import a higher one"
                )
    for cycle in find_cycles(graph):
        found.append("import cycle: " + " <-> ".join(cycle))
    return found


def main() -> int:
    found = problems()
    for line in found:
        print(line)
    if not found:
        print(f"layers ok: {len(module_files())} modules, no cycle, no upward import")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
