"""Faults a cluster produces: a corrupt journal, a failed trial fixed between runs, a typo
caught before anything is stored, logs that are files, data mounted at another path."""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fxprune.errors import ConfigError, DataError
from hpo import driver
from hpo.cli import PlainProgress
from hpo.config import Snapshot
from hpo.data import load_dataset, read_idx
from hpo.storage import StorageError


def load(config, name):
    import optuna

    return optuna.load_study(study_name=name, storage=driver.open_storage(config))


def test_a_corrupt_journal_line_is_one_error_naming_file_and_line(make_config):
    config = make_config(mode="typical", trials=1, epochs=1)
    driver.run(config)
    journal = Path(config.out) / "journal.log"
    lines = journal.read_bytes().splitlines(keepends=True)
    lines.insert(2, b'{"op_code": 5, "worker_id": \n')
    journal.write_bytes(b"".join(lines))
    from hpo import storage

    storage._CHECKED.clear()
    with pytest.raises(StorageError, match=re.escape(f"{journal}:3: corrupt journal line")):
        driver.run(config)


def test_a_line_being_appended_by_another_process_is_not_corrupt(tmp_path: Path, monkeypatch):
    from hpo import storage

    journal = tmp_path / "journal.log"
    journal.write_bytes(b'{"op_code": 0, "worker_id": "a"}\n{"op_code": 5, "wor')
    # the other process's append began after the torn-line repair released the lock
    monkeypatch.setattr(storage, "repair_journal", lambda path: False)
    storage.check_journal(journal)  # no error: the unfinished last line is not judged
    journal.write_bytes(b'{"op_code": 0}\n{"op_code": 5, "wor\n{"op_code": 1}\n')
    with pytest.raises(StorageError, match=re.escape(f"{journal}:2: corrupt journal line")):
        storage.check_journal(journal)


def test_a_typo_is_refused_before_anything_is_stored(make_config, tmp_path: Path):
    config = make_config(mode="proxy", scorer="synflw", out=str(tmp_path / "never"))
    with pytest.raises(ConfigError, match="--scorer"):
        driver.run(config)
    assert not (tmp_path / "never").exists()
    with pytest.raises(Exception, match="not found"):
        driver.run(make_config(model=str(tmp_path / "nope.py"), out=str(tmp_path / "never")))
    assert not (tmp_path / "never").exists()


def test_failed_trials_are_retried_on_the_next_run(make_config, monkeypatch):
    from hpo import worker

    config = make_config(mode="typical", trials=3, epochs=1)
    real = worker.TrialRunner.__call__
    calls = {"n": 0}

    def flaky(self, trial):
        calls["n"] += 1
        if calls["n"] == 2:
            self.config.space.suggest(trial)  # the point is drawn, then the data fails
            raise RuntimeError("disk hiccup")
        return real(self, trial)

    monkeypatch.setattr(worker.TrialRunner, "__call__", flaky)
    driver.run(config)
    failed = [t for t in load(config, "typical").get_trials() if t.state.name == "FAIL"]
    assert len(failed) == 1 and "disk hiccup" in failed[0].user_attrs["reason"]
    monkeypatch.setattr(worker.TrialRunner, "__call__", real)
    report = driver.run(config)  # the same command again: the failed point runs again
    trials = load(config, "typical").get_trials()
    retried = [t for t in trials if t.user_attrs.get("retry_of") == failed[0].number]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"
    assert retried[0].params == failed[0].params
    # the budget is exact: the retried failure no longer counts, its retry does
    assert report.study("typical").counts == {"COMPLETE": 3, "FAIL": 1}


def test_plain_progress_is_one_timestamped_line_per_epoch_and_trial():
    stream = io.StringIO()
    show = PlainProgress(stream)
    show(Snapshot("typical", 0, 4, trial=0, epoch=0, epochs=2))  # start: nothing
    show(Snapshot("typical", 0, 4, trial=0, epoch=1, epochs=2, value=0.5))
    show(Snapshot("typical", 0, 4, trial=0, epoch=1, epochs=2, value=0.5))  # repeated poll
    show(Snapshot("typical", 1, 4, best=0.75))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ typical 0/4 trial 0 epoch 1/2 \| "
                        r"acc 50\.0%", lines[0])
    assert lines[1].endswith("typical 1/4 best 75.0%")


def test_a_full_disk_under_the_journal_is_one_storage_error(make_config, monkeypatch):
    from optuna.storages.journal import JournalFileBackend

    config = make_config(mode="typical", trials=3)
    real, writes = JournalFileBackend.append_logs, []

    def append_logs(self, logs):
        writes.append(len(logs))
        if len(writes) > 12:  # mid-run: the first trial has started
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, logs)

    monkeypatch.setattr(JournalFileBackend, "append_logs", append_logs)
    with pytest.raises(StorageError, match=r"journal\.log failed: OSError: \[Errno 28\] No "
                                           "space left on device; the run is saved up to here"):
        driver.run(config)
    monkeypatch.undo()  # space again: the same command resumes and finishes the budget
    assert driver.run(config).study("typical").counts["COMPLETE"] == 3


