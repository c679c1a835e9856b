"""After a successful ``fxprune prune``, what was left whole is printed and recorded in
summary.json: the leaves (module, kind, reason, the user's source line) and, for a model
pruned part by part, the modules not pruned with why."""

from __future__ import annotations

import json
import textwrap

from typer.testing import CliRunner

from fxprune.cli import app
from tests.trace.test_inspect_parts import MODEL_FILE as DETECTOR_FILE

LEAFY_FILE = textwrap.dedent('''
    import torch
    from torch import nn


    class DataDependent(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.conv = nn.Conv2d(channels, channels, 1)

        def forward(self, x):
            if x.mean() > 100:  # data-dependent: torch.fx cannot trace it
                return x
            return self.conv(x)


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
            self.block = DataDependent(16)
            self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
            self.conv3 = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            y = self.block(torch.relu(self.conv1(x)))
            return self.conv3(torch.relu(self.conv2(y)))


    def build_model():
        torch.manual_seed(0)
        return Net().eval()


    def example_inputs():
        return torch.randn(2, 3, 8, 8)
''')


def prune_cli(tmp_path, name: str, source: str):
    path = tmp_path / name
    path.write_text(source)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prune", str(path), "--ratio", "0.5", "--scorer", "l1", "--out", str(out)],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return result.output, json.loads((out / "summary.json").read_text())


def test_prune_reports_an_automatic_leaf_with_its_source_line(tmp_path):
    output, summary = prune_cli(tmp_path, "leafy_net.py", LEAFY_FILE)
    assert "kept whole: 1 leaves" in output
    [leaf] = summary["leaves"]
    assert (leaf["qualname"], leaf["type_name"], leaf["kind"]) == ("block", "DataDependent", "automatic")
    assert leaf["reason"].startswith("torch.fx cannot trace it")
    line = LEAFY_FILE.splitlines().index("        if x.mean() > 100:  # data-dependent: torch.fx cannot trace it") + 1
    assert leaf["where"].startswith(f"{tmp_path / 'leafy_net.py'}:{line} (if x.mean() > 100")
    assert summary["not_pruned"] == []
    assert summary["params_after"] < summary["params_before"]


def test_prune_reports_the_parts_it_did_not_prune(tmp_path):
    output, summary = prune_cli(tmp_path, "detector_model.py", DETECTOR_FILE)
    assert "not pruned: 2 modules" in output
    assert summary["parts"] == ["backbone", "neck"]
    assert summary["not_pruned"] == [
        {"module": "extra", "reason": "called with keyword arguments"},
        {"module": "head", "reason": "traced, but every channel is frozen (its inputs and outputs are kept)"},
    ]
    assert summary["leaves"] == []
