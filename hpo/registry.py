"""Samplers and pruners by name: two registries filled by a decorator; a name registered
twice is an error. The CLI's choices are these tables' keys.

Hyperband and the sampler
    Optuna's ``HyperbandPruner`` hands every sampler a filtered study holding only the
    trials of the current trial's bracket. With the paper's 160 epochs Optuna's defaults
    make 5 brackets, so 50 trials leave each sampler about 10 observations per bracket,
    most of them inside TPE's random start-up phase: the "Bayesian" search is effectively
    random. The defaults here keep the sampler useful: reduction factor 3 and a
    ``min_resource`` chosen for the budget so there is one bracket (plain successive
    halving; the sampler sees every trial) below 20 trials, two brackets below 60 and three
    from 60 on (``hyperband_settings``); the samplers' start-up phase is
    ``min(10, max(3, trials // 10))`` trials. With fewer than 2 epochs nothing is pruned.
    A trial's bracket is drawn from the search's bracket key (``Job.bracket_key``: the
    seed and repeat, shared by a compare's two arms) and the trial's number, not from the
    study's name, so both arms get the same bracket mix (``hpo._optuna``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fxprune.errors import ConfigError

if TYPE_CHECKING:
    import optuna

HYPERBAND_REDUCTION_FACTOR = 3

# Dataset names (loaded by hpo.data); here so the command line lists them without torch.
DATASETS = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "tinyimagenet",
            "synthetic")

SamplerFactory = Callable[[int, int], "optuna.samplers.BaseSampler"]  # (seed, trials)
# (trials, epochs, bracket key: searches sharing it share Hyperband's brackets; None: by name)
PrunerFactory = Callable[[int, int, "str | None"], "optuna.pruners.BasePruner"]
SAMPLERS: dict[str, SamplerFactory] = {}
PRUNERS: dict[str, PrunerFactory] = {}


def register(table: dict[str, Any], name: str) -> Callable[[Any], Any]:
    def decorate(factory: Any) -> Any:
        if name in table:
            raise ConfigError(f"{name!r} is registered twice")
        table[name] = factory
        return factory

    return decorate


def startup_trials(trials: int) -> int:
    """Random start-up trials of the model-based samplers."""
    return min(10, max(3, trials // 10))


@register(SAMPLERS, "tpe")
def _tpe(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(trials),
                                      multivariate=True, warn_independent_sampling=False)


@register(SAMPLERS, "gp")
def _gp(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials(trials),
                                     warn_independent_sampling=False)


@register(SAMPLERS, "cmaes")
def _cmaes(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup_trials(trials),
                                        warn_independent_sampling=False)


@register(SAMPLERS, "random")
def _random(seed: int, trials: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def hyperband_settings(trials: int, epochs: int) -> dict[str, int]:
    """Brackets and ``min_resource`` for the budget (see the module docstring): with
    ``B`` brackets, ``min_resource = epochs // 3**B + 1`` gives Optuna exactly ``B``."""
    wanted = 1 if trials < 20 else 2 if trials < 60 else 3
    possible = 1  # floor(log3(epochs)) + 1, in integers
    while HYPERBAND_REDUCTION_FACTOR ** possible <= epochs:
        possible += 1
    brackets = min(wanted, possible)
    return {"brackets": brackets,
            "min_resource": epochs // HYPERBAND_REDUCTION_FACTOR ** brackets + 1,
            "max_resource": epochs, "reduction_factor": HYPERBAND_REDUCTION_FACTOR}


@register(PRUNERS, "hyperband")
def _hyperband(trials: int, epochs: int, key: str | None = None) -> optuna.pruners.BasePruner:
    import optuna

    from hpo._optuna import shared_bracket_hyperband

    settings = hyperband_settings(trials, epochs)
    options = {"min_resource": settings["min_resource"], "max_resource": epochs,
               "reduction_factor": settings["reduction_factor"]}
    if key is None:  # a study made before bracket keys: Optuna's own draw, by study name
        return optuna.pruners.HyperbandPruner(**options)
    return shared_bracket_hyperband(key, **options)


@register(PRUNERS, "median")
def _median(trials: int, epochs: int, key: str | None = None) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=max(2, min(5, trials // 5)),
                                       n_warmup_steps=max(1, epochs // 4))


@register(PRUNERS, "none")
def _no_pruner(trials: int, epochs: int, key: str | None = None) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.NopPruner()


__all__ = ["DATASETS", "PRUNERS", "SAMPLERS", "hyperband_settings", "register", "startup_trials"]
