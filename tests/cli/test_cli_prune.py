"""The CLI through typer's runner: every command and the bad inputs a user can make."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from typer.testing import CliRunner

import fxprune
from fxprune.cli import app

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def messages(output: str) -> str:
    """The output without progress lines ("... stage"): stderr is not a terminal here, so
    stages are announced as plain lines; what remains must be the one error line."""
    return "\n".join(line for line in output.splitlines() if not line.startswith("... ")).strip()


def one_line_error(result, fragment: str):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = messages(result.output)
    assert "\n" not in text, text
    assert fragment in text, text
    assert text.startswith("error:"), text


def test_models_lists_builtins():
    r = run("models")
    assert r.exit_code == 0 and "fxprune:resnet56" in r.output


def test_inspect_table_and_json(model_file, tmp_path):
    out = tmp_path / "inspect.json"
    r = run("inspect", model_file, "--json", out)
    assert r.exit_code == 0, r.output
    assert "channel groups" in r.output and "prunable" in r.output and "frozen" in r.output
    data = json.loads(out.read_text())
    sizes = [g["size"] for g in data["groups"] if g["prunable"]]
    assert sizes == [16, 8]
    assert abs(sum(g["flops_share"] for g in data["groups"]) - 1.0) < 0.05


def test_inspect_reports_unhandled_ops(tmp_path):
    p = tmp_path / "m.py"
    p.write_text(textwrap.dedent("""
        import torch
        from torch import nn
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)
            def forward(self, x):
                return self.b(torch.cumsum(self.a(x), 1))
        model = M()
    """))
    r = run("inspect", p, "--input-shape", "1,3,8,8")
    assert r.exit_code == 0, r.output
    assert "ops that froze channels" in r.output and "cumsum" in r.output


def test_prune_writes_loadable_folder(model_file, tmp_path):
    out = tmp_path / "slim"
    r = run("prune", model_file, "--ratio", "0.5", "--min-ratio", "0.2", "--out", out)
    assert r.exit_code == 0, r.output
    assert "equivalence: ok" in r.output
    assert {p.name for p in out.iterdir()} == {"slim.pt", "meta.json", "plan.json", "summary.json",
                                               ".fxprune.json"}
    marker = json.loads((out / ".fxprune.json").read_text())
    assert {key: marker[key] for key in ("format", "version", "state", "kind", "fxprune_version",
                                         "files", "host")} == {
        "format": "fxprune-output", "version": 1, "state": "complete", "kind": "prune",
        "fxprune_version": fxprune.__version__, "host": socket.gethostname(),
        "files": ["meta.json", "plan.json", "slim.pt", "summary.json"]}
    model, inputs = fxprune.load_slim(out)
    assert model(inputs[0]).shape == (2, 4)
    # loadable by torch alone, in a fresh interpreter without fxprune or the model file
    code = (f"import sys, torch; sys.modules['fxprune'] = None; "
            f"m = torch.load({str(out / 'slim.pt')!r}, weights_only=False); "
            f"print(tuple(m(torch.randn(3, 3, 16, 16)).shape))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          cwd=tmp_path)
    assert done.stdout.strip() == "(3, 4)", done.stderr[-500:]
    plan = json.loads((out / "plan.json").read_text())
    assert plan["settings"]["scorer"] == "synflow" and plan["modules"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["params_after"] < summary["params_before"]
    # an existing folder is refused without --force, replaced with it
    r = run("prune", model_file, "--out", out)
    one_line_error(r, "already exists")
    r = run("prune", model_file, "--out", out, "--force", "--scorer", "l1")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "plan.json").read_text())["settings"]["scorer"] == "l1"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_prune_builtin_with_flops_target(tmp_path):
    r = run("prune", "fxprune:resnet20", "--target", "flops=0.5", "--scorer", "l1")
    assert r.exit_code == 0, r.output
    assert "MACs" in r.output


@pytest.mark.parametrize("args,fragment", [
    (["prune", "missing.py"], "not found"),
    (["prune", "fxprune:nonexistent"], "nonexistent"),
    (["prune", "torchvision:not_a_model"], "not_a_model"),
    (["prune", "fxprune:resnet20", "--ratio", "1.5"], "ratio"),
    (["prune", "fxprune:resnet20", "--min-ratio", "-0.1"], "min_ratio"),
    (["prune", "fxprune:resnet20", "--input-shape", "1,5,32,32"], "input"),
    (["prune", "fxprune:resnet20", "--input-shape", "1,x,32"], "shape"),
    (["prune", "fxprune:resnet20", "--scorer", "bogus"], "unknown scorer"),
    (["prune", "fxprune:resnet20", "--target", "latency=3"], "target"),
    (["inspect", "fxprune:resnet20", "--leaf", "NoSuchModule"], "NoSuchModule"),
    (["prune", "fxprune:resnet20", "--heads", "most"], "unknown heads mode 'most' (--heads)"),
    (["prune", "fxprune:resnet20", "--input-shape", "1,3,32,32:float99"],
     "unknown dtype 'float99'"),
    (["train-prune", "fxprune:resnet20", "--out", "never", "--epochs", "0"], "--epochs 0"),
    (["train-prune", "fxprune:resnet20", "--out", "never", "--lr", "-1"], "--lr -1"),
])
def test_bad_input_one_line(args, fragment, tmp_path):
    one_line_error(run(*args), fragment)


def test_file_without_model_and_untraceable(tmp_path):
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    one_line_error(run("prune", empty, "--input-shape", "1,3,8,8"), "build_model")
    bad = tmp_path / "flow.py"
    bad.write_text(textwrap.dedent("""
        from torch import nn
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.c = nn.Conv2d(3, 3, 1)
            def forward(self, x):
                if x.mean() > 0:
                    return self.c(x)
                return x
        model = M()
    """))
    r = run("prune", bad, "--input-shape", "1,3,8,8", "--out", tmp_path / "o")
    one_line_error(r, "leaf")
    assert "flow.py" in r.output
    assert not (tmp_path / "o").exists()


# --- issue 13: outputs never destroy what fxprune did not write ------------------------------

def test_force_never_replaces_a_folder_with_foreign_files(model_file, tmp_path):
    out = tmp_path / "user"
    out.mkdir()
    notes = out / "notes.txt"
    notes.write_text("mine")
    (out / "slim.pt").write_bytes(b"old")
    r = run("prune", model_file, "--out", out, "--force")
    one_line_error(r, "fxprune did not write (notes.txt)")
    assert notes.read_text() == "mine" and (out / "slim.pt").read_bytes() == b"old"
    # the folder holding the model file itself
    one_line_error(run("prune", model_file, "--out", tmp_path, "--force"), "model.py")
    assert model_file.is_file()
    # a folder holding the model file is refused by name, even if all else is fxprune's
    own = tmp_path / "own"
    own.mkdir()
    inside = own / "model.py"
    inside.write_text(model_file.read_text())
    one_line_error(run("prune", inside, "--out", own, "--force"), "contains")
    assert inside.is_file()


def test_force_never_replaces_a_folder_with_fxprune_names_but_no_marker(model_file, tmp_path):
    """A user's folder that happens to hold meta.json and summary.json (common names), or a
    copy of an output without its marker, is not fxprune's to delete."""
    out = tmp_path / "results"
    out.mkdir()
    (out / "meta.json").write_text('{"experiment": 7}')
    (out / "summary.json").write_text('{"accuracy": 0.93}')
    r = run("prune", model_file, "--ratio", "0.5", "--out", out, "--force")
    one_line_error(r, "no marker .fxprune.json")
    assert (out / "meta.json").read_text() == '{"experiment": 7}'
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "summary.json"]
    # an output whose marker was edited to claim a user's file: the file still blocks it
    own = tmp_path / "own"
    assert run("prune", model_file, "--ratio", "0.5", "--out", own).exit_code == 0
    marker = json.loads((own / ".fxprune.json").read_text())
    (own / "train.py").write_text("user code")
    (own / ".fxprune.json").write_text(json.dumps({**marker, "files": [*marker["files"], "train.py"]}))
    one_line_error(run("prune", model_file, "--out", own, "--force"), "train.py")
    assert (own / "train.py").read_text() == "user code"


