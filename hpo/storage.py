"""Where studies live, and the lock under which a trial is claimed.

By default an append-only journal file (``journal.log``, ``JournalFileBackend``) in the run
folder, which tolerates several writer processes where plain SQLite does not; ``--storage
URL`` takes an RDB URL (``sqlite:///...``, ``postgresql://...`` with the ``distributed``
extra). Failures become one line:

* a torn last journal line (a kill mid-write) is cut off before resuming; a corrupt line
  anywhere else is a ``StorageError`` naming the file and line;
* several machines creating Optuna's schema in an empty database at once race on
  PostgreSQL's catalog (``UniqueViolation``): the losers wait and retry, so one creates it;
* an unreachable database, at start or mid-run, is a ``StorageError`` (one line, exit 2);
  the same command resumes once it is back.

An RDB storage is opened with Optuna's own heartbeat (``heartbeat_interval``,
``grace_period = 3 * --heartbeat + 2`` s): ``hpo.liveness`` records it for each running
trial and reclaims a silent machine's trial with ``optuna.storages.fail_stale_trials``,
which judges staleness by the DATABASE's clock (machines' clocks may disagree). The stale
trials this process failed are handed over through Optuna's stale-trial callback
(``take_stale_trials``).

Claiming a trial (check the budget, then ask) must be atomic across every process that
shares the study: an ``fcntl`` lock on a file in the run folder for local workers, and a
PostgreSQL advisory lock for machines sharing a database (their run folders differ).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from fxprune.errors import ConfigError, FxPruneError
from hpo import _optuna

if TYPE_CHECKING:
    import optuna

    from hpo.config import HpoConfig

logger = logging.getLogger("hpo")

JOURNAL_FILE = "journal.log"
CLAIM_LOCK_FILE = ".claim.lock"
SCHEMA_RETRIES = 8
_CHECKED: set[Path] = set()


class StorageError(FxPruneError):
    """The study storage is unreachable or unreadable; the run can be resumed later."""


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for files and messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def is_storage_failure(err: BaseException | None) -> bool:
    """An error raised by the database layer (SQLAlchemy or its driver, or Optuna's
    wrapper of them), or an OS error inside Optuna's storages (the journal's disk full or
    gone), directly or as the cause of ``err``."""
    seen = 0
    while err is not None and seen < 8:
        module = type(err).__module__ or ""
        if module.startswith(("sqlalchemy", "psycopg", "psycopg2", "sqlite3")) or \
                type(err).__name__ == "StorageInternalError" or \
                (isinstance(err, OSError) and _raised_in_optuna_storage(err)):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def _raised_in_optuna_storage(err: BaseException) -> bool:
    frame = err.__traceback__
    while frame is not None:
        if "/optuna/storages/" in frame.tb_frame.f_code.co_filename.replace("\\", "/"):
            return True
        frame = frame.tb_next
    return False


def storage_error(config: HpoConfig, err: BaseException) -> StorageError:
    where = mask_url(config.storage) if config.storage else str(Path(config.out) / JOURNAL_FILE)
    first = (str(err).strip().splitlines() or [""])[0][:200]
    return StorageError(f"storage {where} failed: {type(err).__name__}: {first}; the run is "
                        "saved up to here, re-run the same command to resume")


def open_storage(config: HpoConfig) -> optuna.storages.BaseStorage:
    """The RDB storage of ``--storage``, else the journal file in the run folder."""
    import optuna

    if config.storage is None:
        from optuna.storages.journal import JournalFileBackend

        path = Path(config.out) / JOURNAL_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.resolve() not in _CHECKED:  # once per process: workers reopen it often
            check_journal(path)
            _CHECKED.add(path.resolve())
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    url = database_url(config.storage)
    interval, grace = heartbeat_settings(config.heartbeat)
    for attempt in range(SCHEMA_RETRIES):
        try:
            with warnings.catch_warnings():  # heartbeat_interval is "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return _optuna.rdb_storage(url, interval, grace, _note_stale_trial)
        except ImportError as err:
            raise ConfigError(
                f"cannot open {mask_url(config.storage)}: {err}; for postgresql:// install "
                "the driver with pip install 'fxprune[distributed]' (psycopg 3)") from None
        except Exception as err:  # noqa: BLE001 - sqlalchemy raises many kinds
            text = str(err)
            racing = "UniqueViolation" in text or "already exists" in text or \
                type(err).__name__ in ("IntegrityError", "ProgrammingError")
            if racing and attempt + 1 < SCHEMA_RETRIES:
                time.sleep(0.2 + random.random() * (attempt + 1) * 0.3)  # another creator
                continue
            if "No module named" in text or "Failed to import DB access module" in text:
                raise ConfigError(
                    f"cannot open {mask_url(config.storage)}: {text.splitlines()[0]}; for "
                    "postgresql:// install pip install 'fxprune[distributed]' (psycopg 3)"
                ) from None
            raise StorageError(f"cannot open storage {mask_url(config.storage)}: "
                               f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
                               ) from None
    raise AssertionError("unreachable")


def grace_seconds(heartbeat: float) -> float:
    """How long a trial beating every ``heartbeat`` seconds may stay silent before it counts
    as abandoned: three beats plus two seconds (journal and RDB alike)."""
    return 3 * heartbeat + 2.0


def heartbeat_settings(heartbeat: float) -> tuple[int, int]:
    """Optuna's ``(heartbeat_interval, grace_period)`` for ``--heartbeat`` seconds (Optuna
    takes whole seconds): the grace is ``grace_seconds``, rounded up."""
    return max(1, round(heartbeat)), max(1, math.ceil(grace_seconds(heartbeat)))


_STALE_FAILED: list[optuna.trial.FrozenTrial] = []


def _note_stale_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna's stale-trial callback: called by ``fail_stale_trials`` for each trial THIS
    process marked FAIL (another process racing on the same trial does not see it)."""
    _STALE_FAILED.append(trial)


