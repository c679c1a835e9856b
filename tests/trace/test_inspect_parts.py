"""``inspect`` on a model whose own forward does not trace: each submodule that traces on
its own is listed with its channel groups, the untraced rest with the reason."""

from __future__ import annotations

import json
import textwrap

import torch
from typer.testing import CliRunner

from fxprune.cli import app
from fxprune.inspection import inspect_model
from fxprune.partial import PartsReport

MODEL_FILE = textwrap.dedent('''
    import torch
    from torch import nn


    class Detector(nn.Module):
        """Root forward loops over the batch (untraceable); backbone, neck and head trace;
        extra is called with a keyword argument (not reproducible, left untraced)."""

        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
            self.neck = nn.Sequential(nn.Conv2d(16, 24, 1), nn.ReLU(), nn.Conv2d(24, 8, 1))
            self.head = nn.Conv2d(8, 2, 1)
            self.extra = nn.Linear(8, 3)

        def forward(self, x):
            features = self.neck(self.backbone(x))
            scores = self.extra(input=features.mean((2, 3)))
            return [self.head(f[None]).flatten() for f in features], scores


    def build_model():
        torch.manual_seed(0)
        return Detector().eval()


    def example_inputs():
        return torch.randn(2, 3, 8, 8)
''')


def load_detector(tmp_path):
    path = tmp_path / "detector_model.py"
    path.write_text(MODEL_FILE)
    namespace: dict = {}
    exec(compile(MODEL_FILE, str(path), "exec"), namespace)  # noqa: S102 (the test's own source)
    return path, namespace["build_model"](), namespace["example_inputs"]()


def test_inspect_lists_the_parts_and_the_untraced_rest(tmp_path):
    _, model, x = load_detector(tmp_path)
    report = inspect_model(model, x)
    assert isinstance(report, PartsReport)
    assert "model's own forward (Detector)" in report.root_reason
    assert [(q, t) for q, t, _ in report.parts] == [("backbone", "Sequential"), ("neck", "Sequential"),
                                                    ("head", "Conv2d")]
    prunable = {q: sum(g["size"] for g in r.groups if g["prunable"]) for q, _, r in report.parts}
    assert prunable == {"backbone": 16, "neck": 24, "head": 0}  # part inputs and outputs are kept
    backbone = report.parts[0][2]
    assert backbone.params == sum(p.numel() for p in model.backbone.parameters())
    group = next(g for g in backbone.groups if g["prunable"])
    assert group["members"] == ["backbone.0.out_channels", "backbone.1.num_features", "backbone.3.in_channels"]
    assert report.not_traced == [("extra", "called with keyword arguments")]
    data = json.loads(json.dumps(report.to_dict()))
    assert [p["module"] for p in data["parts"]] == ["backbone", "neck", "head"]
    assert data["not_traced"] == [{"module": "extra", "reason": "called with keyword arguments"}]


def test_cli_inspect_untraceable_root(tmp_path):
    path, _, _ = load_detector(tmp_path)
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["inspect", str(path), "--json", str(out)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "its own forward does not trace" in result.output
    assert "traced parts" in result.output and "channel groups of part backbone" in result.output
    assert "not traced (kept as they are)" in result.output and "called with keyword arguments" in result.output
    assert "Traceback" not in result.output
    data = json.loads(out.read_text())
    assert [p["module"] for p in data["parts"]] == ["backbone", "neck", "head"]
    assert data["parts"][1]["params"] == 16 * 24 + 24 + 24 * 8 + 8


def test_inspect_descends_where_prune_does():
    """A model that traces but keeps every prunable layer in an untraceable container."""
    from tests.trace.test_partial import LeafHoldsEverything

    report = inspect_model(LeafHoldsEverything().eval(), torch.randn(2, 3, 8, 8))
    assert isinstance(report, PartsReport)
    assert report.root_reason.startswith("it traces, but every prunable layer sits inside")
    assert [q for q, _, r in report.parts if any(g["prunable"] for g in r.groups)] == ["level.blocks"]
