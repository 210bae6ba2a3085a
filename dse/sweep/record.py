"""Optuna as the sampler and the record: opening the study, asking for points, recording finished trials.

Optuna never schedules here: the queue in ``dse_trials`` does. Sample mode asks the study for the next point
and tells it the result by trial number (any worker may, e.g. after a resume). A grid trial enters Optuna when it
is queued, as a WAITING trial with its parameters and attributes; its claim makes it RUNNING (Optuna's clock
starts), each epoch is its intermediate value, and its end is told like a sampled one's; an interrupted one is
WAITING again. So optuna-dashboard shows the queue, the running trials and a real timeline, FAIL always means a
real failure, and Optuna's trial number is the trial's one name (``dse.store.trial_name``). The compare-and-set
on the row's ``recorded_at`` makes each finished trial reach Optuna exactly once, whichever worker gets there.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
from omegaconf import DictConfig

from dse import store as st
from dse.errors import ConfigError, DSEError
from dse.space import TrialConfig
from dse.sweep.plan import OBJECTIVES, StudyPlan, grid_space, trial_params
from dse.sweep.queue import Queue

log = logging.getLogger("dse.sweep")
T = TypeVar("T")
# metric names are "experimental" in Optuna's terms, and what optuna-dashboard labels its axes with
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

FINGERPRINT_ATTR = "dse_space_fingerprint"
SPACE_ATTR = "dse_grid_space"  # {param: distribution JSON}: lets any worker record a grid trial
STATES = {st.COMPLETE: optuna.trial.TrialState.COMPLETE, st.PRUNED: optuna.trial.TrialState.PRUNED,
          st.REJECTED: optuna.trial.TrialState.PRUNED, st.FAILED: optuna.trial.TrialState.FAIL}
GRID_PRUNERS = ("none", "median")  # pruners that only read the curves (grid trials are not asked for)
WAITING, RUNNING = optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING


class SweepError(DSEError):
    """The study cannot be opened as configured (other search space, other objectives)."""


def make_sampler(cfg: DictConfig) -> optuna.samplers.BaseSampler:
    s = cfg.sampler
    if s.name in ("grid", "random"):
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.name == "tpe":
        return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials, multivariate=True,
                                          constant_liar=True)
    if s.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed, population_size=s.population_size)
    raise ConfigError(f"sampler.name={s.name!r} is unknown; allowed: grid, random, tpe, nsga2")


def make_pruner(cfg: DictConfig) -> optuna.pruners.BasePruner:
    p = cfg.pruner
    if cfg.search.mode == "grid" and p.name not in GRID_PRUNERS:
        raise ConfigError(f"pruner={p.name} needs search.mode=sample; allowed with a grid: {', '.join(GRID_PRUNERS)}")
    if p.name == "none":
        return optuna.pruners.NopPruner()
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource,
                                                      reduction_factor=p.reduction_factor)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, max_resource=int(cfg.trainer.epochs),
                                              reduction_factor=p.reduction_factor)
    raise ConfigError(f"pruner.name={p.name!r} is unknown; allowed: none, median, successive_halving, hyperband")


def open_study(cfg: DictConfig, plan: StudyPlan, storage: optuna.storages.BaseStorage, url: str) -> optuna.Study:
    """The plan's study in `storage`: created and described when new, else loaded after checking that it was
    made for the same search space and objective directions."""
    names = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    existing = names.get(plan.name)
    if existing is not None:
        fp = existing.user_attrs.get(FINGERPRINT_ATTR)
        if fp is not None and fp != plan.fingerprint:
            raise SweepError(f"study {plan.name!r} in {st.redact(url)} was created with a different search space "
                             f"(fingerprint {fp} != {plan.fingerprint}); choose another study.name=... (nothing "
                             "changed)")
        have = [d.name.lower() for d in existing.directions]
        if have != plan.directions:
            raise SweepError(f"study {plan.name!r} has objective directions {have}, this config asks "
                             f"{plan.directions}; choose another study.name=...")
    d = plan.directions
    study = optuna.create_study(
        study_name=plan.name, storage=storage, load_if_exists=True, sampler=make_sampler(cfg),
        pruner=make_pruner(cfg), **({"directions": d} if len(d) > 1 else {"direction": d[0]}))
    if existing is None or FINGERPRINT_ATTR not in existing.user_attrs:  # new, or its creation was cut short
        describe(study, cfg, plan)
    return study


def describe(study: optuna.Study, cfg: DictConfig, plan: StudyPlan) -> None:
    """Study attributes: what the dashboard labels, the constants, the grid's varying parameters (as
    distributions any worker can read back) and (last: it marks the study complete) the fingerprint."""
    with warnings.catch_warnings():  # experimental since Optuna 3.2 and unchanged since: not a user's concern
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([OBJECTIVES[o][2] for o in plan.objectives])
    for k, v in (("experiment", cfg.study.experiment), ("budget", cfg.budget), ("objectives", plan.objectives),
                 ("mode", plan.mode)):
        study.set_user_attr(k, v)
    if plan.mode == "grid":
        dists, constants = grid_space(plan.trials)
        study.set_user_attr(SPACE_ATTR, json.dumps(
            {k: optuna.distributions.distribution_to_json(v) for k, v in dists.items()}))
        for k, v in constants.items():
            study.set_user_attr(f"constant {k}", v)
    study.set_user_attr(FINGERPRINT_ATTR, plan.fingerprint)


class Record:
    """The study in Optuna's tables, for one worker."""

    def __init__(self, cfg: DictConfig, plan: StudyPlan, url: str, queue: Queue) -> None:
        self.cfg, self.plan, self.url, self.queue = cfg, plan, url, queue
        self.objectives = plan.objectives
        self.prune_on = not plan.multi and cfg.pruner.name != "none"

    def retry(self, fn: Callable[[], T], what: str) -> T:
        s = self.cfg.storage
        return st.with_retries(fn, what=what, retries=int(s.retries), backoff=float(s.backoff), url=self.url)

    # -- opening ------------------------------------------------------------------------------------------------
    def open(self) -> None:
        """Create or load the study (serialised with the schema: Optuna's own table creation races)."""
        def go() -> None:
            with st.schema_lock(self.url):
                kwargs = {"connect_args": {"timeout": 60}} if self.url.startswith("sqlite") else \
                    {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
                self.storage = optuna.storages.RDBStorage(self.url, engine_kwargs=kwargs)
                self.study = open_study(self.cfg, self.plan, self.storage, self.url)

        self.retry(go, "opening the Optuna study")
        self.study_id = self.storage.get_study_id_from_name(self.plan.name)
        space = json.loads(self.study.user_attrs.get(SPACE_ATTR, "{}"))
        self.distributions = {k: optuna.distributions.json_to_distribution(v) for k, v in space.items()}

    # -- sample mode ------------------------------------------------------------------------------------------
    def ask(self) -> optuna.Trial:
        return self.retry(self.study.ask, "asking the sampler for a trial")

    def _trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def report(self, row: st.TrialRow, epoch: int, val_acc: float, curve: dict[int, float]) -> bool:
        """Record one epoch's validation accuracy (sample mode: live, as the trial's intermediate value);
        True when the pruner says stop."""
        frozen = self.intermediate(row, epoch, val_acc)
        if not self.prune_on:
            return False
        if frozen is None:  # a grid trial: it joins Optuna when finished; the pruner only reads its curve
            frozen = optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, intermediate_values=curve)
        return bool(self.study.pruner.prune(self.study, frozen))

    def intermediate(self, row: st.TrialRow, epoch: int, val_acc: float) -> optuna.trial.FrozenTrial | None:
        """Sample mode: one epoch's validation accuracy as the asked trial's intermediate value (the trial as it
        is now); None for a grid trial (its curve joins Optuna with its result)."""
        if row.optuna_trial_number is None:
            return None
        tid = self._trial_id(row.optuna_trial_number)
        if self.storage.get_trial(tid).state != optuna.trial.TrialState.RUNNING:
            return None
        self.retry(lambda: self.storage.set_trial_intermediate_value(tid, epoch, val_acc), "reporting")
        return self.storage.get_trial(tid)

    def fill_intermediate(self, row: st.TrialRow, curve: dict[int, float]) -> None:
        """Sample mode, on a resume: the stored epochs Optuna did not get (the store took the epoch, then Optuna's
        write met an outage), in order, so the intermediate values hold the whole curve once."""
        if row.optuna_trial_number is None:
            return
        tid = self._trial_id(row.optuna_trial_number)
        frozen = self.storage.get_trial(tid)
        if frozen.state != optuna.trial.TrialState.RUNNING:
            return
        for epoch in sorted(set(curve) - set(frozen.intermediate_values)):
            self.retry(lambda e=epoch: self.storage.set_trial_intermediate_value(tid, e, curve[e]), "reporting")

    def note(self, row: st.TrialRow, key: str, value: Any) -> optuna.trial.TrialState | None:
        """A user attribute on a trial still unfinished in Optuna (e.g. why it was interrupted); returns the
        trial's state there (None: not in Optuna)."""
        if row.optuna_trial_number is None:
            return None
        tid = self._trial_id(row.optuna_trial_number)
        state = self.storage.get_trial(tid).state
        if not state.is_finished():
            self.retry(lambda: self.storage.set_trial_user_attr(tid, key, value), "noting a trial attribute")
        return state

    # -- grid mode: the queue in Optuna --------------------------------------------------------------------------
    def enter_waiting(self) -> int:
        """Grid mode: every claimable trial of the study is a WAITING trial in Optuna, with its parameters and
        attributes, so the dashboard shows the queue; the number Optuna gives it is its name from then on. A trial
        re-queued after a FAIL enters again as a new Optuna trial (the FAIL stays on record). Serialised with the
        schema lock, so that workers planning at once enter each trial once; how many trials entered."""
        if self.plan.mode != "grid":  # sample mode: study.ask would pop WAITING trials as its next point
            return 0

        def go() -> int:
            with st.schema_lock(self.url):
                return self._enter(self.queue.waiting())

        return self.retry(go, "entering queued trials in Optuna")

    def _enter(self, rows: list[st.TrialRow]) -> int:
        trials = {t.number: t for t in self.storage.get_all_trials(self.study_id, deepcopy=False)}
        # a trial entered by a worker cut off before it noted the number: found by its store id, not entered twice
        open_of = {t.user_attrs.get("store_trial_id"): t.number for t in trials.values() if not t.state.is_finished()}

        def open_in_optuna(row: st.TrialRow) -> bool:  # already WAITING or RUNNING there: nothing to enter
            have = trials.get(row.optuna_trial_number) if row.optuna_trial_number is not None else None
            return have is not None and not have.state.is_finished()

        todo = [r for r in rows if not open_in_optuna(r)]
        if len(todo) > 100:  # about 25 ms each on SQLite (580: 14 s measured): say what the wait is
            log.info("entering %d queued trials in Optuna (optuna-dashboard shows them as WAITING)", len(todo))
        entered = 0
        for row in todo:
            have = trials.get(row.optuna_trial_number) if row.optuna_trial_number is not None else None
            number = open_of.get(row.id)
            if number is None:
                params, dists = self.point(row, have)
                template = optuna.trial.create_trial(state=WAITING, params=params, distributions=dists,
                                                     user_attrs=user_attrs(row))
                number = self.storage.get_trial_number_from_id(
                    self.storage.create_new_trial(self.study_id, template_trial=template))
                entered += 1
            self.queue.note(row.id, optuna_trial_number=number)
        return entered

    def point(self, row: st.TrialRow, earlier: optuna.trial.FrozenTrial | None) -> tuple[dict, dict]:
        """A trial's Optuna parameters and their distributions: an earlier record's, else from its config."""
        if earlier is not None:
            return earlier.params, earlier.distributions
        tcfg = TrialConfig.from_dict(json.loads(row.config_json))
        return trial_params(tcfg, list(self.distributions)), self.distributions

    def start(self, row: st.TrialRow) -> None:
        """A claimed grid trial is RUNNING in Optuna from now: the dashboard's start time and timeline."""
        if row.optuna_trial_number is None:
            return
        tid = self._trial_id(row.optuna_trial_number)
        if self.storage.get_trial(tid).state == WAITING:
            self.retry(lambda: self.storage.set_trial_state_values(tid, RUNNING), "starting a trial in Optuna")

    def wait_again(self, row: st.TrialRow, why: str) -> None:
        """A grid trial put back in the queue (interrupted, its environment at fault) is WAITING again in Optuna,
        with why; a sampled one stays RUNNING (study.ask would hand a WAITING one out as a new point)."""
        state = self.note(row, "waiting_because", why[:500])
        if self.plan.mode == "grid" and state == RUNNING:
            tid = self._trial_id(row.optuna_trial_number)
            self.retry(lambda: self.storage.set_trial_state_values(tid, WAITING), "putting a trial back in Optuna")

    # -- recording a finished trial ----------------------------------------------------------------------------
    def values(self, row: st.TrialRow) -> list[float]:
        return [float(getattr(row, OBJECTIVES[o][1]) or 0.0) for o in self.objectives]

    def record(self, row: st.TrialRow) -> None:
        """Give Optuna this finished trial, once (the CAS on recorded_at picks the one worker that does)."""
        if not self.queue.mark_recorded(row.id):
            return
        try:
            self.retry(lambda: self._record(row), "recording a trial in Optuna")
        except BaseException:
            self.queue.unmark_recorded(row.id)  # a later run records it
            raise

    def _record(self, row: st.TrialRow) -> None:
        state = STATES[row.status]
        values = self.values(row) if state == optuna.trial.TrialState.COMPLETE else None
        attrs = user_attrs(row)
        earlier = None
        if row.optuna_trial_number is not None:
            tid = self._trial_id(row.optuna_trial_number)
            earlier = self.storage.get_trial(tid)
            if earlier.state == WAITING:  # finished while Optuna was out of reach at its start
                self.storage.set_trial_state_values(tid, RUNNING)
                earlier = self.storage.get_trial(tid)
            if earlier.state == RUNNING:  # an asked or entered trial: tell it, with the curve it may lack
                self.fill_intermediate(row, self.queue.curve(row.id))
                for k, v in attrs.items():
                    self.storage.set_trial_user_attr(tid, k, v)
                self.study.tell(row.optuna_trial_number, values, state=state)
                return
        params, dists = self.point(row, earlier)  # rejected at planning, a retried sample, an older store's trial
        frozen = optuna.trial.create_trial(  # validates params against distributions, values against state
            state=state, params=params, distributions=dists, values=values, user_attrs=attrs,
            intermediate_values=self.queue.curve(row.id))
        frozen.datetime_start = local_time(row.started_at or row.finished_at)  # the store's times, not now's
        frozen.datetime_complete = local_time(row.finished_at) or frozen.datetime_start
        # the storage call behind study.add_trial, which also gives back the new trial's id: its number is the one
        # the dashboard shows, so the store keeps it for the tables and the deploy folders
        trial_id = self.storage.create_new_trial(self.study_id, template_trial=frozen)
        number = self.storage.get_trial_number_from_id(trial_id)
        self.queue.note(row.id, optuna_trial_number=number)

    def record_pending(self) -> None:
        """Record the study's finished trials that Optuna has not got yet (rejected ones, an outage between
        finishing and recording)."""
        for row in self.queue.unrecorded():
            self.record(row)