def test_plain_progress_follows_every_trial_running_at_once():
    # two workers' trials polled in turn (worker.show_remote): each epoch line once
    stream = io.StringIO()
    show = PlainProgress(stream)
    for _ in range(3):  # three polls of the same state
        show(Snapshot("typical", 0, 4, trial=0, epoch=1, epochs=2, value=0.5))
        show(Snapshot("typical", 0, 4, trial=1, epoch=1, epochs=2, value=0.25))
    show(Snapshot("typical", 0, 4, trial=0, epoch=2, epochs=2, value=0.6))
    show(Snapshot("typical", 0, 4, trial=1, epoch=1, epochs=2, value=0.25))  # unchanged
    lines = stream.getvalue().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "typical 0/4 trial 0 epoch 1/2 | acc 50.0%",
        "typical 0/4 trial 1 epoch 1/2 | acc 25.0%",
        "typical 0/4 trial 0 epoch 2/2 | acc 60.0%"]


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _mnist_folder(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for split, count in (("train", 100), ("t10k", 20)):
        _write_idx(folder / f"{split}-images-idx3-ubyte.gz",
                   rng.integers(0, 256, (count, 28, 28)))
        _write_idx(folder / f"{split}-labels-idx1-ubyte.gz", np.arange(count) % 10)
    return folder


def test_mnist_idx_files_give_three_splits_and_a_content_fingerprint(tmp_path: Path):
    first = _mnist_folder(tmp_path / "a")
    second = tmp_path / "elsewhere" / "b"
    shutil.copytree(first, second)
    data = load_dataset("mnist", first, holdout=True)
    assert (len(data.train), len(data.val), len(data.test)) == (90, 10, 20)
    assert data.input_shape == (1, 3, 28, 28)
    assert data.fingerprint() == load_dataset("mnist", second, holdout=True).fingerprint()
    other = _mnist_folder(tmp_path / "c", seed=1)
    assert data.fingerprint() != load_dataset("mnist", other, holdout=True).fingerprint()
    images = read_idx(first / "t10k-images-idx3-ubyte.gz")
    assert images.shape == (20, 28, 28)
    assert torch.equal(data.test.images(torch.tensor([0]))[0, 0],
                       torch.from_numpy(images[0].copy()))


def test_a_bad_idx_file_is_one_data_error(tmp_path: Path):
    folder = _mnist_folder(tmp_path / "m")
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01junk"))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        load_dataset("mnist", folder)
    other = _mnist_folder(tmp_path / "n")
    (other / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-images"):
        load_dataset("mnist", other)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_the_debian_package():
    data = load_dataset("fashion-mnist", holdout=True, train_size=500, eval_size=200)
    assert (len(data.train), len(data.val), len(data.test)) == (500, 200, 200)
    assert torch.bincount(data.test.labels, minlength=10).tolist() == [20] * 10
    full = load_dataset("fashion-mnist", holdout=True)
    assert (len(full.train), len(full.val), len(full.test)) == (54000, 6000, 10000)


def _children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid`` (``/proc/<pid>/stat`` field 4)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.add(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc")
def test_workers_die_with_their_parent(model_file: Path, tmp_path: Path):
    """kill -9 of the parent (no handler runs): its workers, told by PR_SET_PDEATHSIG,
    stop mid-trial instead of training on as orphans. A trial lasts minutes here (100 epochs
    of 0.25 s steps), so a worker that only noticed between trials would outlive the
    deadline; the deadline is generous because a loaded machine slows the exit itself."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from hpo.liveness import process_start

    out = tmp_path / "run"
    command = [sys.executable, "-m", "fxprune.cli", "hpo", "run", f"{model_file}:slow_model",
               "--data", "synthetic", "--mode", "typical", "--sampler", "random", "--pruner",
               "none", "--threads", "1", "--workers", "2", "--trials", "4", "--epochs", "100",
               "--seeds", "0", "--out", str(out)]
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    try:
        deadline, workers = time.monotonic() + 240, set()
        while time.monotonic() < deadline and len(workers) < 2:  # both workers training
            time.sleep(0.5)
            if (out / "journal.log").is_file():
                with contextlib.suppress(Exception):  # the study may not exist yet
                    workers = {t.user_attrs["owner"]["pid"] for t in
                               load(driver.HpoConfig(model="x", out=str(out)), "typical")
                               .get_trials() if t.state.name == "RUNNING"
                               and "owner" in t.user_attrs}
        assert len(workers) == 2, "the workers never started a trial"
        children = _children(parent.pid)
        assert workers <= children
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(process_start(p) for p in children):
            time.sleep(0.2)
        alive = [p for p in children if process_start(p) is not None]
        assert not alive, f"children {alive} outlived their killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
