"""Run HPO studies on the base network or on its pruned proxy, and compare the two.

The method (Lee & Yim, "Hyperparameter Optimization with Neural Network Pruning", §3, §5):
prune the base network at initialisation, REINITIALISE the slim network, run HPO on it,
then train the base network with the best set found. Modes:

* ``typical``: HPO on the base network (the reference);
* ``proxy``: HPO on ``fxprune.prune(base, ratio=0.85, min_ratio=0.15, scorer="synflow")``,
  every trial starting from the model's own initialisation, drawn anew (``hpo.network``);
* ``final``: train the base network with the best set of a finished run over ``seeds``.

``confirm`` (``--confirm K``, off by default) adds the paper's §5.3 "step-by-step" idea in
its cheapest form: the K best sets of the proxy search each train the base network once,
on the validation split, and the best of them wins. It corrects what the proxy ranks
differently from the base network (a tiny proxy tolerates learning rates the base does not)
at the price of K base-network runs, counted in the proxy arm's time. A compare with
``confirm`` reports both winners: the proxy's own (the paper's method) and the confirmed one.

``ProxyHpo`` is the one object that coordinates a run, in the spirit of Optuna's ``Study``:
it validates everything (options, model, scorer, data) before anything is stored, prepares
each stage's study and hands the heavy work to private modules: ``hpo.storage`` (journal /
RDB, claim lock), ``hpo.liveness`` (owners, heartbeats, reclaiming), ``hpo.worker``
(training trials, local workers, signals), ``hpo.collect`` (the report). Optuna's private
attributes are touched only in ``hpo._optuna``.

The compare (what ``compare`` measures, exactly)
    Three splits: the searches score trials on VALIDATION; the winners' final runs report
    TEST accuracy, which no search sees. ``repeats`` independent replicates each run both
    arms with the same trial budget and epochs but their own sampler seeds (distinct per
    repeat and per arm, so the arms do not share random start-up points); the order of the
    arms alternates between repeats and every process warms its network up before a
    trial's clock starts. Final runs use seeds ``seed + 1_000_000 + i``, disjoint from every
    search trial's seed. Per arm the search time is the elapsed span (kept across resume,
    counted once over parallel workers) next to the summed compute. The report gives each
    repeat's winners, test accuracies and times, and the mean with a 95% Student-t
    interval of the accuracy gap, the time reduction and Kendall's tau over ``kendall_k``
    shared random configurations trained on both networks (scored on validation).

Storage, resume and several machines
    Every stage is an Optuna study: in the journal file of the run folder, or in
    ``--storage URL``. Planned stages (finals, the shared configurations) enqueue their
    trials up front, so they resume like searches. Re-running the same command resumes:
    abandoned trials are reclaimed, failed ones retried once (``hpo.liveness``). Several
    machines running the same command on one database share the budget exactly; final
    training starts only when no search trial is running anywhere, and every machine
    trains the winner read from the storage at that moment. A study made with other
    options (model, data content, epochs, space, ...) is refused, not mixed.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fxprune.errors import ConfigError, FxPruneError
from hpo import worker
from hpo.collect import best_trial, collect_report, repeat_prefix, top_trials
from hpo.config import (
    BRACKET_KEY,
    CONFIG_FILE,
    CONFIRM_SEED_OFFSET,
    MODES,
    RANK_SEED_OFFSET,
    HpoConfig,
    Job,
    ProgressCallback,
    Snapshot,
    arm_seed,
    digest,
    fingerprint_changes,
    load_run,
    saved_command,
    saved_option,
)
from hpo.liveness import recover_stale, retry_failures, work_left
from hpo.network import NetworkFactory, load_data, network_factory, proxy_step_time
from hpo.registry import PRUNERS, SAMPLERS, hyperband_settings, startup_trials
from hpo.report import BEST_FILE, HpoReport, atomic_write, atomic_write_json
from hpo.space import HyperParams
from hpo.storage import (
    JOURNAL_FILE,
    claim_lock,
    create_or_load_study,
    is_storage_failure,
    mask_url,
    open_storage,
    repair_journal,
    storage_error,
)

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger("hpo")

# Below this speed-up of the proxy's training step over the base network's, on the device
# that trains, a proxy search saves at most a third of the search's training time (before
# pruning and confirmation are paid): the run warns. Measured on an H200: a 28 px ResNet-20
# proxy with 1/28 of the MACs stepped only 1.08x faster at batch 32 and 1.58x at 1024.
SLOW_PROXY_SPEEDUP = 1.5


class ProxyHpo:
    """Coordinates one run folder: ``run()``, ``compare()`` or ``report()``."""

    def __init__(self, config: HpoConfig, progress: ProgressCallback | None = None) -> None:
        self.config = config
        self.progress = progress
        self.out = Path(config.out)
        worker.quiet_optuna()

    # -- before anything is stored ---------------------------------------------------------
    def validate(self, roles: tuple[str, ...]) -> None:
        """Scorer, data, model and (for the proxy) pruning, checked before the run folder
        or the storage is touched: a typo cannot poison a run."""
        from fxprune.scoring import get_scorer

        if "proxy" in roles:
            try:
                get_scorer(self.config.scorer)
            except ConfigError as err:
                raise ConfigError(f"--scorer: {err}") from None
        data = load_data(self.config)
        for role in roles:
            network_factory(self.config, data, role)

    def check_out(self) -> None:
        """Before anything opens the run folder: it is new, or an HPO run's (its
        config.json), or holds neither a config.json nor a journal.log (a Slurm log, a
        best.json for ``--mode final``); a user's config.json or journal.log is never
        overwritten or "repaired". And it can be written."""
        from fxprune.io import check_writable

        out = self.out
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} exists and is not a folder")
        found = [name for name in (CONFIG_FILE, JOURNAL_FILE) if (out / name).exists()]
        if found and saved_command(out) is None:
            raise ConfigError(f"--out {out} holds a {found[0]} that is not an HPO run's (no "
                              f"readable {CONFIG_FILE} of fxprune hpo); it is never written "
                              "into: choose another folder")
        check_writable(out, "--out")

    def _start(self, command: str) -> None:
        out = self.out
        out.mkdir(parents=True, exist_ok=True)
        saved = self.config.to_dict()
        if self.config.storage is not None:
            saved["storage"] = mask_url(self.config.storage)
        atomic_write_json(out / CONFIG_FILE, {"command": command, "config": saved})
        if self.config.storage is None:
            repair_journal(out / JOURNAL_FILE)

    # -- stages ----------------------------------------------------------------------------
    def search_job(self, mode: str, repeat: int | None = None) -> Job:
        """A search; ``repeat`` given (a compare), the arm gets its own sampler seed, else
        a single run samples from ``--seed`` itself."""
        stage = repeat_prefix(self.config, repeat or 0)
        seed = self.config.seed if repeat is None else arm_seed(self.config, repeat, mode)
        return Job(name=self.config.study(f"{stage}{mode}"), kind="search",
                   role="proxy" if mode == "proxy" else "base", budget=self.config.trials,
                   sampler_seed=seed, bracket_key=f"seed{self.config.seed}-repeat{repeat or 0}")

    def final_job(self, source: str, hyperparams: HyperParams) -> Job:
        planned = tuple({"plan_key": f"seed{s}", "seed": s, "hyperparams": hyperparams.to_dict()}
                        for s in self.config.final_seeds())
        return Job(name=self.config.study(f"final-{source}-{digest(hyperparams.to_dict())}"),
                   role="base", kind="final", budget=len(planned), planned=planned,
                   save_models=True, source=source)

    def run_confirm(self, repeat: int | None = None) -> None:
        """The confirmation stage after a finished proxy search (one line if no proxy trial
        completed: nothing to confirm)."""
        self.winner(self.config.study(f"{repeat_prefix(self.config, repeat or 0)}proxy"))
        self.run_job(self.confirm_job(repeat))

    def confirm_job(self, repeat: int | None = None) -> Job:
        """The best ``--confirm`` sets of the finished proxy search, each trained once on the
        base network and scored on validation: the best of them wins. All share one seed
        (common random numbers: the candidates differ only in their hyperparameters), far
        from every search, final and rank seed."""
        import optuna

        stage = repeat_prefix(self.config, repeat or 0)
        study = optuna.load_study(study_name=self.config.study(f"{stage}proxy"),
                                  storage=open_storage(self.config))
        seed = self.config.seed + CONFIRM_SEED_OFFSET + (repeat or 0)
        planned = tuple({"plan_key": f"trial{trial.number}", "seed": seed,
                         "hyperparams": hyperparams.to_dict(), "proxy_trial": trial.number,
                         "proxy_value": trial.value}
                        for trial, hyperparams in top_trials(study, self.config.confirm))
        return Job(name=self.config.study(f"{stage}confirm"), role="base", kind="confirm",
                   budget=len(planned), planned=planned)

    def rank_jobs(self, repeat: int = 0) -> list[Job]:
        configs = rank_configurations(self.config, repeat)
        planned = tuple({"plan_key": f"config{k}", "seed": self.config.seed + RANK_SEED_OFFSET
                         + 1000 * repeat + k, "hyperparams": hp.to_dict()}
                        for k, hp in enumerate(configs))
        stage = repeat_prefix(self.config, repeat)
        return [Job(name=self.config.study(f"{stage}rank-{role}"), role=role, kind="rank",
                    budget=len(planned), planned=planned) for role in ("base", "proxy")]

    def prepare(self, job: Job) -> Any:
        """Create the study, or check that the stored one was made with the same options;
        enqueue missing planned trials; reclaim abandoned trials, retry failed ones."""
        storage = open_storage(self.config)
        fingerprint = self.config.fingerprint(job.role, load_data(self.config).fingerprint(),
                                              search=job.kind == "search")
        with claim_lock(self.config):
            study = create_or_load_study(job.name, storage)
            stored = study.user_attrs.get("fingerprint")
            if stored is None:
                study.set_user_attr("fingerprint", fingerprint)
                study.set_user_attr("role", job.role)
                study.set_user_attr("kind", job.kind)
                if job.source is not None:
                    study.set_user_attr("source", job.source)
                if job.bracket_key is not None:  # kept: a resume draws the same brackets
                    study.set_user_attr(BRACKET_KEY, job.bracket_key)
            elif changed := fingerprint_changes(stored, fingerprint):
                first = changed[0]
                raise ConfigError(
                    f"{self.config.out}: study {job.name!r} was run with {first}="
                    f"{stored.get(first)!r}, this run asks {fingerprint.get(first)!r}; use the "
                    "same options to resume, or another --out / --study-name")
            study.set_user_attr("budget", job.budget)
            planned_keys = {t.user_attrs.get("plan_key") for t in study.get_trials(deepcopy=False)}
            for attrs in job.planned:
                if attrs["plan_key"] not in planned_keys:
                    study.enqueue_trial({}, user_attrs=attrs)
            recover_stale(study)
            retry_failures(study)
        return study

    def run_job(self, job: Job) -> None:
        """Run ``job`` to the end of its budget, then wait for other machines' trials."""
        study = self.prepare(job)
        if job.name == self.config.study(f"{repeat_prefix(self.config, 0)}proxy"):
            self.check_step_time(study)
        with claim_lock(self.config):
            has_work = work_left(study, job)
        if has_work:
            worker.run_job(self.config, job, self.progress)
        worker.wait_for_others(study, job, self.config, self.progress)

    def winner(self, name: str) -> tuple[dict[str, Any], HyperParams]:
        """The best COMPLETE trial of a finished search, read from the storage now."""
        import optuna

        study = optuna.load_study(study_name=name, storage=open_storage(self.config))
        found = best_trial(study)
        if found is None:
            counts: dict[str, int] = {}
            for trial in study.get_trials(deepcopy=False):
                counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
            raise FxPruneError(f"study {name!r}: no trial completed ({counts}); see "
                               "report.json for the reasons, then widen --space or add --epochs")
        trial, hyperparams = found
        return {"study": name, "trial": trial.number, "value": trial.value,
                "hyperparams": hyperparams.to_dict()}, hyperparams

    def train_final(self, source: str, hyperparams: HyperParams, target: str) -> None:
        job = self.final_job(source, hyperparams)
        self.run_job(job)
        self._copy_best_model(job, target)

    def _copy_best_model(self, final_job: Job, target: str) -> None:
        import optuna

        study = optuna.load_study(study_name=final_job.name, storage=open_storage(self.config))
        done = [t for t in study.get_trials(deepcopy=False) if t.value is not None
                and "model_path" in t.user_attrs]
        # Another machine's final run saved its model in ITS run folder: copy the best one
        # this machine holds, and say where the others are.
        done.sort(key=lambda t: (-t.value, t.number))
        local = [t for t in done if (self.out / t.user_attrs["model_path"]).is_file()]
        if local:
            source = self.out / local[0].user_attrs["model_path"]
            atomic_write(self.out / target, lambda tmp: shutil.copyfile(source, tmp))
        if done and (not local or local[0] is not done[0]):
            owner = done[0].user_attrs.get("owner", {}).get("host", "another machine")
            logger.warning("%s: the best final model (seed %s) was trained on %s and is in "
                           "its run folder", target, done[0].user_attrs.get("seed"), owner)

    # -- the commands ----------------------------------------------------------------------
    def run(self) -> HpoReport:
        """``typical``/``proxy``: search, write best.json, train the base network with the
        best set over ``seeds`` seeds (base_model.pt); ``final``: only that last step."""
        config = self.config
        if config.typical_from:
            raise ConfigError("--typical-from imports a compare's typical arm: use it with "
                              "compare")
        self.check_out()
        if config.mode == "final":  # checked before the folder is touched
            source, hyperparams = read_best(self.out)
            self.validate(("base",))
            self._start("run")
        else:
            self.validate(("proxy",) if config.mode == "proxy" else ("base",))
            self._start("run")
            self.run_job(self.search_job(config.mode))
            confirms = config.mode == "proxy" and config.confirm > 0
            try:
                if confirms:
                    self.run_confirm()
                source = "confirm" if confirms else config.mode
                best, hyperparams = self.winner(config.study(source))
            except FxPruneError:
                self.report("run")
                raise
            atomic_write_json(self.out / BEST_FILE, {"mode": config.mode, **best})
        if config.seeds > 0:
            self.train_final(source, hyperparams, "base_model.pt")
        return self.report("run")

    def compare(self) -> HpoReport:
        """Typical and proxy HPO, ``repeats`` times (see the module docstring)."""
        config = self.config
        if config.seeds < 1:
            raise ConfigError("compare trains each winner on the base network: --seeds must "
                              "be >= 1")
        self.check_out()
        self.validate(("base", "proxy"))
        if not config.typical_from:  # resumed without it: the import stays (and is reported)
            config = self.config = config.replace(typical_from=saved_option(
                self.out, "typical_from"))
        if config.typical_from:
            self.import_typical(check_only=True)
        self._start("compare")
        if config.typical_from:
            self.import_typical()
        winners: dict[str, Any] = {}
        for repeat in range(config.repeats):
            arms = ("typical", "proxy") if repeat % 2 == 0 else ("proxy", "typical")
            stage = repeat_prefix(config, repeat)
            chosen = {}
            try:
                for mode in arms:
                    self.run_job(self.search_job(mode, repeat))
                    if mode == "proxy" and config.confirm:  # part of the proxy arm's time
                        self.run_confirm(repeat)
                for mode in ("typical", "proxy") + (("confirm",) if config.confirm else ()):
                    best, chosen[mode] = self.winner(config.study(f"{stage}{mode}"))
                    winners[f"{stage}{mode}"] = {"mode": mode, "repeat": repeat, **best}
            except FxPruneError:
                self.report("compare")
                raise
            atomic_write_json(self.out / BEST_FILE, winners)
            for mode in ("typical", "proxy"):
                self.train_final(f"{stage}{mode}", chosen[mode], f"base_model_{stage}{mode}.pt")
            if config.confirm and chosen["confirm"] != chosen["proxy"]:
                # The same set as the proxy's own winner shares its final runs (hpo.collect).
                self.train_final(f"{stage}confirm", chosen["confirm"],
                                 f"base_model_{stage}confirm.pt")
            if config.kendall_k:
                for job in self.rank_jobs(repeat):
                    self.run_job(job)
        return self.report("compare")

    def import_typical(self, check_only: bool = False) -> None:
        """``--typical-from``: check (before anything is stored), then copy the source's
        typical arm into this run under the claim lock (``hpo.reuse``)."""
        from hpo.reuse import import_studies, plan_import

        fingerprint = self.config.fingerprint("base", load_data(self.config).fingerprint())
        if check_only:  # a database is not even opened (created) before the run starts
            plan_import(self.config, fingerprint, target=self.config.storage is None)
            return
        with claim_lock(self.config):
            storage, plan = plan_import(self.config, fingerprint)
            copied = import_studies(self.config, storage, plan) if plan else 0
        if copied:
            logger.info("imported %d studies of the typical arm from %s", copied,
                        self.config.typical_from)

    def check_step_time(self, study: optuna.Study) -> None:
        """Before the first proxy search trains (no arm's clock runs yet), once per run: the
        proxy's training step timed against the base network's on the training device
        (``hpo.network.proxy_step_time``), stored with that search (the report reads it; a
        resumed run reuses it), and one warning when the proxy is so little faster here that
        a proxy search cannot save much time."""
        step = study.user_attrs.get("step_time")
        if step is None:
            step = proxy_step_time(self.config, load_data(self.config))
            study.set_user_attr("step_time", step)
        if step["speedup"] < SLOW_PROXY_SPEEDUP:
            dense = step["dense"]
            cause = ("; small networks on a GPU are bound by per-kernel overheads, not "
                     "arithmetic" if str(dense["device"]).startswith("cuda") else "")
            logger.warning(
                "the proxy's training step is only %.2fx faster than the base network's "
                "(%s, batch %s): a proxy search will save little time on this device%s "
                "(README, HPO)", step["speedup"], dense["device"], dense["batch"], cause)

    def report(self, kind: str) -> HpoReport:
        from hpo.plots import write_plots
        from hpo.report import write_report

        result = collect_report(self.config, kind)
        write_report(result, self.out)
        write_plots(result, self.out)
        return result


