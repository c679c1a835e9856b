"""fxprune.io: atomic files and folders with one permission policy, safe --force, one-line
readers for fxprune's own files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from fxprune import io
from fxprune.errors import OutputError, PlanError
from fxprune.loading import InputSpec


def test_atomic_files_are_0644_and_leave_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "sub" / "a.json"
    io.atomic_write_json(target, {"x": 1})
    assert json.loads(target.read_text()) == {"x": 1}
    assert target.stat().st_mode & 0o777 == 0o644
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert json.loads(target.read_text()) == {"x": 1}  # the old file is untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]
    with io.atomic_path(tmp_path / "plot.png") as tmp:
        assert tmp.suffix == ".png"  # writers that look at the suffix still work


def test_folder_is_0755_and_the_old_one_stays_until_the_new_one_is_in(tmp_path):
    out = tmp_path / "out"
    folder = io.OutputFolder.prepare(out)
    with folder.staging() as tmp:
        io.atomic_write_text(tmp / io.PLAN_FILE, "first")
        assert not out.exists()  # nothing visible before it is complete
    assert out.stat().st_mode & 0o777 == 0o755
    assert (out / io.PLAN_FILE).read_text() == "first"

    folder = io.OutputFolder.prepare(out, force=True)
    with pytest.raises(KeyboardInterrupt), folder.staging() as tmp:
        io.atomic_write_text(tmp / io.PLAN_FILE, "second")
        raise KeyboardInterrupt
    assert (out / io.PLAN_FILE).read_text() == "first"
    with folder.staging() as tmp:
        io.atomic_write_text(tmp / io.PLAN_FILE, "second")
    assert (out / io.PLAN_FILE).read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_force_replaces_only_fxprune_folders(tmp_path):
    out = tmp_path / "out"
    with io.OutputFolder.prepare(out, kind="prune", fxprune_version="9.9").staging() as tmp:
        (tmp / io.META_FILE).write_text("{}")
    marker = json.loads((out / io.MARKER_FILE).read_text())
    assert (marker["kind"], marker["fxprune_version"], marker["files"]) == ("prune", "9.9", ["meta.json"])
    with pytest.raises(OutputError, match="--force"):  # ours, but not forced
        io.OutputFolder.prepare(out)
    io.OutputFolder.prepare(out, force=True)
    (out / "train.py").write_text("user code")
    with pytest.raises(OutputError, match=r"fxprune did not write \(train.py\)"):
        io.OutputFolder.prepare(out, force=True)
    (out / "train.py").unlink()
    (out / "data").mkdir()  # a sub-folder is never fxprune's
    with pytest.raises(OutputError, match="data"):
        io.OutputFolder.prepare(out, force=True)
    link = tmp_path / "link"
    link.symlink_to(out)
    with pytest.raises(OutputError, match="symbolic link"):
        io.OutputFolder.prepare(link, force=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    io.OutputFolder.prepare(empty)  # an empty folder holds nothing to lose


@pytest.mark.parametrize("marker", [None, "{not json", '{"format": "fxprune-output", "state": "staging"}'])
def test_fxprune_names_without_a_valid_marker_are_never_replaced(marker, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / io.META_FILE).write_text('{"mine": true}')
    (out / io.SLIM_FILE).write_bytes(b"my weights")
    if marker is not None:
        (out / io.MARKER_FILE).write_text(marker)
    with pytest.raises(OutputError, match="never replaced") as info:
        io.OutputFolder.prepare(out, force=True)
    assert "marker" in str(info.value)
    assert (out / io.SLIM_FILE).read_bytes() == b"my weights"


def test_marker_vouches_only_for_fxprune_names_it_lists(tmp_path):
    out = tmp_path / "out"
    with io.OutputFolder.prepare(out).staging() as tmp:
        (tmp / io.PLAN_FILE).write_text("{}")
    (out / io.SUMMARY_FILE).write_text("{}")  # an own name the marker does not list
    with pytest.raises(OutputError, match=r"did not write \(summary.json\)"):
        io.OutputFolder.prepare(out, force=True)


def test_writability_is_probed(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        io.OutputFolder.prepare(tmp_path / "file" / "out")
    with pytest.raises(OutputError, match="cannot write"):
        io.check_output_file("/proc/fxprune-test.onnx")
    with pytest.raises(OutputError, match="is a folder"):
        io.check_output_file(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probe left nothing


@pytest.mark.parametrize("text,fragment", [
    (None, "not found"),
    ("", "is empty"),
    ('{"modules": {', "is not valid JSON"),
    ("[1, 2]", "holds a JSON list"),
])
def test_read_json_fails_in_one_line_naming_the_file(text, fragment, tmp_path):
    path = tmp_path / "plan.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(PlanError, match=fragment) as info:
        io.read_json(path, "plan file")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


class IntAndFloat(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(30, 4)
        self.proj = nn.Linear(4, 4)

    def forward(self, ids, scale):
        return {"out": self.proj(self.embed(ids)) * scale, "ids": ids}


def test_write_and_read_slim_keep_dtypes_ranges_names_and_outputs(tmp_path):
    model = torch.fx.symbolic_trace(IntAndFloat())
    inputs = (torch.randint(3, 30, (2, 7)), torch.randn(2, 7, 1))
    io.write_slim(tmp_path, model, inputs, {"model": "x"})
    loaded, (ids, scale), meta = io.read_slim(tmp_path)
    assert ids.dtype == torch.int64 and 3 <= int(ids.min()) and int(ids.max()) < 30
    assert scale.dtype == torch.float32 and scale.shape == (2, 7, 1)
    assert [item["name"] for item in meta["inputs"]] == ["ids", "scale"]
    assert meta["outputs"] == {"kind": "dict", "keys": ["out", "ids"],
                               "items": [{"kind": "tensor"}, {"kind": "tensor"}]}
    assert io.output_names(meta["outputs"]) == ["out", "ids"]
    assert meta["model"] == "x" and meta["input_shapes"] == [[2, 7], [2, 7, 1]]
    assert loaded(ids, scale)["out"].shape == (2, 7, 4)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {
        io.SLIM_FILE: 0o644, io.META_FILE: 0o644}


def test_version_1_meta_still_loads_as_float_inputs(tmp_path):
    model = torch.fx.symbolic_trace(nn.Conv2d(3, 4, 1))
    torch.save(model, tmp_path / io.SLIM_FILE)
    (tmp_path / io.META_FILE).write_text(json.dumps({"input_shapes": [[2, 3, 5, 5]]}))
    _, (x,), meta = io.read_slim(tmp_path)
    assert x.shape == (2, 3, 5, 5) and x.dtype == torch.float32
    assert meta["inputs"] == [{"shape": [2, 3, 5, 5], "dtype": "float32"}]


@pytest.mark.parametrize("damage,fragment", [
    (lambda p: p.write_bytes(b""), "is empty"),
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "may be truncated"),
    (lambda p: p.write_bytes(b"garbage"), "could not load"),
])
def test_damaged_slim_pt_fails_in_one_line(damage, fragment, tmp_path):
    io.write_slim(tmp_path, torch.fx.symbolic_trace(nn.Conv2d(3, 4, 1)), torch.randn(1, 3, 4, 4))
    damage(tmp_path / io.SLIM_FILE)
    with pytest.raises(PlanError, match=fragment) as info:
        io.read_slim(tmp_path)
    assert str(tmp_path / io.SLIM_FILE) in str(info.value) and "\n" not in str(info.value)


def test_read_summary_names_the_file(tmp_path):
    (tmp_path / io.SUMMARY_FILE).write_text('{"params_before": 3')
    with pytest.raises(PlanError, match=r"summary .*summary.json is not valid JSON"):
        io.read_summary(tmp_path)
    io.atomic_write_json(tmp_path / io.SUMMARY_FILE, {"params_before": 3})
    assert io.read_summary(tmp_path) == {"params_before": 3}


def test_output_names_for_tuples_and_single_tensors():
    assert io.output_names({"kind": "tensor"}) == ["output"]
    nested = {"kind": "tuple", "arity": 2, "items": [
        {"kind": "tensor"}, {"kind": "dict", "keys": ["a"], "items": [{"kind": "tensor"}]}]}
    assert io.output_names(nested) == ["output_0", "output_1.a"]


def test_input_spec_round_trip():
    spec = InputSpec.parse("2,40:int32:5-9")
    assert (spec.shape, spec.dtype, spec.low, spec.high) == ((2, 40), "int32", 5, 9)
    assert InputSpec.from_dict(spec.to_dict()) == spec
    assert os.fspath(io.META_FILE) == "meta.json"


# --- leftovers of a killed run (kill -9) ---------------------------------------------------

STAGE_THEN_WAIT = """
import sys, time
from fxprune import io
with io.OutputFolder.prepare(sys.argv[1], force=True).staging() as tmp:
    (tmp / io.PLAN_FILE).write_text("half written")
    print("staged", flush=True)
    time.sleep(600)
