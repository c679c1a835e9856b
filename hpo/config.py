"""What a run is: ``HpoConfig`` (every option, round-trips through JSON), ``Job`` (one study
to run) and ``Snapshot`` (progress for a display). Validation that needs no I/O happens
here; the coordinator (``hpo.driver.ProxyHpo``) checks model, scorer and data before
anything is stored."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fxprune.errors import ConfigError
from hpo.registry import PRUNERS, SAMPLERS
from hpo.space import SearchSpace

MODES = ("typical", "proxy", "final")
# How the proxy's weights are initialised (hpo.network): the model's own init rescaled to
# each slim layer's fan-in, or the model's own init as drawn for the base widths.
PROXY_INITS = ("fan-in", "model")
# The learning rate a proxy trial trains each layer with (hpo.network): the trial's own
# ("same", the paper's method), or per layer times fan_in_base / fan_in_slim, with the
# weight decay divided by it ("fan-in").
PROXY_LRS = ("same", "fan-in")
# Seeds of final runs and of the shared rank configurations live far from the search
# trials' seeds (seed + 1 + trial number), so no "independent" final run replays a trial.
FINAL_SEED_OFFSET = 1_000_000
RANK_SEED_OFFSET = 2_000_000
CONFIRM_SEED_OFFSET = 3_000_000
MAX_SEED = 2**30
CONFIG_FILE = "config.json"  # in a run folder: the command and its HpoConfig
BRACKET_KEY = "bracket_key"  # search study user attr: Job.bracket_key, kept for resumes
# The options (besides the data digest and the space) every study's results depend on.
BASE_FINGERPRINT_KEYS = ("model", "data", "image_size", "epochs", "seed", "train_size",
                         "eval_size")
# A search study's too. Studies stored before they were recorded lack them and still resume.
SEARCH_FINGERPRINT_KEYS = ("sampler", "pruner")
STUDY_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class HpoConfig:
    """Everything a run needs; round-trips through ``to_dict``/``from_dict``."""

    model: str
    data: str = "digits"
    out: str = "runs/hpo"
    mode: str = "proxy"
    sampler: str = "tpe"
    pruner: str = "hyperband"
    trials: int = 50
    epochs: int = 160
    seeds: int = 3
    seed: int = 0
    workers: int = 1
    ratio: float = 0.85
    min_ratio: float = 0.15
    scorer: str = "synflow"
    space: SearchSpace = field(default_factory=SearchSpace)
    kendall_k: int = 8
    data_dir: str | None = None
    image_size: int | None = None
    storage: str | None = None
    threads: int | None = None  # torch intra-op threads per worker; None: cores // workers
    repeats: int = 1  # compare: independent replicates with their own sampler seeds
    study_name: str | None = None  # prefix of every study: several experiments in one database
    train_size: int | None = None  # cap on the train split (seeded, stratified subset)
    eval_size: int | None = None  # cap on the validation and test splits
    heartbeat: float = 10.0  # seconds between liveness stamps of a running trial
    proxy_init: str = "fan-in"  # see PROXY_INITS
    proxy_lr: str = "same"  # see PROXY_LRS
    # Proxy searches: the best ``confirm`` proxy trials are trained once on the base network
    # (validation split) and the best of them wins; 0 keeps the paper's method (the proxy's
    # best set is the winner). Its time is part of the proxy arm's search time.
    confirm: int = 0
    # compare: a finished compare folder whose typical arm this one imports (hpo.reuse)
    typical_from: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.space, dict):
            object.__setattr__(self, "space", SearchSpace.from_dict(self.space))
        checks = [
            (self.mode in MODES, f"mode {self.mode!r}: choose one of {', '.join(MODES)}"),
            (self.sampler in SAMPLERS,
             f"sampler {self.sampler!r}: choose one of {', '.join(SAMPLERS)}"),
            (self.pruner in PRUNERS, f"pruner {self.pruner!r}: choose one of {', '.join(PRUNERS)}"),
            (self.trials >= 1, f"--trials must be at least 1, got {self.trials}"),
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.seeds >= 0, f"--seeds must be 0 or more, got {self.seeds}"),
            # final, rank and confirmation seeds lie millions above it; numpy takes < 2**32
            (0 <= self.seed < MAX_SEED, f"--seed must be in [0, {MAX_SEED}), got {self.seed}"),
            (self.workers >= 1, f"--workers must be at least 1, got {self.workers}"),
            (self.threads is None or self.threads >= 1,
             f"--threads must be at least 1, got {self.threads}"),
            (0.0 < self.ratio < 1.0, f"--ratio must be in (0, 1), got {self.ratio}"),
            (0.0 < self.min_ratio <= 1.0, f"--min-ratio must be in (0, 1], got {self.min_ratio}"),
            (self.kendall_k == 0 or self.kendall_k >= 2,
             f"--kendall-k must be 0 (off) or at least 2, got {self.kendall_k}"),
            (self.storage is None or "://" in self.storage,
             f"--storage {self.storage!r} is not a database URL (e.g. sqlite:///hpo.db)"),
            (self.repeats >= 1, f"--repeats must be at least 1, got {self.repeats}"),
            (self.study_name is None or bool(STUDY_NAME_PATTERN.fullmatch(self.study_name)),
             f"--study-name {self.study_name!r}: use letters, digits, '_', '-', '.' (<= 64)"),
            (self.heartbeat > 0, f"--heartbeat must be > 0 seconds, got {self.heartbeat}"),
            (self.confirm >= 0, f"--confirm must be 0 (off) or more, got {self.confirm}"),
            (self.confirm == 0 or self.mode != "typical",
             "--confirm re-checks a proxy search's best sets: use it with --mode proxy"),
            (self.proxy_init in PROXY_INITS,
             f"--proxy-init {self.proxy_init!r}: choose one of {', '.join(PROXY_INITS)}"),
            (self.proxy_lr in PROXY_LRS,
             f"--proxy-lr {self.proxy_lr!r}: choose one of {', '.join(PROXY_LRS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["space"] = self.space.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HpoConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **changes: Any) -> HpoConfig:
        return dataclasses.replace(self, **changes)

    def fingerprint(self, role: str, data_digest: str | None = None,
                    search: bool = False) -> dict[str, Any]:
        """The options a study's results depend on: resuming with others is refused
        (``fingerprint_changes``). The data enters by its content digest, not its path
        (machines mount it differently). ``search``: a search study's, which also depends
        on its sampler and pruner."""
        data = {k: getattr(self, k) for k in BASE_FINGERPRINT_KEYS}
        if search:
            data.update(sampler=self.sampler, pruner=self.search_pruner)
        data["data_digest"] = data_digest
        data["space"] = self.space.to_dict()
        if role == "proxy":
            data.update(ratio=self.ratio, min_ratio=self.min_ratio, scorer=self.scorer,
                        proxy_init=self.proxy_init)
            if self.proxy_lr != "same":  # absent when "same": older run folders still resume
                data["proxy_lr"] = self.proxy_lr
        return data

    def study(self, name: str) -> str:
        """The stored name of stage ``name`` (``--study-name`` prefixes every stage)."""
        return name if self.study_name is None else f"{self.study_name}:{name}"

    @property
    def search_pruner(self) -> str:
        """The pruner a search study runs: ``pruner``, or "none" for one-epoch trials, which
        have nothing to stop early (planned trials never prune: ``hpo.worker``)."""
        return self.pruner if self.epochs >= 2 else "none"

    def final_seeds(self) -> list[int]:
        return [self.seed + FINAL_SEED_OFFSET + i for i in range(self.seeds)]


@dataclass(frozen=True)
class Job:
    """One study to run: a search (``budget`` trials, sampler + pruner) or a planned list."""

    name: str
    role: str  # "base" or "proxy"
    kind: str  # "search", "final", "rank" or "confirm"
    budget: int
    planned: tuple[dict[str, Any], ...] = ()  # user_attrs of each planned trial
    save_models: bool = False
    source: str | None = None  # for finals: the study whose best set is trained
    sampler_seed: int = 0  # searches: the repeat's seed for this arm
    # searches: Hyperband's brackets are drawn from this and the trial number (hpo.registry)
    bracket_key: str | None = None

    @property
    def eval_split(self) -> str:
        """Searches, confirmations and rank configurations are judged on validation, finals
        on test."""
        return "test" if self.kind == "final" else "val"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        return cls(**{**data, "planned": tuple(data["planned"])})


@dataclass(frozen=True)
class Snapshot:
    """Progress of the running study, for a progress display."""

    study: str
    done: int
    budget: int
    trial: int | None = None
    epoch: int = 0
    epochs: int = 0
    value: float | None = None
    best: float | None = None
    event: str | None = None  # a line worth printing: a failed or diverged trial


ProgressCallback = Callable[[Snapshot], None]


def digest(data: Any) -> str:
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


def arm_seed(config: HpoConfig, repeat: int, arm: str) -> int:
    """The sampler seed of one arm in one repeat: distinct per repeat, per arm AND per
    sampler. The arms must not share their random start-up points, and neither may two
    samplers: GP and CMA-ES count only COMPLETE trials toward their start-up phase, so
    under Hyperband they sample at random for most of a short search, and with a shared
    seed they drew the very same points (identical repeats in the first benchmark)."""
    return int(digest([config.seed, repeat, arm, config.sampler]), 16) % 2**31


def load_run(out: str | Path, storage: str | None = None) -> tuple[HpoConfig, str]:
    """The config and command ("run"/"compare") saved in a run folder."""
    path = Path(out) / CONFIG_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        config = HpoConfig.from_dict({**saved["config"], "out": str(out)})
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"{out} is not an HPO run folder (no {CONFIG_FILE})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: unreadable ({err})") from None
    if storage is not None:
        config = config.replace(storage=storage)
    elif config.storage is not None and "***" in config.storage:
        raise ConfigError(f"{out} used the storage {config.storage}: pass --storage URL")
    return config, str(saved.get("command", "run"))


def fingerprint_changes(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The options whose stored value differs from this run's, sorted; a search key that
    ``stored`` lacks (a study made before it was recorded) is no change."""
    return sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k)
                  and (k in stored or k not in SEARCH_FINGERPRINT_KEYS))


def _saved(out: Path) -> dict[str, Any]:
    try:
        saved = json.loads((Path(out) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def saved_option(out: Path, key: str) -> Any:
    """Option ``key`` as saved in run folder ``out`` (None if there is none)."""
    config = _saved(out).get("config")
    return config.get(key) if isinstance(config, dict) else None


def saved_command(out: Path) -> str | None:
    """The command ("run"/"compare") saved in run folder ``out`` (None if there is none)."""
    command = _saved(out).get("command")
    return command if isinstance(command, str) else None


__all__ = ["BASE_FINGERPRINT_KEYS", "BRACKET_KEY", "CONFIG_FILE", "CONFIRM_SEED_OFFSET",
           "FINAL_SEED_OFFSET", "MAX_SEED", "MODES", "PROXY_INITS", "PROXY_LRS",
           "RANK_SEED_OFFSET", "SEARCH_FINGERPRINT_KEYS", "HpoConfig", "Job",
           "ProgressCallback", "Snapshot", "arm_seed", "digest", "fingerprint_changes",
           "load_run", "saved_command", "saved_option"]