def test_the_next_prune_removes_a_staging_folder_left_by_kill_9(model_file, tmp_path):
    import os
    import signal

    out = tmp_path / "slim"
    stage = ("import sys, time\nfrom fxprune import io\n"
             "with io.OutputFolder.prepare(sys.argv[1]).staging() as tmp:\n"
             "    (tmp / io.SLIM_FILE).write_bytes(b'half')\n"
             "    print('staged', flush=True)\n    time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", stage, str(out)], stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout.readline().strip() == "staged"
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=60)
    child.stdout.close()
    (left,) = [p for p in tmp_path.iterdir() if p.name.startswith(".slim.tmp-")]
    r = run("prune", model_file, "--ratio", "0.5", "--out", out)
    assert r.exit_code == 0, r.output
    assert f"... removed {left.name}, left by an interrupted run" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.py", "slim"]


def test_force_never_replaces_the_current_folder(model_file, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "slim.pt").write_bytes(b"looks like ours")
    monkeypatch.chdir(work)
    one_line_error(run("prune", model_file, "--out", ".", "--force"), "current folder")
    one_line_error(run("prune", model_file, "--out", "..", "--force"), "current folder")
    assert (work / "slim.pt").read_bytes() == b"looks like ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.py", "work"]  # no .old left


def test_force_replaces_an_fxprune_folder_only_when_the_new_one_is_complete(model_file, tmp_path):
    out = tmp_path / "slim"
    assert run("prune", model_file, "--ratio", "0.5", "--out", out).exit_code == 0
    before = (out / "plan.json").read_text()
    # verification fails -> nothing is replaced (the old folder stays as it was)
    r = run("prune", model_file, "--out", out, "--force", "--input-shape", "1,5,16,16")
    assert r.exit_code == 2 and (out / "plan.json").read_text() == before
    assert run("prune", model_file, "--ratio", "0.3", "--out", out, "--force").exit_code == 0
    assert json.loads((out / "plan.json").read_text())["settings"]["ratio"] == 0.3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.py", "slim"]