def local_time(utc: dt.datetime | None) -> dt.datetime | None:
    """A store time (naive UTC) as Optuna keeps its own (naive local time: datetime.now())."""
    return None if utc is None else utc.replace(tzinfo=dt.UTC).astimezone().replace(tzinfo=None)


def user_attrs(row: st.TrialRow) -> dict[str, Any]:
    """What the dashboard shows beside a trial's parameters: the facts that follow from its model (its
    architecture, depths and width are one parameter, ``model``, so that importances do not split among them)."""
    attrs: dict[str, Any] = {"identity": row.identity, "store_trial_id": row.id, "model": row.model_name,
                             "arch": row.arch,
                             "stage_depths": row.stage_depths, "width": row.width, "params": row.params,
                             "macs": row.macs, "checkpoint_bytes": row.checkpoint_bytes, "attempts": row.attempts}
    attrs.update({k: getattr(row, k) for k in ("flash_bytes", "ram_bytes_int8", "latency_p50_ms", "latency_p99_ms")
                  if getattr(row, k) is not None})  # the target's facts (dse.target), known before training
    if row.status == st.COMPLETE:
        attrs.update(test_acc=row.test_acc, sec_per_epoch=row.sec_per_epoch, device=row.device)
    elif row.fail_reason:
        attrs["fail_reason"] = row.fail_reason[:500]
    return attrs
