"""Every ``>>>`` example in the docstrings of ``fxprune`` and ``hpo`` runs (examples
that need data or minutes of training say ``# doctest: +SKIP`` in the docstring)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import fxprune
import hpo


def _modules() -> list[str]:
    names = []
    for package in (fxprune, hpo):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            names.append(info.name)
    return sorted(names)


def _examples(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    return [t for t in tests if t.examples]


CASES = [t for name in _modules() if name != "fxprune.cli.__main__" for t in _examples(name)]


def test_there_are_examples():
    assert len(CASES) >= 3


@pytest.mark.parametrize("case", CASES, ids=lambda t: t.name)
def test_docstring_example(case):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    result = runner.run(case, out=lambda text: print(text, end=""))
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {case.name}"