def _storage_failures_as_one_line(config: HpoConfig, action: Any) -> Any:
    try:
        return action()
    except Exception as err:
        if is_storage_failure(err):
            raise storage_error(config, err) from None
        raise


def run(config: HpoConfig, progress: ProgressCallback | None = None) -> HpoReport:
    """``ProxyHpo(config, progress).run()``; a storage failure is one ``StorageError``."""
    return _storage_failures_as_one_line(config, ProxyHpo(config, progress).run)


def compare(config: HpoConfig, progress: ProgressCallback | None = None) -> HpoReport:
    """``ProxyHpo(config, progress).compare()``; a storage failure is one ``StorageError``."""
    return _storage_failures_as_one_line(config, ProxyHpo(config, progress).compare)


def write_run_report(config: HpoConfig, kind: str) -> HpoReport:
    return _storage_failures_as_one_line(config, lambda: ProxyHpo(config).report(kind))


def rank_configurations(config: HpoConfig, repeat: int = 0) -> list[HyperParams]:
    """The K shared configurations of a repeat: drawn by a seeded RandomSampler."""
    import optuna

    worker.quiet_optuna()
    sampler = optuna.samplers.RandomSampler(seed=config.seed + 7919 + 104729 * repeat)
    study = optuna.create_study(sampler=sampler)
    return [config.space.suggest(study.ask()) for _ in range(config.kendall_k)]


def read_best(out: Path) -> tuple[str, HyperParams]:
    """The winner ``--mode final`` trains: best.json of a typical or proxy run folder."""
    path = out / BEST_FILE
    if saved_command(out) == "compare":
        raise ConfigError(f"--mode final trains the winner of a typical or proxy run; {out} "
                          "holds a compare, which trains its winners itself: run the same "
                          "compare command again to finish it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--mode final needs {path}: run --mode typical or proxy first") from None
    except ValueError as err:
        raise ConfigError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("hyperparams"), dict):
        raise ConfigError(f"{path}: expected {{'mode': ..., 'hyperparams': {{...}}}}")
    return str(data.get("mode", "proxy")), HyperParams.from_dict(data["hyperparams"])


__all__ = [
    "MODES",
    "PRUNERS",
    "SAMPLERS",
    "HpoConfig",
    "Job",
    "NetworkFactory",
    "ProxyHpo",
    "Snapshot",
    "collect_report",
    "compare",
    "hyperband_settings",
    "load_data",
    "load_run",
    "mask_url",
    "open_storage",
    "rank_configurations",
    "repair_journal",
    "run",
    "startup_trials",
    "write_run_report",
]
