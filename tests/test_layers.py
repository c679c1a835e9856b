"""The package's layering (see tools/check_layers.py): no cycles, no upward imports."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _checker():
    spec = importlib.util.spec_from_file_location("check_layers", ROOT / "tools" / "check_layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_cycles_and_no_upward_imports():
    assert _checker().problems() == []


def test_checker_sees_function_level_cycles(tmp_path):
    checker = _checker()
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert checker.find_cycles(graph) == [["a", "b", "c"]]


def test_checker_resolves_relative_and_lazy_imports(tmp_path):
    checker = _checker()
    pkg = tmp_path / "fxprune"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "trace.py").write_text("def f():\n    from .api import prune\n")
    (pkg / "api.py").write_text("from . import trace\n")
    known = {"fxprune": pkg / "__init__.py", "fxprune.trace": pkg / "trace.py", "fxprune.api": pkg / "api.py"}
    assert checker.imports_of("fxprune.trace", pkg / "trace.py", known) == {"fxprune.api"}
    assert checker.imports_of("fxprune.api", pkg / "api.py", known) == {"fxprune.trace"}


def test_no_source_file_over_600_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for package in ("fxprune", "hpo")
        for p in (ROOT / package).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert long == {}