BUILD_MARKER = textwrap.dedent("""
    from pathlib import Path
    from torch import nn

    def build_model():
        (Path(__file__).parent / "built").write_text("the model was built")
        return nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
""")


@pytest.mark.parametrize("where,fragment", [
    ("/proc/fxprune-out", "cannot write"),
    ("afile/out", "is a file"),
    ("afile", "existing file"),
])
def test_unwritable_out_fails_before_any_work(where, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    model = tmp_path / "marker.py"
    model.write_text(BUILD_MARKER)
    r = run("prune", model, "--input-shape", "1,3,8,8", "--out", where)
    one_line_error(r, fragment)
    assert not (tmp_path / "built").exists()  # failed before the model was even built
    assert (tmp_path / "afile").read_text() == "x"


def test_output_permissions_are_0644_and_0755(model_file, tmp_path):
    out = tmp_path / "perm"
    assert run("prune", model_file, "--ratio", "0.5", "--out", out).exit_code == 0
    assert out.stat().st_mode & 0o777 == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {
        "slim.pt": 0o644, "meta.json": 0o644, "plan.json": 0o644, "summary.json": 0o644,
        ".fxprune.json": 0o644}
    one_line_error(run("inspect", model_file, "--json", tmp_path), f"{tmp_path / 'report.json'}")
    report = tmp_path / "inspect.json"
    assert run("inspect", model_file, "--json", report).exit_code == 0
    assert report.stat().st_mode & 0o777 == 0o644


# --- issue 13: inputs and nothing-to-prune -----------------------------------------------------

@pytest.mark.parametrize("args,fragment", [
    (["--ratio", "0"], "--ratio 0"),
    (["--min-ratio", "1", "--ratio", "0.5"], "--min-ratio 1"),
])
def test_settings_that_prune_nothing_exit_3_and_write_nothing(args, fragment, model_file, tmp_path):
    out = tmp_path / "none"
    r = run("prune", model_file, *args, "--out", out)
    assert r.exit_code == 3, r.output
    assert messages(r.output).startswith("error:") and fragment in r.output
    assert "Traceback" not in r.output and not out.exists()


def test_a_model_with_nothing_prunable_exits_3(tmp_path):
    frozen = tmp_path / "frozen.py"
    frozen.write_text(textwrap.dedent("""
        import torch
        from torch import nn
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.c = nn.Conv2d(3, 3, 1)
            def forward(self, x):
                return self.c(x)  # its only channels are the model's output
        model = M()
    """))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the API's warning must not add a second message
        r = run("prune", frozen, "--input-shape", "1,3,8,8", "--ratio", "0.5",
                "--out", tmp_path / "o")
    assert r.exit_code == 3, r.output
    assert len(messages(r.output).splitlines()) == 1, r.output
    assert "nothing" in r.output and not (tmp_path / "o").exists()


def test_shape_without_batch_dim_is_refused_with_a_hint(model_file):
    r = run("prune", model_file, "--input-shape", "3,16,16")
    one_line_error(r, "no batch dimension")
    assert "--input-shape 1,3,16,16" in r.output
    one_line_error(run("prune", "fxprune:resnet20", "--input-shape", "3,32,32"), "1,3,32,32")


def test_multi_input_model_takes_one_input_shape_per_input(two_inputs, tmp_path):
    out = tmp_path / "two"
    r = run("prune", two_inputs, "--input-shape", "1,3,16,16", "--input-shape", "1,5:int64:0-20",
            "--ratio", "0.5", "--out", out)
    assert r.exit_code == 0, r.output
    assert "equivalence: ok" in r.output
    model, (image, ids) = fxprune.load_slim(out)
    assert image.shape == (1, 3, 16, 16) and ids.dtype == torch.int64
    assert ids.shape == (1, 5) and 0 <= int(ids.min()) and int(ids.max()) < 20
    meta = json.loads((out / "meta.json").read_text())
    assert [i["name"] for i in meta["inputs"]] == ["image", "ids"]
    assert model(image, ids).shape == (1, 2)
    one_line_error(run("prune", two_inputs, "--input-shape", "1,3,16,16"), "one per input")


def test_threads_option_sets_torch_threads(model_file):
    before = torch.get_num_threads()
    try:
        r = run("inspect", model_file, "--threads", "1")
        assert r.exit_code == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    one_line_error(run("prune", model_file, "--threads", "0"), "--threads")


LEAF_MODEL = textwrap.dedent("""
    import torch
    from torch import nn

    class Odd(nn.Module):  # kept opaque with --leaf Odd
        def forward(self, x):
            return x.flip(1) if x.sum() > 0 else x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.odd, self.b = nn.Conv2d(3, 8, 1), Odd(), nn.Conv2d(8, 4, 1)
            self.c, self.d = nn.Conv2d(4, 6, 1), nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.d(torch.relu(self.c(self.b(self.odd(self.a(x))))))

    model = Net()
""")


def test_a_slim_model_with_a_custom_leaf_loads_where_its_file_is_importable(tmp_path):
    source = tmp_path / "leafy_net.py"
    source.write_text(LEAF_MODEL)
    out = tmp_path / "slim"
    r = run("prune", source, "--input-shape", "1,3,8,8", "--leaf", "Odd", "--ratio", "0.5",
            "--out", out)
    assert r.exit_code == 0, r.output
    code = (f"import torch; m = torch.load({str(out / 'slim.pt')!r}, weights_only=False); "
            "print(type(m.odd).__module__, tuple(m(torch.randn(1, 3, 8, 8)).shape))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, check=False)  # the model's folder is importable
    assert done.stdout.strip() == "leafy_net (1, 2, 8, 8)", done.stderr[-500:]


def test_heads_and_uniform_reach_the_plan(model_file, tmp_path):
    out = tmp_path / "uniform"
    r = run("prune", model_file, "--ratio", "0.5", "--uniform", "--heads", "whole", "--out", out)
    assert r.exit_code == 0, r.output
    settings = json.loads((out / "plan.json").read_text())["settings"]
    assert settings["uniform"] is True and settings["heads"] == "whole"
    groups = json.loads((out / "plan.json").read_text())["groups"]
    kept = sorted((g["size"], g["kept"]) for g in groups if g["frozen"] is None)
    assert kept == [(8, 4), (16, 8)], groups  # half of every group, not one global ranking
    one_line_error(run("prune", model_file, "--heads", "all"), "--heads")


def test_latency_target_prunes_to_a_measured_fraction(model_file, tmp_path, monkeypatch):
    monkeypatch.setenv("FXPRUNE_CACHE", str(tmp_path / "cache"))  # the latency table's cache
    out = tmp_path / "lat"
    r = run("prune", model_file, "--target", "latency=0.5", "--threads", "1", "--out", out)
    assert r.exit_code == 0, r.output
    assert "Latency target latency=0.5" in r.output and "equivalence: ok" in r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target"] == "latency=0.5" and 0 < summary["measured"] < 1
    assert summary["objective"] == "score"
    assert summary["params_after"] < summary["params_before"]
    one_line_error(run("prune", model_file, "--target", "latency=2", "--out", tmp_path / "x"),
                   "latency=0.3")
    one_line_error(run("prune", model_file, "--target", "latency=0.5", "--objective", "macs",
                       "--out", tmp_path / "x"), "capacity")
    one_line_error(run("prune", model_file, "--objective", "capacity", "--out", tmp_path / "x"),
                   "--target latency=F only")
    assert not (tmp_path / "x").exists()
