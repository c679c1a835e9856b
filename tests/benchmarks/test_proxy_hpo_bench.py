"""benchmarks/proxy_hpo.py --summarise: pooling runs made at different times."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hpo.report import mean_ci

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "proxy_hpo.py"
KEYS = ("accuracy_gap_pp", "time_reduction_pct", "confirm_gap_pp", "confirm_reduction_pct")


def _repeat(index: int, gap: float, reduction: float, shared: bool | None = None) -> dict:
    repeat = {"repeat": index, "accuracy_gap_pp": gap, "time_reduction_pct": reduction,
              "confirm_gap_pp": gap, "confirm_reduction_pct": reduction - 10,
              "winners": {"proxy": {"params": {"lr": 0.1}}, "confirm": {"params": {"lr": 0.1}}}}
    if shared is not None:
        repeat["shared_brackets"] = shared
    return repeat


def _write_run(folder: Path, repeats: list[dict]) -> Path:
    stats = {key: mean_ci([r[key] for r in repeats]) for key in KEYS}
    folder.mkdir(parents=True)
    (folder / "benchmark.json").write_text(json.dumps(
        [{"sampler": "tpe", "statistics": stats, "repeats": repeats}]))
    return folder


def _summarise(*folders: Path) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), "--summarise", *map(str, folders)],
                          capture_output=True, text=True, timeout=120, check=True,
                          env={**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])})
    return done.stdout


def test_summarise_separates_repeats_whose_arms_shared_hyperbands_brackets(tmp_path: Path):
    new = _write_run(tmp_path / "new", [_repeat(0, 0.2, 60.0, True), _repeat(1, -0.4, 70.0, True)])
    # a run written before repeats recorded it; its report.json, rebuilt by `hpo report`, has it
    old = _write_run(tmp_path / "old", [_repeat(0, 1.0, 30.0)])
    (old / "tpe").mkdir()
    (old / "tpe" / "report.json").write_text(json.dumps(
        {"repeats": [{"repeat": 0, "shared_brackets": False}]}))

    only_new = _summarise(new)
    assert "pooled over tpe: 2 repeats" in only_new
    assert "shared Hyperband's brackets" not in only_new  # nothing to separate

    both = _summarise(new, old)
    assert "pooled over tpe: 3 repeats" in both
    pooled, subset = both.split("the 2 of 3 repeats whose two searches shared Hyperband's "
                                "brackets (1 drew them by study name)")
    assert "time reduction +53.33" in pooled  # (60 + 70 + 30) / 3
    proxy_line = next(line for line in subset.splitlines() if line.startswith("proxy:"))
    assert "gap (arm - typical) -0.10" in proxy_line and "time reduction +65.00" in proxy_line

    # a repeat that recorded nothing (no rebuilt report.json) is not called either
    third = _write_run(tmp_path / "third", [_repeat(0, 0.0, 50.0)])
    assert "the 2 of 4 repeats whose two searches shared Hyperband's brackets (1 drew them " \
        "by study name, 1 not recorded)" in _summarise(new, old, third)
    (old / "tpe" / "report.json").unlink()
    assert "shared Hyperband's brackets" not in _summarise(new, old, third)


def test_summarise_of_a_folder_without_results_is_one_line(tmp_path: Path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--summarise", str(tmp_path / "nothing")],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: {tmp_path / 'nothing'} is not a finished run")
