"""PrunePlan: the public JSON contract, round trips, and re-application."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import fxprune
from fxprune.errors import PlanError
from fxprune.models import create_model
from fxprune.plan import PrunePlan


@pytest.fixture(scope="module")
def pruned():
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    return model, x, fxprune.prune(model, x, ratio=0.6, min_ratio=0.15, scorer="random")


def test_plan_format_uses_original_module_names(pruned):
    model, _, r = pruned
    d = json.loads(r.plan.to_json())
    assert set(d) >= {"modules", "parameters", "groups", "settings", "summary", "version"}
    names = dict(model.named_modules())
    for owner, attrs in d["modules"].items():
        assert owner in names
        for attr, keep in attrs.items():
            assert hasattr(names[owner], attr), (owner, attr)
            assert keep == sorted(set(keep))
    pairs = [(o, o.replace("conv", "bn")) for o, a in d["modules"].items()
             if "conv" in o and "out_channels" in a and o.startswith("layer")]
    assert pairs, "the plan prunes no block conv"
    for conv, bn in pairs:
        assert d["modules"][bn]["num_features"] == d["modules"][conv]["out_channels"]
    # the last stage's residual stream feeds the classifier
    assert d["modules"]["fc"]["in_features"] == d["modules"]["layer3.2.bn2"]["num_features"]
    assert d["settings"] == {"ratio": 0.6, "min_ratio": 0.15, "scorer": "random", "round_to": None,
                             "target": None, "heads": "dims", "uniform": False}
    g0 = d["groups"][0]
    assert set(g0) >= {"id", "size", "kept", "members", "frozen"}


def test_plan_json_round_trip(pruned, tmp_path):
    _, _, r = pruned
    path = tmp_path / "plan.json"
    r.plan.save(path)
    again = PrunePlan.load(path)
    assert again.to_dict() == r.plan.to_dict()


def test_reapply_plan_to_fresh_instance(pruned):
    model, x, r = pruned
    same_weights = copy.deepcopy(model)
    slim2 = fxprune.apply_plan(same_weights, r.plan.to_dict(), x)
    with torch.no_grad():
        assert torch.allclose(slim2(x), r.model(x), atol=1e-6)
    fresh = create_model("resnet20").eval()  # new random weights, same architecture
    slim3 = fxprune.apply_plan(fresh, r.plan, x)
    assert fxprune.count_params(slim3) == r.params_after
    assert slim3(x).shape == (2, 10)


def test_plan_errors(pruned, tmp_path):
    model, x, r = pruned
    bad = copy.deepcopy(r.plan.to_dict())
    bad["modules"]["nonexistent.conv"] = {"out_channels": [0]}
    with pytest.raises(PlanError, match="nonexistent.conv"):
        fxprune.apply_plan(model, bad, x)
    bad = copy.deepcopy(r.plan.to_dict())
    bad["modules"]["bn1"]["num_features"] = [0, 1]  # disagrees with the stem conv
    with pytest.raises(PlanError, match="inconsistent"):
        fxprune.apply_plan(model, bad, x)
    bad = copy.deepcopy(r.plan.to_dict())
    bad["modules"]["conv1"]["out_channels"] = [999]
    with pytest.raises(PlanError, match="out of range"):
        fxprune.apply_plan(model, bad, x)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        PrunePlan.load(tmp_path / "broken.json")
    with pytest.raises(PlanError, match="not found"):
        PrunePlan.load(tmp_path / "missing.json")
    with pytest.raises(PlanError, match="modules"):
        PrunePlan.from_dict({"groups": []})


def test_save_and_load_slim(pruned, tmp_path):
    _, x, r = pruned
    fxprune.save_slim(r.model, tmp_path / "out", x)
    loaded, inputs = fxprune.load_slim(tmp_path / "out")
    assert inputs[0].shape == x.shape
    with torch.no_grad():
        assert torch.equal(loaded(x), r.model(x))
    with pytest.raises(PlanError, match="no slim model"):
        fxprune.load_slim(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "slim.pt").write_bytes(b"garbage")
    with pytest.raises(PlanError, match="could not load"):
        fxprune.load_slim(tmp_path / "bad")
