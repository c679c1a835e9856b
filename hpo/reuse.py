"""``compare --typical-from RUN``: measure another proxy variant against the SAME typical arm.

A compare's typical arm (each repeat's typical search, the final runs of its winner and,
with the same ``--kendall-k``, the base network's rank runs) does not depend on any proxy
option. A second compare that changes only proxy options (``--proxy-lr``, ``--ratio``,
``--scorer``, ``--confirm``, ...) can therefore import it from a finished compare folder
instead of searching again: it costs the proxy arm alone, and the two variants' gaps are
paired (same typical winners, same final seeds), so their difference has a far narrower
interval than two independent compares.

The import is checked before anything is stored: the source must be a compare with the
same model, data (by content), epochs, search space, seed, sampler, pruner, trials and
final seeds, and its typical studies must be finished (nothing running or queued, the
search's budget used, no failed trial that its next run would retry), so that nothing of
the typical arm trains here. A study is copied under this run's stage name with a pending
mark that is cleared last, so a copy cut short by a kill is redone by the next run; a
study this run already holds is kept only when it is a copy of the same source study
(compared by content, not by path: machines mount the source differently). Final models
are copied with their studies, by every machine into its own run folder. Repeats beyond
the source's are searched here as usual. Once every repeat's typical search is imported,
a resume no longer needs the source folder.

The typical arm's wall time is the source's, measured when it ran: its time reduction is
a fair figure only if both runs saw the same machine and load (the report says where the
typical arm came from).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fxprune.errors import ConfigError
from fxprune.io import atomic_path
from hpo.collect import repeat_prefix
from hpo.config import (
    BASE_FINGERPRINT_KEYS,
    SEARCH_FINGERPRINT_KEYS,
    HpoConfig,
    digest,
    load_run,
    saved_option,
)

logger = logging.getLogger("hpo")

# Options the typical arm depends on: the study fingerprint's (checked here by name, for a
# message that names the option; the data's content and the space are checked apart) and
# the search's own.
SHARED_OPTIONS = (*BASE_FINGERPRINT_KEYS, "sampler", "pruner", "trials", "seeds")
IMPORTED = "imported_from"  # study user attr: the source study's identity (``identity``)
PENDING = "import_pending"  # study user attr while a copy is under way


@dataclass(frozen=True)
class Copy:
    """One study to import: ``name`` in the source storage becomes ``to`` here; ``state``
    is "new", "redo" (a copy cut short is there) or "done" (only its models are copied)."""

    name: str
    to: str
    attrs: dict[str, Any]  # user attrs set on the copy over the source's
    state: str = "new"


def typical_studies(config: HpoConfig, repeat: int, names: list[str],
                    kendall_k: int) -> dict[str, str]:
    """Repeat ``repeat``'s typical arm among ``names`` (the studies of a storage holding a
    run with ``config``, perhaps among other runs'), as ``{stage-free name: stored name}``:
    the search ("typical"), its final runs ("final-typical-<digest>") and, when
    ``kendall_k`` matches, the base network's rank runs ("rank-base")."""
    stage, prefix = repeat_prefix(config, repeat), config.study("")
    found = {}
    for stored in names:
        # another --study-name's studies (or, without one, any prefixed study) are not its
        if not stored.startswith(prefix) or (not prefix and ":" in stored):
            continue
        bare = stored[len(prefix):]
        if bare == f"{stage}typical":
            found["typical"] = stored
        elif bare.startswith(f"final-{stage}typical-"):
            found["final-" + bare.removeprefix(f"final-{stage}")] = stored
        elif bare == f"{stage}rank-base" and kendall_k == config.kendall_k:
            found["rank-base"] = stored
    return found


def identity(study: Any) -> dict[str, str]:
    """What a copy must match, wherever the source folder lives: its name and trials."""
    trials = [(t.number, t.state.name, t.value, t.params, t.user_attrs.get("seed"))
              for t in study.get_trials(deepcopy=False)]
    return {"study": study.study_name, "trials": digest(trials)}


