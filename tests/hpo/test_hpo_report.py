"""Results as data: the comparison figures, the JSON round trip, the plots, and the
terminal rendering at a fixed width."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console
from scipy.stats import kendalltau

from hpo.collect import _shared_brackets
from hpo.plots import write_plots
from hpo.report import (
    FinalSummary,
    HpoReport,
    ProxyInfo,
    RankSummary,
    RepeatSummary,
    StudySummary,
    TrialRecord,
    atomic_write_json,
    read_report,
    write_report,
)

POINT = {"lr": 0.05, "batch_size": 128, "weight_decay": 5e-4, "momentum": 0.9,
         "decay_factor": 0.1}


def study(name: str, role: str, wall: float, values: list[float | None]) -> StudySummary:
    trials = tuple(TrialRecord(i, "COMPLETE" if v is not None else "FAIL", v,
                               {**POINT, "lr": 0.01 * (i + 1)}, 3, 1.5,
                               None if v is not None else "RuntimeError: boom")
                   for i, v in enumerate(values))
    best = max(range(len(values)), key=lambda i: values[i] or -1)
    return StudySummary(name, role, len(values), wall, trials, best, values[best],
                        dict(trials[best].params), {"lr": 0.7, "weight_decay": 0.3})


@pytest.fixture
def report() -> HpoReport:
    return HpoReport(
        kind="compare",
        config={"model": "fxprune:resnet20", "sampler": "tpe", "pruner": "hyperband",
                "trials": 4, "epochs": 6, "seed": 0, "seeds": 2},
        data={"name": "digits", "train": 1437, "val": 360},
        studies=(study("typical", "base", 200.0, [0.5, 0.9, None, 0.7]),
                 study("proxy", "proxy", 150.0, [0.4, 0.8, 0.85, None])),
        proxy=ProxyInfo(272474, 10827, 10203776, 518860, 0.85, 0.15, "synflow", 0.6),
        finals=(FinalSummary("typical", POINT, (0, 1), (0.95, 0.93)),
                FinalSummary("proxy", POINT, (0, 1), (0.94, 0.96))),
        rank=RankSummary.compute([POINT] * 4, [0.9, 0.5, 0.7, 0.2], [0.8, 0.4, 0.3, 0.1]),
    )


def test_comparison_figures(report: HpoReport):
    assert report.time_reduction_pct == pytest.approx(25.0)
    assert report.accuracy_gap == pytest.approx(1.0)  # 95.0% - 94.0%
    assert report.final("typical").std == pytest.approx(math.sqrt(2e-4))  # ddof=1
    expected = kendalltau([0.9, 0.5, 0.7, 0.2], [0.8, 0.4, 0.3, 0.1]).statistic
    assert report.rank.tau == pytest.approx(expected) == pytest.approx(2 / 3)


def test_rank_skips_missing_scores_and_ties():
    rank = RankSummary.compute([POINT] * 3, [0.9, None, 0.5], [0.8, 0.7, 0.2])
    assert rank.tau == pytest.approx(1.0)
    assert RankSummary.compute([POINT] * 2, [0.5, 0.5], [0.1, 0.2]).tau is None


def test_json_round_trip(report: HpoReport, tmp_path: Path):
    write_report(report, tmp_path)
    again = read_report(tmp_path)
    assert again == report
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["time_reduction_pct"] == pytest.approx(25.0)
    assert saved["finals"][0]["mean"] == pytest.approx(0.94)


def test_plots_are_written(report: HpoReport, tmp_path: Path):
    written = {path.name for path in write_plots(report, tmp_path)}
    assert written == {"history_typical.png", "history_proxy.png",
                       "importance_typical.png", "importance_proxy.png", "proxy_vs_base.png"}
    for name in written:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_json_has_no_nan(tmp_path: Path):
    atomic_write_json(tmp_path / "x.json", {"tau": float("nan"), "values": [1.0, math.inf]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"tau": None, "values": [1.0, None]}


def test_renders_at_a_fixed_width(report: HpoReport):
    console = Console(width=100, record=True, color_system=None)
    console.print(report)
    text = console.export_text()
    assert "HPO time reduction              25.0%" in text
    assert "accuracy gap (proxy - typical)  +1.00 pp" in text
    assert "Kendall tau (K=4)               0.667" in text
    assert "best set of proxy    trial 2  lr=0.03 bs=128 wd=0.0005 mom=0.9 decay=0.1" in text
    assert "10,827/272,474 params (4.0%)" in text
    assert all(len(line) <= 100 for line in text.splitlines())


def test_which_repeats_shared_hyperbands_brackets(report: HpoReport, tmp_path: Path):
    typical, proxy = report.studies
    keyed = {"typical": replace(typical, bracket_key="seed0-repeat0"),
             "proxy": replace(proxy, bracket_key="seed0-repeat0")}
    assert _shared_brackets(keyed, brackets=2) is True
    # studies made before bracket keys drew them by study name: with two brackets and more
    # the arms' trials could land in different brackets, with one they cannot
    assert _shared_brackets({"typical": typical, "proxy": proxy}, brackets=2) is False
    assert _shared_brackets({"typical": typical, "proxy": proxy}, brackets=1) is True
    assert _shared_brackets({**keyed, "typical": typical}, brackets=2) is False
    assert _shared_brackets({"proxy": proxy}, brackets=2) is None

    def repeat(index: int, shared: bool | None) -> RepeatSummary:
        return RepeatSummary(index, {"typical": None, "proxy": None},
                             {"typical": 0.9, "proxy": 0.9}, {"typical": 100.0, "proxy": 40.0},
                             {"typical": 100.0, "proxy": 40.0}, shared_brackets=shared)

    mixed = replace(report, repeats=(repeat(0, True), repeat(1, False), repeat(2, None)))
    console = Console(width=100, record=True, color_system=None)
    console.print(mixed)
    text = " ".join(console.export_text().split())
    assert ("note: in repeat 1 the typical and proxy searches drew Hyperband's brackets by study "
            "name") in text
    assert "in repeat 0" not in text and "repeat 1, 2" not in text
    atomic_write_json(tmp_path / "report.json", mixed.to_dict())
    back = read_report(tmp_path)
    assert [r.shared_brackets for r in back.repeats] == [True, False, None]


def test_a_report_from_a_newer_fxprune_still_loads(report: HpoReport, tmp_path: Path):
    data = report.to_dict()
    data["studies"][0]["a_new_field"] = 1
    data["studies"][0]["trials"][0]["another"] = 2
    data["finals"][0]["more"] = 3
    data["proxy"]["extra"] = 4
    (tmp_path / "report.json").write_text(json.dumps(data))
    assert read_report(tmp_path).studies[0] == report.studies[0]
