"""Every use of Optuna's private attributes, in one place.

Optuna's public ``Study`` API has no way to write to a trial that is not the one being
asked/told (marking an abandoned RUNNING trial FAIL, reading a trial by its storage id), so
the driver reaches into ``Study._storage`` and ``FrozenTrial._trial_id``. If Optuna
renames them, this module is the only one to change; ``tests/hpo`` exercise each helper.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage object behind ``study``."""
    return study._storage


def trial_id(trial: optuna.trial.FrozenTrial | optuna.Trial) -> int:
    """The storage-wide id of ``trial`` (unlike ``number``, unique across studies)."""
    return trial._trial_id


def study_id(study: optuna.Study) -> int:
    """The storage id of ``study`` (creation order: a later study has a larger id)."""
    return study._study_id


def frozen(study: optuna.Study, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """The stored state of a live ``trial``."""
    return storage_of(study).get_trial(trial_id(trial))


def set_user_attr(study: optuna.Study, trial: Any, key: str, value: Any) -> None:
    """Set a user attribute of any RUNNING trial of ``study``, not only one we hold."""
    storage_of(study).set_trial_user_attr(trial_id(trial), key, value)


def fail(study: optuna.Study, trial: Any) -> None:
    """Mark a RUNNING trial FAIL (it may belong to another, dead process)."""
    from optuna.trial import TrialState

    storage_of(study).set_trial_state_values(trial_id(trial), TrialState.FAIL)


def has_heartbeat(study: optuna.Study) -> bool:
    """Whether ``study``'s storage keeps Optuna's own heartbeat (an RDB opened with a
    ``heartbeat_interval``, as ``hpo.storage.open_storage`` does)."""
    storage = storage_of(study)
    interval = getattr(storage, "get_heartbeat_interval", None)
    return callable(interval) and interval() is not None


def record_heartbeat(study: optuna.Study, trial: Any) -> None:
    """Optuna's heartbeat of a running trial (``BaseHeartbeat.record_heartbeat``), stamped
    by the database's clock; what ``optuna.storages.fail_stale_trials`` reads."""
    storage_of(study).record_heartbeat(trial_id(trial))


def rdb_storage(url: str, heartbeat_interval: int, grace_period: int,
                stale_callback: Any) -> optuna.storages.RDBStorage:
    """``RDBStorage`` with Optuna's heartbeat. The stale-trial callback's keyword is
    ``heartbeat_stale_trial_callback`` from Optuna 4.9, ``failed_trial_callback`` before."""
    import inspect

    import optuna

    parameters = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    keyword = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in parameters
               else "failed_trial_callback")
    return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval,
                                      grace_period=grace_period, **{keyword: stale_callback})


def shared_bracket_hyperband(key: str, **settings: Any) -> optuna.pruners.HyperbandPruner:
    """Optuna's ``HyperbandPruner`` with one change: a trial's bracket is drawn from
    ``key`` and its number instead of the study's NAME and its number. With the name, the
    two arms of a compare ("typical", "proxy") got different bracket mixes: at 20 trials x
    5 epochs, 17 of "typical"'s 20 trials fell in the aggressive bracket against 12 of
    "proxy"'s, so the typical search ran ~20% fewer epochs in every single-repeat compare.
    Arms that share ``key`` share their brackets trial by trial. Overrides the private
    ``_get_bracket_id``: Optuna's own draw, which reads only the study's name, is handed a
    stand-in named ``key``."""
    from types import SimpleNamespace

    import optuna

    named_key = SimpleNamespace(study_name=key)

    class SharedBracketHyperband(optuna.pruners.HyperbandPruner):
        def _get_bracket_id(self, study: Any, trial: Any) -> int:
            return super()._get_bracket_id(named_key, trial)

    return SharedBracketHyperband(**settings)


def bracket_id(pruner: optuna.pruners.HyperbandPruner, study: optuna.Study,
               trial: optuna.trial.FrozenTrial) -> int:
    """The bracket ``pruner`` puts ``trial`` of ``study`` in (initialising it if needed)."""
    if not pruner._pruners:  # Optuna's initialisation appends: run it once
        pruner._try_initialization(study)
    return pruner._get_bracket_id(study, trial)


def copy_into(study: optuna.Study, target: optuna.Study) -> None:
    """Copy ``study``'s system attributes and trials (states, values, attributes, times and
    numbers kept) into the empty study ``target``, in any storage."""
    source, storage = storage_of(study), storage_of(target)
    for key, value in source.get_study_system_attrs(study_id(study)).items():
        storage.set_study_system_attr(study_id(target), key, value)
    for trial in study.get_trials(deepcopy=False):
        storage.create_new_trial(study_id(target), template_trial=trial)


__all__ = ["bracket_id", "copy_into", "fail", "frozen", "has_heartbeat", "rdb_storage",
           "record_heartbeat", "set_user_attr", "shared_bracket_hyperband", "storage_of",
           "study_id", "trial_id"]