def take_stale_trials() -> list[optuna.trial.FrozenTrial]:
    """The trials failed by ``fail_stale_trials`` in this process since the last call."""
    taken = list(_STALE_FAILED)
    _STALE_FAILED.clear()
    return taken


def database_url(url: str) -> str:
    """``postgresql://`` as written: SQLAlchemy reads it as psycopg2; with only psycopg 3
    installed (the ``distributed`` extra) the URL is pointed at that driver. The short
    ``postgres://`` (Heroku's, libpq's), which SQLAlchemy does not know, means the same."""
    if not url.startswith(("postgresql://", "postgres://")):
        return url
    import importlib.util

    rest = url.split("://", 1)[1]
    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg"):
        return "postgresql+psycopg://" + rest
    return "postgresql://" + rest


def check_journal(path: Path) -> None:
    """Refuse a journal with an unreadable line before Optuna replays it (its own error is
    a long traceback without the file's name). A torn LAST line is repaired instead."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    repair_journal(path)
    # Another process may append meanwhile: what follows the last newline is its write
    # under way, not a corrupt line (a torn one was cut above, under the journal's lock).
    complete = path.read_bytes().split(b"\n")[:-1]
    for number, line in enumerate(complete, start=1):
        try:
            record = json.loads(line)
        except ValueError as err:
            raise StorageError(f"{path}:{number}: corrupt journal line ({err}); restore the "
                               "file from a backup or start a new --out") from None
        if not isinstance(record, dict) or "op_code" not in record:
            raise StorageError(f"{path}:{number}: not an Optuna journal record")


def repair_journal(path: Path) -> bool:
    """Cut a torn last line (a process killed mid-append) off the journal; True if cut.
    Holds the journal's own lock, so no other process appends meanwhile."""
    from optuna.storages.journal import JournalFileSymlinkLock

    if not path.is_file() or path.stat().st_size == 0:
        return False
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        with open(path, "rb+") as journal:
            journal.seek(-1, os.SEEK_END)
            if journal.read(1) == b"\n":
                return False
            data = path.read_bytes()
            journal.truncate(data.rfind(b"\n") + 1)
            logger.warning("%s: cut a torn last line left by a killed process", path)
            return True
    finally:
        lock.release()


_ADVISORY_ENGINES: dict[str, Any] = {}


@contextlib.contextmanager
def _advisory_lock(url: str, key: str) -> Iterator[None]:
    """A PostgreSQL session-level advisory lock: every machine on the database queues here."""
    import sqlalchemy

    engine = _ADVISORY_ENGINES.get(url)
    if engine is None:
        engine = _ADVISORY_ENGINES[url] = sqlalchemy.create_engine(
            database_url(url), poolclass=sqlalchemy.pool.NullPool)
    lock_id = zlib.crc32(key.encode()) & 0x7FFFFFFF
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:id)"), {"id": lock_id})
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id})
            connection.commit()


@contextlib.contextmanager
def claim_lock(config: HpoConfig) -> Iterator[None]:
    """Exclusive lock over everyone sharing the studies while a trial is claimed (released
    if we die: the file lock with the process, the advisory lock with its connection)."""
    if config.storage is not None and config.storage.startswith(("postgresql", "postgres:")):
        with _advisory_lock(config.storage, f"fxprune-hpo:{config.study_name or ''}"):
            yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: workers are serialised by the storage alone
        yield
        return
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / CLAIM_LOCK_FILE, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def create_or_load_study(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """``create_study(load_if_exists=True)``, retried when another machine creates the same
    study at the same moment (the loser sees a duplicate-name error)."""
    import optuna

    for attempt in range(SCHEMA_RETRIES):
        try:
            return optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                       load_if_exists=True)
        except optuna.exceptions.DuplicatedStudyError:
            time.sleep(0.1 * (attempt + 1))
        except Exception as err:
            if not is_storage_failure(err) or attempt + 1 == SCHEMA_RETRIES:
                raise
            time.sleep(0.2 * (attempt + 1))
    return optuna.load_study(study_name=name, storage=storage)


__all__ = ["CLAIM_LOCK_FILE", "JOURNAL_FILE", "StorageError", "check_journal", "claim_lock",
           "create_or_load_study", "database_url", "grace_seconds", "heartbeat_settings",
           "is_storage_failure",
           "mask_url", "open_storage", "repair_journal", "storage_error", "take_stale_trials"]