def _target_name(config: HpoConfig, repeat: int, bare: str) -> str:
    stage = repeat_prefix(config, repeat)
    if bare.startswith("final-"):
        return config.study(f"final-{stage}{bare.removeprefix('final-')}")
    return config.study(f"{stage}{bare}")


def _source(config: HpoConfig) -> tuple[HpoConfig, Any]:
    """The source run's config and storage, or one ConfigError line."""
    from hpo.storage import JOURNAL_FILE, mask_url, open_storage

    where = Path(config.typical_from or "")
    if where.resolve() == Path(config.out).resolve():
        raise ConfigError(f"--typical-from {where} is this run's own --out")
    try:
        source, command = load_run(where)
    except ConfigError as err:
        if "pass --storage" not in str(err):
            raise ConfigError(f"--typical-from: {err}") from None
        # its database URL is stored masked: only this run's own, identical URL reopens it
        masked = saved_option(where, "storage")
        if config.storage is None or mask_url(config.storage) != masked:
            raise ConfigError(f"--typical-from {where} keeps its studies in {masked}: run this "
                              "compare with that --storage") from None
        source, command = load_run(where, storage=config.storage)
    if command != "compare":
        raise ConfigError(f"--typical-from {where} is a '{command}' folder, not a compare")
    for key in SHARED_OPTIONS:
        if getattr(source, key) != getattr(config, key):
            raise ConfigError(f"--typical-from {where} was run with {key}="
                              f"{getattr(source, key)!r}, this run asks "
                              f"{getattr(config, key)!r}: its typical arm does not apply")
    if source.space.to_dict() != config.space.to_dict():
        raise ConfigError(f"--typical-from {where} searched another --space")
    if source.storage is None and not (where / JOURNAL_FILE).is_file():
        raise ConfigError(f"--typical-from {where} has no {JOURNAL_FILE}: nothing ran there")
    return source, open_storage(source)


def _unfinished(study: Any, search: bool) -> str | None:
    """Why ``study`` would train here if imported now, or None."""
    from optuna.trial import TrialState

    from hpo.liveness import counts_toward_budget, retried_numbers, retryable_failures

    trials = study.get_trials(deepcopy=False)
    states = {t.state for t in trials}
    if TrialState.RUNNING in states:
        return "is still running"
    if TrialState.WAITING in states:
        return "has queued trials"
    if failed := retryable_failures(study):
        return f"has {len(failed)} failed trial(s) that its next run retries"
    budget, retried = study.user_attrs.get("budget"), retried_numbers(study)
    used = sum(counts_toward_budget(t, retried) for t in trials)
    if search and (budget is None or used < budget):
        return f"has run {used} of its {budget} trials"
    return None


def _imported_here(config: HpoConfig, names: set[str], storage: Any) -> bool:
    """Every repeat's typical search is here, imported whole."""
    import optuna

    for repeat in range(config.repeats):
        name = config.study(f"{repeat_prefix(config, repeat)}typical")
        if name not in names:
            return False
        attrs = optuna.load_study(study_name=name, storage=storage).user_attrs
        if IMPORTED not in attrs or attrs.get(PENDING):
            return False
    return True


def plan_import(config: HpoConfig, fingerprint: dict[str, Any] | None = None, *,
                target: bool = True) -> tuple[Any, list[Copy]]:
    """The source storage and what to copy from it, after every check; nothing is stored.
    ``fingerprint`` (this run's base-network one) is compared with the source studies'
    when given; ``target=False`` leaves out the checks of this run's own storage."""
    import optuna

    from hpo.storage import JOURNAL_FILE, open_storage

    held: Any = None
    names: set[str] = set()
    exists = config.storage is not None or (Path(config.out) / JOURNAL_FILE).is_file()
    if target and exists:
        held = open_storage(config)
        names = {s.study_name for s in optuna.get_all_study_summaries(held)}
    try:
        source, storage = _source(config)
    except ConfigError as err:
        if exists and held is None:  # the source is gone or moved: is it needed still?
            held = open_storage(config)
            names = {s.study_name for s in optuna.get_all_study_summaries(held)}
        if held is not None and _imported_here(config, names, held):
            logger.warning("%s; its typical arm is already imported here: going on", err)
            return None, []
        raise
    where = config.typical_from
    fix = "another --study-name" if config.storage else "a new --out"
    source_names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    plan: list[Copy] = []
    for repeat in range(min(config.repeats, source.repeats)):
        found = typical_studies(source, repeat, source_names, config.kendall_k)
        if "typical" not in found:
            raise ConfigError(f"--typical-from {where}: repeat {repeat} has no typical search")
        for bare, name in sorted(found.items()):
            study = optuna.load_study(study_name=name, storage=storage)
            stored = {k: v for k, v in (study.user_attrs.get("fingerprint") or {}).items()
                      if k not in SEARCH_FINGERPRINT_KEYS}  # checked by name (SHARED_OPTIONS)
            if fingerprint is not None and stored != fingerprint:
                raise ConfigError(f"--typical-from {where}: study {name!r} was run with other "
                                  "options or data than this run's base network")
            if why := _unfinished(study, search=bare == "typical"):
                raise ConfigError(f"--typical-from {where}: study {name!r} {why}; finish that "
                                  "run first (re-run its command)")
            to = _target_name(config, repeat, bare)
            attrs = {IMPORTED: identity(study)}
            if bare.startswith("final-"):  # the stage whose winner it trains, here
                attrs["source"] = f"{repeat_prefix(config, repeat)}typical"
            state = "new"
            if to in names:
                copy = optuna.load_study(study_name=to, storage=held)
                mark = copy.user_attrs.get(IMPORTED)
                empty = not copy.get_trials(deepcopy=False) and "fingerprint" not in \
                    copy.user_attrs
                if copy.user_attrs.get(PENDING) or (mark is None and empty):
                    state = "redo"  # a copy cut short, perhaps before it was even marked
                elif mark is None:
                    raise ConfigError(f"{config.out}: study {to!r} is this run's own, not "
                                      f"imported; use {fix}")
                elif mark != attrs[IMPORTED]:
                    raise ConfigError(f"{config.out}: study {to!r} was imported from another "
                                      f"run's {mark.get('study')!r}; use {fix}")
                else:
                    state = "done"
            plan.append(Copy(name, to, attrs, state))
    return storage, plan


def import_studies(config: HpoConfig, storage: Any, plan: list[Copy]) -> int:
    """Copy the planned studies, and the final models their trials saved into this run
    folder (also for studies another machine copied); returns how many studies were
    copied."""
    import optuna

    from hpo._optuna import copy_into
    from hpo.storage import open_storage

    target = open_storage(config)
    where, out = Path(config.typical_from or ""), Path(config.out)
    for item in plan:
        study = optuna.load_study(study_name=item.name, storage=storage)
        if item.state != "done":
            if item.state == "redo":
                optuna.delete_study(study_name=item.to, storage=target)
            copy = optuna.create_study(study_name=item.to, storage=target,
                                       directions=study.directions)
            copy.set_user_attr(PENDING, True)
            for key, value in {**study.user_attrs, **item.attrs}.items():
                if key != PENDING:
                    copy.set_user_attr(key, value)
            copy_into(study, copy)
        for trial in study.get_trials(deepcopy=False):
            relative = trial.user_attrs.get("model_path")
            if relative and (where / relative).is_file() and not (out / relative).exists():
                with atomic_path(out / relative) as temporary:
                    shutil.copyfile(where / relative, temporary)
        if item.state != "done":
            copy.set_user_attr(PENDING, False)
    return sum(item.state != "done" for item in plan)


__all__ = ["IMPORTED", "PENDING", "SHARED_OPTIONS", "Copy", "identity", "import_studies",
           "plan_import", "typical_studies"]
