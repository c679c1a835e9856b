"""The hyperparameter search space of the paper's Table 2, as a frozen config object.

Each field is either a ``(low, high)`` range, which the sampler searches, or a single
number, which stays fixed. The defaults follow the paper's main experiments: learning
rate, batch size and weight decay are searched; SGD momentum (0.9) and the step-decay
factor (0.1) are fixed. ``SearchSpace.extended()`` searches all five, as in the paper's
"additional hyperparameters" experiment (momentum [0.1, 0.99], decay factor [0.1, 1]).

Batch size is searched as **powers of two**: the sampler sees the integer exponent
``log2_batch_size`` in [5, 10] and the trainer gets ``2 ** exponent`` (32 ... 1024). An
integer exponent keeps every sampler (TPE, GP, CMA-ES) on a numeric, ordered axis, which a
categorical batch size would not.

A TOML file overrides any field; a range is a two-element array, a fixed value a number::

    lr = [1e-4, 0.1]
    batch_size = [64, 512]
    momentum = [0.1, 0.99]   # search it
    decay_factor = 0.2       # fix it

The keys may also sit under a ``[space]`` table.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fxprune.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

if TYPE_CHECKING:
    import optuna

Bound = float | tuple[float, float]

# Optuna parameter names, one per searched field; batch size is searched as its exponent.
PARAM_NAMES = {
    "lr": "lr",
    "batch_size": "log2_batch_size",
    "weight_decay": "weight_decay",
    "momentum": "momentum",
    "decay_factor": "decay_factor",
}
_LOG_SCALE = {"lr": True, "weight_decay": True, "momentum": False, "decay_factor": False}
# What each value must satisfy, with the words used when it does not.
_VALID = {
    "lr": (lambda v: v > 0, "> 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "decay_factor": (lambda v: 0 < v <= 1, "in (0, 1]"),
}

@dataclass(frozen=True)
class HyperParams:
    """One point of the search space: what a training run is given."""

    lr: float
    batch_size: int
    weight_decay: float
    momentum: float = 0.9
    decay_factor: float = 0.1

    def to_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HyperParams:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown hyperparameter(s) {', '.join(unknown)}; "
                              f"expected {', '.join(sorted(known))}")
        try:
            return cls(
                lr=float(data["lr"]),
                batch_size=int(data["batch_size"]),
                weight_decay=float(data["weight_decay"]),
                momentum=float(data.get("momentum", 0.9)),
                decay_factor=float(data.get("decay_factor", 0.1)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"bad hyperparameters {data!r}: {err}") from None


@dataclass(frozen=True)
class SearchSpace:
    """Ranges searched (tuples) or values fixed (numbers); see the module docstring."""

    lr: Bound = (1e-5, 0.2)
    batch_size: Bound = (32, 1024)
    weight_decay: Bound = (1e-5, 2e-2)
    momentum: Bound = 0.9
    decay_factor: Bound = 0.1

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):  # from JSON/TOML: freeze into a tuple
                value = tuple(value)
                object.__setattr__(self, field.name, value)
            _check_bound(field.name, value)

    @classmethod
    def extended(cls) -> SearchSpace:
        """All five hyperparameters searched, as in the paper's additional experiment."""
        return cls(momentum=(0.1, 0.99), decay_factor=(0.1, 1.0))

    @property
    def searched(self) -> tuple[str, ...]:
        """Names of the fields that are ranges, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(self)
                     if isinstance(getattr(self, f.name), tuple))

    def suggest(self, trial: optuna.trial.BaseTrial) -> HyperParams:
        """Ask ``trial`` for every searched field; fixed fields pass through."""
        values: dict[str, float | int] = {}
        for field in dataclasses.fields(self):
            name, bound = field.name, getattr(self, field.name)
            if not isinstance(bound, tuple):
                values[name] = int(bound) if name == "batch_size" else float(bound)
            elif name == "batch_size":
                low, high = (int(math.log2(b)) for b in bound)
                values[name] = 2 ** trial.suggest_int(PARAM_NAMES[name], low, high)
            else:
                values[name] = trial.suggest_float(
                    PARAM_NAMES[name], float(bound[0]), float(bound[1]), log=_LOG_SCALE[name]
                )
        return HyperParams(**values)

    def to_params(self, hyperparams: HyperParams) -> dict[str, float | int]:
        """The Optuna ``params`` dict of ``hyperparams`` (for enqueueing a known point)."""
        params: dict[str, float | int] = {}
        for name in self.searched:
            value = getattr(hyperparams, name)
            params[PARAM_NAMES[name]] = int(math.log2(value)) if name == "batch_size" else value
        return params

    def from_params(self, params: dict[str, Any]) -> HyperParams:
        """Inverse of ``to_params``: an Optuna ``params`` dict back to ``HyperParams``."""
        values: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            name, bound = field.name, getattr(self, field.name)
            if not isinstance(bound, tuple):
                values[name] = bound
            elif PARAM_NAMES[name] not in params:
                raise ConfigError(f"trial params {params!r} lack {PARAM_NAMES[name]!r}")
            elif name == "batch_size":
                values[name] = 2 ** int(params[PARAM_NAMES[name]])
            else:
                values[name] = params[PARAM_NAMES[name]]
        return HyperParams.from_dict(values)

    def to_dict(self) -> dict[str, float | list[float]]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: SearchSpace | None = None) -> SearchSpace:
        """``base`` (default: the paper's space) with the fields in ``data`` replaced."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown search-space key(s) {', '.join(unknown)}; "
                              f"expected {', '.join(sorted(known))}")
        return dataclasses.replace(base or cls(), **data)

    @classmethod
    def from_toml(cls, path: str | Path, base: SearchSpace | None = None) -> SearchSpace:
        """Override ``base`` from a TOML file (top-level keys or a ``[space]`` table)."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"search-space file not found: {path}") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"{path}: not a readable TOML file ({err})") from None
        if isinstance(data.get("space"), dict):
            data = data["space"]
        try:
            return cls.from_dict(data, base)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None


def _check_bound(name: str, bound: object) -> None:
    """Raise ``ConfigError`` unless ``bound`` is a valid fixed value or range for ``name``."""
    if isinstance(bound, bool) or not isinstance(bound, (int, float, tuple)):
        raise ConfigError(f"search space {name}: expected a number or [low, high], got {bound!r}")
    values = bound if isinstance(bound, tuple) else (bound,)
    if len(values) not in (1, 2) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        for v in values
    ):
        raise ConfigError(f"search space {name}: expected a number or [low, high], got {bound!r}")
    if isinstance(bound, tuple) and (len(values) != 2 or values[0] >= values[1]):
        raise ConfigError(f"search space {name}: range {list(bound)} needs low < high")
    if name == "batch_size":
        for value in values:
            if value < 1 or int(value) != value or int(value) & (int(value) - 1):
                raise ConfigError(f"search space batch_size: {value} is not a power of two "
                                  "(batch size is searched as 2**k)")
        return
    is_valid, rule = _VALID[name]
    for value in values:
        if not is_valid(value):
            raise ConfigError(f"search space {name}: {value} is not {rule}")
    if isinstance(bound, tuple) and _LOG_SCALE[name] and bound[0] <= 0:
        raise ConfigError(f"search space {name}: a log-scale range needs low > 0, got {bound[0]}")

__all__ = ["PARAM_NAMES", "HyperParams", "SearchSpace"]