"""

KILLED_WHILE_SWAPPING = """
import os, signal, sys
from fxprune import io
rename = os.replace
def replace(source, target):  # SIGKILL right after the old output was set aside
    rename(source, target)
    if ".old-" in str(target) and os.path.basename(target) == os.path.basename(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
with io.OutputFolder.prepare(sys.argv[1], force=True).staging() as tmp:
    (tmp / io.PLAN_FILE).write_text("new")
"""


def _run_and_kill(code: str, out, wait_for: str | None = None) -> int:
    process = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE,
                               text=True)
    if wait_for is not None:
        assert process.stdout.readline().strip() == wait_for
        os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    process.stdout.close()
    return process.pid


def _own_leftover(parent, name, pid, files, **marker):
    folder = parent / name
    folder.mkdir()
    for file_name in files:
        (folder / file_name).write_text("x")
    (folder / io.MARKER_FILE).write_text(json.dumps({
        "format": "fxprune-output", "state": "staging", "pid": pid,
        "host": socket.gethostname(), "created": time.time(), **marker}))
    return folder


def test_staging_left_by_kill_9_is_removed_by_the_next_run_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    dead = _run_and_kill(STAGE_THEN_WAIT, out, wait_for="staged")
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".out.tmp-") and (left / io.PLAN_FILE).read_text() == "half written"
    # look-alikes that are not a dead fxprune's staging folder stay untouched:
    user = tmp_path / ".out.tmp-user"  # no marker, recent
    user.mkdir()
    (user / io.PLAN_FILE).write_text("x")
    keep = [user,
            _own_leftover(tmp_path, ".out.tmp-notes", dead, ["notes.txt"]),  # a file not ours
            _own_leftover(tmp_path, ".out.tmp-alive", os.getpid(), [io.PLAN_FILE]),  # running
            _own_leftover(tmp_path, ".out.tmp-far", dead, [io.PLAN_FILE], host="elsewhere"),
            _own_leftover(tmp_path, ".other.tmp-x", dead, [io.PLAN_FILE])]  # another output
    old = tmp_path / ".out.tmp-legacy"  # an older release's leftover: no marker, a day old
    old.mkdir()
    (old / io.SLIM_FILE).write_text("x")
    os.utime(old, (time.time() - 86400, time.time() - 86400))

    folder = io.OutputFolder.prepare(out)
    assert sorted(folder.cleaned) == sorted(f"removed {name}, left by an interrupted run"
                                            for name in (left.name, old.name))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in keep)
    with folder.staging() as tmp:
        (tmp / io.PLAN_FILE).write_text("complete")
    assert (out / io.PLAN_FILE).read_text() == "complete"


def test_kill_9_between_setting_aside_and_renaming_in_puts_the_old_output_back(tmp_path):
    out = tmp_path / "out"
    with io.OutputFolder.prepare(out).staging() as tmp:
        (tmp / io.PLAN_FILE).write_text("old")
    _run_and_kill(KILLED_WHILE_SWAPPING, out)
    assert not out.exists()  # killed with no output in place
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == [".out.old", ".out.tmp"]
    folder = io.OutputFolder.prepare(out, force=True)
    assert sorted(line.split()[0] for line in folder.cleaned) == ["removed", "restored"]
    assert (out / io.PLAN_FILE).read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
