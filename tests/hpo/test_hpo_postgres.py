"""Several machines on one PostgreSQL database, for real: a throw-away server started
here (``initdb``/``pg_ctl`` from the Debian ``postgresql`` package, as the ``postgres``
user when we are root, in a temporary folder). Skipped, with the reason, where no server
can be started. Each test gets its own empty database.

Machines are stood in for by processes with their own run folder and their own host name
(``FXPRUNE_HPO_HOST``), so liveness is judged by heartbeats, as across real machines."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest


def _server_binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A throw-away PostgreSQL server in a temporary folder."""

    def __init__(self) -> None:
        bin_dir = _server_binaries()
        if bin_dir is None:
            pytest.skip("no PostgreSQL server binaries (apt-get install postgresql)")
        try:
            import psycopg  # noqa: F401
        except ImportError:
            pytest.skip("no psycopg driver: pip install 'fxprune[distributed]'")
        self.bin_dir = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="fxprune-pg-"))
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None:
                pytest.skip("running as root without runuser: cannot start postgres")
            shutil.chown(self.folder, "postgres")
            self.prefix = [runuser, "-u", "postgres", "--"]
        self.port = _free_port()
        self.data = self.folder / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}"
        try:
            self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-N")
            self.start()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
            shutil.rmtree(self.folder, ignore_errors=True)
            detail = (getattr(err, "stderr", b"") or b"").decode()[-200:]
            pytest.skip(f"cannot start a PostgreSQL server: {err} {detail}")

    def _pg(self, program: str, *args: str) -> None:
        subprocess.run([*self.prefix, str(self.bin_dir / program), *args], check=True,
                       capture_output=True, timeout=120)

    def start(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w",
                 "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                 "-c fsync=off", "start")

    def stop(self) -> None:
        subprocess.run([*self.prefix, str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m",
                        "immediate", "stop"], capture_output=True, timeout=60, check=False)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def _new_database(server_url: str) -> str:
    import psycopg

    name = f"hpo_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"{server_url}/{name}"


@pytest.fixture(scope="module")
def postgres_server():
    """``postgresql://postgres@127.0.0.1:PORT``; the server is removed afterwards."""
    server = Server()
    try:
        yield server.url
    finally:
        server.remove()


@pytest.fixture
def database(postgres_server: str) -> str:
    """A new, empty database on the server: its URL."""
    return _new_database(postgres_server)


def _command(model: str, out: Path, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fxprune.cli", "hpo", "run", model, "--data", "synthetic",
            "--mode", "typical", "--sampler", "random", "--pruner", "none", "--threads", "1",
            "--storage", url, "--out", str(out), *extra]


def _environment(host: str) -> dict[str, str]:
    return {**os.environ, "FXPRUNE_HPO_HOST": host, "PYTHONPATH": str(Path.cwd())}


def _search_study(url: str):
    import optuna

    from hpo.storage import database_url

    storage = optuna.storages.RDBStorage(database_url(url))
    return optuna.load_study(study_name="typical", storage=storage)


def _search_trials(url: str):
    return _search_study(url).get_trials()


def test_two_machines_on_an_empty_database_share_the_budget(model_file: Path, tmp_path: Path,
                                                             database: str):
    trials = 6
    processes = [subprocess.Popen(
        _command(str(model_file), tmp_path / name, database, "--trials", str(trials),
                 "--epochs", "2", "--seeds", "1"),
        env=_environment(name), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("machine-a", "machine-b")]
    results = [p.communicate(timeout=500) for p in processes]
    for process, (stdout, stderr) in zip(processes, results):
        assert process.returncode == 0, stderr[-2000:]
        assert "UniqueViolation" not in stderr
    searched = _search_trials(database)
    counted = [t for t in searched if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(counted) == trials  # the budget is exact
    assert len({t.user_attrs["seed"] for t in counted}) == trials  # no trial duplicated
    assert {t.user_attrs["owner"]["host"] for t in counted} == {"machine-a", "machine-b"}
    winners = [json.loads((tmp_path / name / "best.json").read_text())
               for name in ("machine-a", "machine-b")]
    assert winners[0]["trial"] == winners[1]["trial"]
    assert winners[0]["hyperparams"] == winners[1]["hyperparams"]
    finals = [json.loads((tmp_path / name / "report.json").read_text())["finals"][0]
              for name in ("machine-a", "machine-b")]
    assert finals[0]["params"] == finals[1]["params"] == winners[0]["hyperparams"]


def test_a_dead_machines_trial_is_reclaimed_by_the_other(model_file: Path, tmp_path: Path,
                                                         database: str):
    slow = f"{model_file}:slow_model"  # 0.25 s per training step: trials last seconds
    extra = ("--trials", "2", "--epochs", "2", "--seeds", "0", "--heartbeat", "0.5")
    first = subprocess.Popen(_command(slow, tmp_path / "a", database, *extra),
                             env=_environment("machine-a"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    running = []
    while time.monotonic() < deadline and not running:
        time.sleep(0.5)
        try:
            running = [t for t in _search_trials(database) if t.state.name == "RUNNING"
                       and "owner" in t.user_attrs]
        except Exception:  # noqa: BLE001 - the study does not exist yet
            running = []
    first.kill()  # the machine dies: no signal handler, no goodbye
    first.wait(timeout=30)
    assert running, "machine-a never started a trial"
    lost = running[0].number
    second = subprocess.run(_command(slow, tmp_path / "b", database, *extra),
                            env=_environment("machine-b"), capture_output=True, text=True,
                            timeout=400, check=False)
    assert second.returncode == 0, second.stderr[-2000:]
    trials = {t.number: t for t in _search_trials(database)}
    assert trials[lost].state.name == "FAIL"
    # Optuna's own heartbeat (fail_stale_trials) reclaimed it: the reason is on the study
    from hpo.liveness import interruption

    study = _search_study(database)
    assert interruption(study, trials[lost]).startswith(
        "interrupted: on another machine (machine-a), no heartbeat (Optuna's)")
    import psycopg

    with psycopg.connect(database) as connection:  # every trial was beating in Optuna's table
        beating = connection.execute("SELECT count(*) FROM trial_heartbeats").fetchone()[0]
    assert beating == len(trials)  # each recorded from its claim on
    retried = [t for t in trials.values() if t.user_attrs.get("retry_of") == lost]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"
    assert retried[0].user_attrs["owner"]["host"] == "machine-b"
    done = [t for t in trials.values() if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 2


def test_sigterm_requeues_the_trial_and_exits_143(model_file: Path, tmp_path: Path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "fxprune.cli", "hpo", "run", f"{model_file}:slow_model",
               "--data", "synthetic", "--mode", "typical", "--sampler", "random", "--pruner",
               "none", "--threads", "1", "--trials", "2", "--epochs", "3", "--seeds", "0",
               "--out", str(out)]
    process = subprocess.Popen(command, env=_environment("here"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # wait for the first epoch line (plain progress)
        time.sleep(0.5)
        journal = out / "journal.log"
        if journal.is_file() and b'"step": 1' in journal.read_bytes().replace(b'"step":1',
                                                                            b'"step": 1'):
            break
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    error_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "SIGTERM" in error_lines[0], stderr[-2000:]
    assert "Traceback" not in stderr
    import optuna
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(out / "journal.log")))
    trials = optuna.load_study(study_name="typical", storage=storage).get_trials()
    interrupted = [t for t in trials if "SIGTERM" in t.user_attrs.get("reason", "")]
    assert len(interrupted) == 1 and interrupted[0].state.name == "FAIL"
    assert any(t.state.name == "WAITING" and t.user_attrs.get("retry_of") ==
               interrupted[0].number for t in trials)


def test_a_database_outage_is_one_line_and_the_same_command_resumes(model_file: Path,
                                                                     tmp_path: Path):
    server = Server()  # its own server: this test stops it
    try:
        url = _new_database(server.url)
        command = _command(f"{model_file}:slow_model", tmp_path / "run", url, "--trials", "2",
                           "--epochs", "2", "--seeds", "0")
        process = subprocess.Popen(command, env=_environment("here"), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            time.sleep(0.5)
            with contextlib.suppress(Exception):  # the study may not exist yet
                if any(t.state.name == "RUNNING" for t in _search_trials(url)):
                    break
        server.stop()  # the database goes away mid-trial
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 2, stderr[-2000:]
        assert "Traceback" not in stderr
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "re-run the same command" in errors[0], stderr[-2000:]
        server.start()
        again = subprocess.run(command, env=_environment("here"), capture_output=True,
                               text=True, timeout=400, check=False)
        assert again.returncode == 0, again.stderr[-2000:]
        done = [t for t in _search_trials(url) if t.state.name in ("COMPLETE", "PRUNED")]
        assert len(done) == 2
    finally:
        server.remove()


@pytest.mark.parametrize("installed, expected", [
    ({"psycopg"}, "postgresql+psycopg://u:p@db/hpo"),  # the distributed extra alone
    ({"psycopg", "psycopg2"}, "postgresql://u:p@db/hpo"),  # SQLAlchemy's default driver
    ({"psycopg2"}, "postgresql://u:p@db/hpo"),
])
def test_postgres_urls_name_an_installed_driver(monkeypatch, installed, expected):
    import importlib.util

    from hpo.storage import database_url

    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: object() if name in installed else None)
    for url in ("postgresql://u:p@db/hpo", "postgres://u:p@db/hpo"):
        assert database_url(url) == expected
    assert database_url("sqlite:///hpo.db") == "sqlite:///hpo.db"
