"""The README promises exactly two commands; CI must run the same test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.DOTALL)


def test_readme_has_exactly_two_commands():
    cmds = readme_commands()
    assert len(cmds) == 2
    assert "fxprune prune fxprune:" in cmds[0]  # the main job on a built-in model
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci
