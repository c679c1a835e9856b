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
final seeds, and none of its typical studies may still be running. A study is copied under
this run's stage name with a pending mark that is cleared last, so a copy cut short by a
kill is discarded and redone on the next run; a study this run already holds is kept only
when it was imported from the same source. Final models are copied with their studies.

The typical arm's wall time is the source's, measured when it ran: its time reduction is
a fair figure only if both runs saw the same machine and load (the report says where the
typical arm came from).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fxprune.errors import ConfigError
from fxprune.io import atomic_path
from hpo.collect import repeat_prefix
from hpo.config import CONFIG_FILE, HpoConfig, load_run

# Options the typical arm depends on beyond the study fingerprint (which holds model, data
# digest, image size, epochs, seed, split sizes and the search space).
SHARED_OPTIONS = ("model", "data", "sampler", "pruner", "trials", "seeds", "seed", "epochs",
                  "image_size", "train_size", "eval_size")
IMPORTED = "imported_from"  # study user attr: {"run": folder, "study": source name}
PENDING = "import_pending"  # study user attr while a copy is under way


@dataclass(frozen=True)
class Copy:
    """One study to import: ``name`` in the source storage becomes ``to`` here."""

    name: str
    to: str
    attrs: dict[str, Any]  # user attrs set on the copy over the source's (a final's source)
    redo: bool = False  # a copy cut short is there: delete it first


def typical_studies(config: HpoConfig, repeat: int, names: list[str],
                    kendall_k: int) -> dict[str, str]:
    """Repeat ``repeat``'s typical arm among ``names`` (the studies of a run with
    ``config``), as ``{stage-free name: stored name}``: the search ("typical"), its final
    runs ("final-typical-<digest>") and, when ``kendall_k`` matches, the base network's
    rank runs ("rank-base")."""
    stage = repeat_prefix(config, repeat)
    found = {}
    for stored in names:
        bare = stored.removeprefix(config.study(""))
        if bare == f"{stage}typical":
            found["typical"] = stored
        elif bare.startswith(f"final-{stage}typical-"):
            found["final-" + bare.removeprefix(f"final-{stage}")] = stored
        elif bare == f"{stage}rank-base" and kendall_k == config.kendall_k:
            found["rank-base"] = stored
    return found


def _target_name(config: HpoConfig, repeat: int, bare: str) -> str:
    stage = repeat_prefix(config, repeat)
    if bare.startswith("final-"):
        return config.study(f"final-{stage}{bare.removeprefix('final-')}")
    return config.study(f"{stage}{bare}")


def _source(config: HpoConfig) -> tuple[HpoConfig, Any]:
    """The source run's config and storage, or one ConfigError line."""
    from hpo.storage import mask_url, open_storage

    where = Path(config.typical_from or "")
    if where.resolve() == Path(config.out).resolve():
        raise ConfigError(f"--typical-from {where} is this run's own --out")
    try:
        source, command = load_run(where)
    except ConfigError as err:
        if "pass --storage" not in str(err):
            raise ConfigError(f"--typical-from: {err}") from None
        # its database URL is stored masked: only this run's own, identical URL reopens it
        masked = json.loads((where / CONFIG_FILE).read_text(encoding="utf-8"))["config"]["storage"]
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
    return source, open_storage(source)


def plan_import(config: HpoConfig, fingerprint: dict[str, Any]) -> tuple[Any, list[Copy]]:
    """The source storage and what to copy from it, after every check (nothing is stored
    here). ``fingerprint`` is this run's base-network one."""
    import optuna

    from hpo.liveness import running
    from hpo.storage import JOURNAL_FILE, open_storage

    source, storage = _source(config)
    where = config.typical_from
    mark = {"run": str(Path(where or "").resolve())}
    source_names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    target_names: set[str] = set()
    if config.storage is not None or (Path(config.out) / JOURNAL_FILE).is_file():
        target_names = {s.study_name for s in
                        optuna.get_all_study_summaries(open_storage(config))}
    plan: list[Copy] = []
    searches = 0
    for repeat in range(min(config.repeats, source.repeats)):
        found = typical_studies(source, repeat, source_names, config.kendall_k)
        searches += "typical" in found
        for bare, name in sorted(found.items()):
            study = optuna.load_study(study_name=name, storage=storage)
            if study.user_attrs.get("fingerprint") != fingerprint:
                raise ConfigError(f"--typical-from {where}: study {name!r} was run with other "
                                  "options or data than this run's base network")
            if running(study):
                raise ConfigError(f"--typical-from {where}: study {name!r} is still running; "
                                  "let that run finish first")
            to = _target_name(config, repeat, bare)
            attrs = {IMPORTED: {**mark, "study": name}}
            if bare.startswith("final-"):
                attrs["source"] = f"{repeat_prefix(config, repeat)}typical"
            redo = False
            if to in target_names:
                held = optuna.load_study(study_name=to, storage=open_storage(config)).user_attrs
                redo = bool(held.get(PENDING))
                if not redo and held.get(IMPORTED) != attrs[IMPORTED]:
                    raise ConfigError(f"{config.out}: study {to!r} is this run's own, not "
                                      f"imported from {where}; use a new --out")
                if not redo:
                    continue
            plan.append(Copy(name, to, attrs, redo))
    if searches == 0:
        raise ConfigError(f"--typical-from {where}: no typical search there to reuse")
    return storage, plan


def import_studies(config: HpoConfig, storage: Any, plan: list[Copy]) -> int:
    """Copy the planned studies and the final models their trials saved; returns how many
    studies were copied."""
    import optuna

    from hpo._optuna import copy_into
    from hpo.storage import open_storage

    target = open_storage(config)
    where, out = Path(config.typical_from or ""), Path(config.out)
    for item in plan:
        if item.redo:
            optuna.delete_study(study_name=item.to, storage=target)
        study = optuna.load_study(study_name=item.name, storage=storage)
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
        copy.set_user_attr(PENDING, False)
    return len(plan)


__all__ = ["IMPORTED", "PENDING", "SHARED_OPTIONS", "Copy", "import_studies", "plan_import",
           "typical_studies"]
