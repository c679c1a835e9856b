"""``fxprune export`` / ``fxprune profile`` on what a user brings: slim folders with integer
inputs and dict outputs, corrupt files, --dynamic all."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import fxprune
from fxprune.cli import app

pytestmark = pytest.mark.onnx
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, fragment: str, code: int = 2):
    assert result.exit_code == code, result.output
    text = result.output.strip()
    assert "Traceback" not in text and "\n" not in text, text
    assert text.startswith("error:") and fragment in text, text


@pytest.fixture
def slim_text_cnn(text_cnn, tmp_path):
    out = tmp_path / "slim"
    r = run("prune", text_cnn, "--input-shape", "1,12:int64:0-50", "--ratio", "0.5", "--out", out)
    assert r.exit_code == 0, r.output
    assert "equivalence: ok" in r.output
    return text_cnn, out


def test_int_input_model_round_trips_prune_load_export_profile(slim_text_cnn, tmp_path):
    model_file, out = slim_text_cnn
    meta = json.loads((out / "meta.json").read_text())
    assert meta["inputs"] == [{"name": "tokens", "shape": [1, 12], "dtype": "int64",
                               "low": 0, "high": 50}]
    assert meta["outputs"]["kind"] == "dict" and meta["outputs"]["keys"] == ["logits", "features"]
    model, (tokens,) = fxprune.load_slim(out)
    assert tokens.dtype == torch.int64 and tokens.shape == (1, 12)
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 50
    assert set(model(tokens)) == {"logits", "features"}

    onnx_path = tmp_path / "textcnn.onnx"
    r = run("export", out, "--out", onnx_path)
    assert r.exit_code == 0, r.output
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["tokens"]
    assert [o.name for o in session.get_outputs()] == ["logits", "features"]
    got = session.run(["logits"], {"tokens": tokens.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(got, model(tokens)["logits"].numpy(), atol=1e-5)
    assert onnx_path.stat().st_mode & 0o777 == 0o644

    report = tmp_path / "profile.json"
    r = run("profile", model_file, "--slim", out, "--batch", "1", "--provider", "cpu",
            "--threads", "1", "--min-seconds", "0", "--max-seconds", "1", "--json", report)
    assert r.exit_code == 0, r.output
    data = json.loads(report.read_text())
    assert data["slim"]["params"] < data["dense"]["params"]


def test_corrupt_files_give_one_line_naming_the_file(slim_text_cnn, tmp_path):
    model_file, out = slim_text_cnn
    meta = out / "meta.json"
    meta.write_text(meta.read_text()[:40])  # truncated JSON
    for args in (["export", out, "--out", tmp_path / "m.onnx"],
                 ["profile", model_file, "--slim", out, "--provider", "cpu"]):
        one_line_error(run(*args), f"{meta} is not valid JSON")
    with pytest.raises(fxprune.PlanError, match="meta.json is not valid JSON"):
        fxprune.load_slim(out)
    meta.write_text("{}")  # now break slim.pt instead
    slim_pt = out / "slim.pt"
    slim_pt.write_bytes(slim_pt.read_bytes()[:200])  # truncated archive
    one_line_error(run("export", out, "--out", tmp_path / "m.onnx"), f"could not load {slim_pt}")
    assert not (tmp_path / "m.onnx").exists()


def test_a_slim_folder_without_meta_json_is_not_guessed(slim_text_cnn, tmp_path):
    """Without meta.json the inputs are unknown (this model takes token ids, not the
    1x3x32x32 floats guessed before): one line, unless --input-shape gives them."""
    _, out = slim_text_cnn
    (out / "meta.json").unlink()
    one_line_error(run("export", out, "--out", tmp_path / "m.onnx"),
                   f"{out / 'meta.json'} not found, so the model's inputs are unknown")
    with pytest.raises(fxprune.PlanError, match="meta.json not found"):
        fxprune.load_slim(out)
    r = run("export", out, "--out", tmp_path / "m.onnx", "--input-shape", "1,12:int64:0-50")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.onnx").is_file()


@pytest.mark.parametrize("args,fragment", [
    (["--min-seconds", "-1"], "--min-seconds -1: expected seconds >= 0"),
    (["--min-seconds", "nan"], "--min-seconds nan"),
    (["--max-seconds", "0"], "--max-seconds 0: expected seconds > 0"),
])
def test_profile_time_limits_are_checked_before_work(args, fragment):
    one_line_error(run("profile", "fxprune:resnet20", "--ratio", "0.5", *args), fragment)


def test_export_refuses_a_folder_as_out_and_a_bad_opset_before_work(slim_text_cnn, tmp_path):
    _, out = slim_text_cnn
    one_line_error(run("export", out, "--out", tmp_path), "is a folder")
    one_line_error(run("export", out, "--out", tmp_path / "m.onnx", "--opset", "99"), "opset")
    one_line_error(run("export", out, "--out", tmp_path / "m.onnx", "--dynamic", "most"),
                   "--dynamic")


def test_export_dynamic_all_accepts_another_height_and_width(model_file, tmp_path):
    onnx_path = tmp_path / "conv.onnx"
    r = run("export", model_file, "--out", onnx_path, "--dynamic", "all")
    assert r.exit_code == 0, r.output
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = session.run(None, {name: np.random.default_rng(0).standard_normal(
        (3, 3, 24, 20)).astype(np.float32)})[0]
    assert out.shape == (3, 4)


TWO_CONV_8PX = """
import torch
from torch import nn

def build_model():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))

def example_inputs():
    return torch.randn(1, 3, 8, 8)
"""


def test_profile_width_plot_writes_a_png_and_checks_the_path_first(tmp_path, monkeypatch):
    monkeypatch.setenv("FXPRUNE_CACHE", str(tmp_path / "cache"))  # the latency table's cache
    model_file = tmp_path / "twoconv.py"
    model_file.write_text(TWO_CONV_8PX)
    one_line_error(run("profile", model_file, "--width-plot", tmp_path), "--width-plot")
    assert not (tmp_path / "cache").exists()  # refused before any measuring
    png = tmp_path / "width.png"
    r = run("profile", model_file, "--width-plot", png, "--provider", "cpu")
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert "latency-vs-width plot written to" in r.output and "width.png" in r.output
    assert list((tmp_path / "cache" / "latency").glob("*.json"))  # the table is cached
