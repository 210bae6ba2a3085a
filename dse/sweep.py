"""`python -m dse.sweep [overrides]`: one worker of an Optuna study (DESIGN.md decisions 1-3, 5, 10).

Hydra composes the config; this module schedules with Optuna and records in the results store. A worker takes
trials until the study's global budget is spent; more workers (on this host or others, same storage URL) share
the work. Grid trials are planned in our store (unique per study and identity) and enqueued by whichever worker
planned them, so no configuration is queued or trained twice. A killed worker's trial is detected by Optuna's
heartbeat and re-queued; the retry resumes from that trial's last epoch checkpoint.

    python -m dse.sweep                                # the quick study of every paper table (SQLite)
    python -m dse.sweep experiment=table3 budget=smoke # one table, a 2-minute smoke budget
    python -m dse.sweep experiment=table3 dry_run=true # list the planned trials and their cheap facts
    DSE_STORAGE_URL=postgresql+psycopg://u@host/db python -m dse.sweep storage=postgres experiment=paper
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import optuna
from omegaconf import DictConfig, OmegaConf
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from dse import store as st
from dse.config import REPO, compose, study_name
from dse.errors import ConfigError, DSEError
from dse.space import (
    TrialConfig,
    check_constraints,
    grid_distributions,
    plan_grid,
    resolve_trial,
    space_fingerprint,
    suggest,
    validate_sample_space,
)

log = logging.getLogger("dse.sweep")
# heartbeats and stale-trial handling are "experimental" in Optuna's terms but are what we rely on
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

FINGERPRINT_ATTR = "dse_space_fingerprint"
OBJECTIVES = {  # name -> (direction, how to read it from a finished trial row)
    "val_acc": ("maximize", "best_val_acc"),
    "checkpoint_bytes": ("minimize", "checkpoint_bytes"),
    "sec_per_epoch": ("minimize", "sec_per_epoch"),
    "macs": ("minimize", "macs"),
    "params": ("minimize", "params"),
}


# seconds a store row may stay queued without an Optuna queue entry before reconcile re-queues it: a worker writes
# the two within milliseconds, so only an enqueue cut short by an outage leaves a row this way for long
QUEUE_WINDOW = 15.0


class SweepError(DSEError):
    """The sweep cannot start (bad space, study mismatch, ...)."""


class _Skip(Exception):  # noqa: N818 - internal control flow: this trial is not ours to run
    pass


# -- storage -----------------------------------------------------------------------------------------------
def storage_url(cfg: DictConfig) -> str:
    """The database URL: the config, else the environment, else the SQLite default; the password is filled
    in from the environment or a file so that it never appears on a command line (or in our logs)."""
    from sqlalchemy.engine import make_url

    url = cfg.storage.url or os.environ.get(cfg.storage.url_env) or "sqlite:///results/dse.db"
    try:
        parsed = make_url(url)
    except Exception:
        raise SweepError(f"storage URL {st.redact(url)} is not a database URL; expected "
                         "sqlite:///path.db or postgresql+psycopg://user@host:port/db") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql", "mysql"):
        raise SweepError(f"storage backend {parsed.get_backend_name()!r} unsupported; use sqlite or postgresql")
    if parsed.password is None and parsed.get_backend_name() != "sqlite":
        password = os.environ.get(cfg.storage.password_env)
        if password is None and cfg.storage.password_file:
            pf = Path(os.path.expanduser(cfg.storage.password_file))
            if not pf.is_file():
                raise SweepError(f"storage.password_file {pf} does not exist")
            password = pf.read_text().strip()
        if password is not None:
            parsed = parsed.set(password=password)
    if parsed.get_backend_name() == "sqlite" and parsed.database and not os.path.isabs(parsed.database):
        # relative SQLite paths are relative to the repository, whatever the working directory
        parsed = parsed.set(database=str(REPO / parsed.database))
    return parsed.render_as_string(hide_password=False)


class _RDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage with one more kind of stale trial.

    Optuna only fails running trials whose heartbeat went stale. But a worker can lose the database after
    ``ask`` committed the trial and before its heartbeat thread wrote the first heartbeat. That trial has no
    heartbeat row and Optuna never fails it, so every worker would wait for it forever. Here a running trial
    with no heartbeat counts as stale once it started more than the grace period ago. A live worker writes
    its first heartbeat at once.
    """

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        from optuna.storages._rdb import models
        from sqlalchemy import exists, select

        stale = super()._get_stale_trial_ids(study_id)
        grace = self.grace_period if self.grace_period is not None else 2 * (self.heartbeat_interval or 0)
        # Optuna's tables store datetime_start as naive UTC
        cutoff = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=grace)
        trials, beats = models.TrialModel.__table__.c, models.TrialHeartbeatModel.__table__.c
        query = select(trials.trial_id).where(
            trials.study_id == study_id, trials.state == optuna.trial.TrialState.RUNNING.name,
            trials.datetime_start < cutoff, ~exists().where(beats.trial_id == trials.trial_id))
        with self.engine.connect() as conn:
            return stale + [i for (i,) in conn.execute(query) if i not in stale]


def optuna_storage(url: str, cfg: DictConfig, on_stale: Any) -> optuna.storages.RDBStorage:
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}

    def make() -> optuna.storages.RDBStorage:
        return _RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=int(cfg.storage.heartbeat_interval),
            grace_period=int(cfg.storage.grace_period), heartbeat_stale_trial_callback=on_stale)

    return retry_optuna(make, "opening the Optuna storage", cfg, url)


T = TypeVar("T")


def db_outage(e: BaseException) -> OperationalError | None:
    """The database outage behind ``e``, if any: Optuna re-raises SQLAlchemy's errors as its own, sometimes
    after a rollback that fails in turn, so the OperationalError can be a few links down the chain."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OperationalError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def retry_optuna(fn: Callable[[], T], what: str, cfg: DictConfig, url: str) -> T:
    """``st.with_retries`` for calls into Optuna, which wraps some connection errors in its own exceptions."""

    def go() -> T:
        try:
            return fn()
        except OperationalError:
            raise
        except Exception as e:
            outage = db_outage(e)
            if outage is not None:
                raise outage from None
            raise

    return st.with_retries(go, what=what, retries=int(cfg.storage.retries), backoff=float(cfg.storage.backoff),
                           url=url)


def make_sampler(cfg: DictConfig, multi: bool) -> optuna.samplers.BaseSampler:
    s = cfg.sampler
    if s.name in ("grid", "random"):
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.name == "tpe":
        return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.n_startup_trials,
                                          multivariate=True, constant_liar=True)
    if s.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed, population_size=s.population_size)
    raise ConfigError(f"unknown sampler {s.name!r}; allowed: grid, random, tpe, nsga2")


def make_pruner(cfg: DictConfig) -> optuna.pruners.BasePruner:
    p = cfg.pruner
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
    raise ConfigError(f"unknown pruner {p.name!r}; allowed: none, median, successive_halving, hyperband")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


# -- the worker ----------------------------------------------------------------------------------------------
class Worker:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.name = study_name(cfg)
        self.mode = cfg.search.mode
        if self.mode not in ("grid", "sample"):
            raise ConfigError(f"search.mode {self.mode!r} unknown; allowed: grid, sample")
        self.objectives = list(cfg.search.objectives)
        for o in self.objectives:
            if o not in OBJECTIVES:
                raise ConfigError(f"unknown objective {o!r}; allowed: {', '.join(OBJECTIVES)}")
        if not self.objectives or self.objectives[0] != "val_acc":
            raise ConfigError(f"search.objectives must start with val_acc, got {self.objectives}")
        self.multi = len(self.objectives) > 1
        self.base = OmegaConf.to_container(cfg, resolve=True)
        # Plan (and so validate) everything before touching any storage; the base config itself must be valid
        # even where every point overrides the model (a typo on the command line is still a typo).
        resolve_trial(self.base, {}, int(cfg.search.seeds[0]))
        if self.mode == "grid":
            self.plan = plan_grid(cfg)
            self.by_identity = {p.identity: p for p in self.plan}
            self.distributions = grid_distributions(self.plan)
        else:
            validate_sample_space(cfg)
            self.plan = []
            self.by_identity = {}
        make_sampler(cfg, self.multi)
        make_pruner(cfg)
        self.fingerprint = space_fingerprint(cfg, self.plan if self.mode == "grid" else None)
        self.host = socket.gethostname()
        self.commit = git_commit()
        self.trained = 0
        self.stop_requested = False

    # ---------------------------------------------------------------------------------------------------
    def dry_run(self) -> None:
        from dse.models import model_facts

        rows = []
        if self.mode == "grid":
            for i, p in enumerate(self.plan, 1):
                rows.append((i, p.block, p.trial.model.display_name, p.trial.model.name,
                             p.trial.optimizer["name"], p.trial.model.dropout, p.trial.data["dataset"],
                             p.trial.seed, p.facts.params, p.facts.macs, p.facts.checkpoint_bytes,
                             p.rejected or "ok"))
        else:
            t = resolve_trial(self.base, {}, int(self.cfg.search.seeds[0]))
            f = model_facts(t.model)
            rows.append((1, "base", t.model.display_name, t.model.name, t.optimizer["name"], t.model.dropout,
                         t.data["dataset"], t.seed, f.params, f.macs, f.checkpoint_bytes, "ok"))
        header = ("#", "block", "model", "registry name", "optimizer", "dropout", "dataset", "seed", "params",
                  "MACs", "ckpt bytes", "constraint")
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        print(f"study {self.name} ({self.mode} mode, fingerprint {self.fingerprint}); "
              f"trainer: {self.cfg.trainer.epochs} epochs, batch {self.cfg.trainer.batch_size}; data: "
              f"{self.cfg.data.dataset} subset={self.cfg.data.subset or self.cfg.data.subset_size or 'all'}")
        print(fmt.format(*header))
        for r in rows:
            print(fmt.format(*r))
        if self.mode == "grid":
            rejected = sum(1 for p in self.plan if p.rejected)
            print(f"{len(self.plan)} planned trials, {len(self.plan) - rejected} to train, {rejected} rejected "
                  "by constraints")
        else:
            print(f"sample mode: {self.cfg.search.n_trials} trials drawn by the {self.cfg.sampler.name} sampler "
                  f"from {len(self.cfg.search.params)} parameters (the row above is the base config)")

    # ---------------------------------------------------------------------------------------------------
    def open(self) -> None:
        self.url = storage_url(self.cfg)
        s = self.cfg.storage

        def create() -> None:
            with st.schema_lock(self.url):  # workers starting together must not race on CREATE TABLE
                self.store = st.Store(self.url, retries=int(s.retries), backoff=float(s.backoff))
                self.storage = optuna_storage(self.url, self.cfg, self._on_stale)

        st.with_retries(create, what="opening the results store", retries=int(s.retries),
                        backoff=float(s.backoff), url=self.url)
        # an outage while the study is opened is retried like one while the store is (every step is idempotent)
        retry_optuna(self._open_study, "opening the study", self.cfg, self.url)

    def _open_study(self) -> None:
        directions = [OBJECTIVES[o][0] for o in self.objectives]
        multi = len(directions) > 1
        try:
            summaries = {x.study_name: x for x in optuna.get_all_study_summaries(self.storage)}
        except Exception as e:  # noqa: BLE001
            if db_outage(e) is not None:
                raise
            raise st.StoreError(f"cannot read studies from {st.redact(self.url)}: {e}") from e
        existing = summaries.get(self.name)
        if existing is not None:
            fp = existing.user_attrs.get(FINGERPRINT_ATTR)
            if fp is not None and fp != self.fingerprint:
                raise SweepError(
                    f"study {self.name!r} in {st.redact(self.url)} was created with a different search space "
                    f"(fingerprint {fp} != {self.fingerprint}); choose another study.name=... (nothing changed)")
            if [d.name.lower() for d in existing.directions] != directions:
                raise SweepError(f"study {self.name!r} has objectives directions "
                                 f"{[d.name.lower() for d in existing.directions]}, this config asks {directions}; "
                                 "choose another study.name=...")
        self.study = optuna.create_study(
            study_name=self.name, storage=self.storage, load_if_exists=True,
            sampler=make_sampler(self.cfg, multi), pruner=make_pruner(self.cfg),
            **({"directions": directions} if multi else {"direction": directions[0]}))
        if existing is None or FINGERPRINT_ATTR not in existing.user_attrs:  # new, or its creation was cut short
            # what optuna-dashboard shows on its axes instead of "Objective 0, 1"
            self.study.set_metric_names([
                {"val_acc": "val accuracy %", "checkpoint_bytes": "checkpoint bytes", "sec_per_epoch":
                 "seconds per epoch", "macs": "MACs per image", "params": "parameters"}[o] for o in self.objectives])
            self.study.set_user_attr("experiment", self.cfg.study.experiment)
            self.study.set_user_attr("objectives", self.objectives)
            self.study.set_user_attr("budget", self.cfg.budget)
            self.study.set_user_attr(FINGERPRINT_ATTR, self.fingerprint)  # last: it marks the study complete

    def _row_fields(self, t: TrialConfig, facts: Any) -> dict[str, Any]:
        d = t.data
        return dict(
            model_name=t.model.name, arch=t.model.arch,
            stage_depths="-".join(map(str, t.model.stage_depths)) if t.model.stage_depths else None,
            width=float(t.model.width), dropout=float(t.model.dropout), activation=t.model.activation,
            num_classes=t.model.num_classes, optimizer=t.optimizer["name"], lr=t.optimizer.get("lr"),
            schedule=t.optimizer["schedule"], dataset=d["dataset"],
            data_fraction=float(d["subset"]) if d.get("subset") else 1.0,
            train_images=d.get("subset_size"), epochs=int(t.trainer["epochs"]),
            batch_size=int(t.trainer["batch_size"]), seed=t.seed, params=facts.params, macs=facts.macs,
            checkpoint_bytes=facts.checkpoint_bytes, config_json=st.config_json(t.to_dict()),
            git_commit=self.commit)

    def enqueue_plan(self) -> int:
        """Plan every grid trial in the store; enqueue those this worker planned (exactly one worker does)."""
        n = 0
        for p in self.plan:
            if self.store.plan(self.name, p.identity, self._row_fields(p.trial, p.facts)) and p.rejected:
                self.store.transition(self.name, p.identity, st.REJECTED, only_from=(st.PLANNED,),
                                      fail_reason=f"rejected by constraint: {p.rejected}",
                                      finished_at=st._now())
        for row in self.store.rows(self.name):
            if row.status == st.PLANNED and self._queue(row.identity, from_=(st.PLANNED,)):
                n += 1
        return n

    def _queue(self, identity: str, from_: tuple[str, ...], **where: Any) -> bool:
        """Compare-and-set the row to QUEUED, then put the trial in Optuna's queue (only the winner does)."""
        p = self.by_identity.get(identity)
        if p is None:  # not part of this plan (sample-mode rows are never re-queued)
            return False
        # the claim records the Optuna trial that runs it; until then a queued row belongs to no Optuna trial
        if not self.store.transition(self.name, identity, st.QUEUED, only_from=from_, queued_at=st._now(),
                                     optuna_trial_number=None, **where):
            return False
        self.study.enqueue_trial(p.params, user_attrs={"identity": identity})
        return True

    def _on_stale(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        """Heartbeat-stale trial (worker killed, machine lost): put it back in the queue, same parameters."""
        identity = frozen.user_attrs.get("identity")
        log.warning("trial %d (%s) lost its worker; re-queueing it", frozen.number, identity and identity[:12])
        if not identity:
            return
        if self._queue(identity, (st.RUNNING, st.INTERRUPTED), optuna_number=frozen.number):
            return
        # lost before its claim (an outage between Optuna's ask and our claim): the row is still queued for
        # this trial, unless another queue entry already carries it
        if identity not in _live_identities(study.get_trials(deepcopy=False)):
            self._queue(identity, (st.QUEUED,), optuna_number=None)

    def reconcile(self) -> int:
        """Repair what a crash, an outage or Ctrl-C left behind: re-queue interrupted trials, running trials
        whose Optuna trial is no longer running and queued trials that never reached Optuna's queue; and where
        our store finished a trial whose result never reached Optuna (the database went away between the two),
        give Optuna that result, so that the two agree row for row."""
        if self.mode != "grid":
            return 0
        optuna.storages.fail_stale_trials(self.study)
        trials = self.study.get_trials(deepcopy=False)
        live = _live_identities(trials)
        told = {t.user_attrs.get("identity") for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
        n = 0
        for row in self.store.rows(self.name):
            if row.identity in live:
                continue
            if row.status == st.INTERRUPTED or row.status == st.PLANNED:
                n += self._queue(row.identity, (row.status,))
            elif row.status == st.RUNNING:
                n += self._queue(row.identity, (st.RUNNING,), optuna_number=row.optuna_trial_number)
            elif row.status == st.QUEUED and (row.queued_at is None or
                                               (st._now() - row.queued_at).total_seconds() > QUEUE_WINDOW):
                # queued in the store but in no Optuna queue: the enqueue (or the trial that popped it) died
                # with the database; past the window another worker cannot be between its two writes
                n += self._queue(row.identity, (st.QUEUED,), optuna_number=row.optuna_trial_number)
            elif row.status == st.COMPLETE and row.identity not in told and row.identity in self.by_identity:
                self._tell_stored(row)
        return n

    def _tell_stored(self, row: st.TrialRow) -> None:
        """Record in Optuna a trial our store completed but Optuna never heard of (compare-and-set first, so
        that of several workers repairing at once exactly one adds it)."""
        if not self.store.transition(self.name, row.identity, st.COMPLETE, only_from=(st.COMPLETE,),
                                     optuna_number=row.optuna_trial_number, optuna_trial_number=-1):
            return
        p = self.by_identity[row.identity]
        values = self._values(row)
        frozen = optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE, params=p.params, distributions=self.distributions,
            user_attrs={"identity": row.identity, "restored_from_store": True, "test_acc": row.test_acc},
            **({"values": values} if self.multi else {"value": values}))
        self.study.add_trial(frozen)
        number = max(t.number for t in self.study.get_trials(deepcopy=False))
        self.store.update_trial(row.id, optuna_trial_number=number)
        log.warning("trial %s finished in the store but its result never reached Optuna; recorded it as "
                    "trial %d", row.identity[:12], number)

    # ---------------------------------------------------------------------------------------------------
    def _values(self, row: st.TrialRow) -> float | list[float]:
        vals = [float(getattr(row, OBJECTIVES[o][1]) or 0.0) for o in self.objectives]
        return vals if self.multi else vals[0]

    def objective(self, trial: optuna.Trial) -> float | list[float]:
        if self.mode == "grid":
            identity = trial.user_attrs.get("identity")
            planned = self.by_identity.get(identity) if identity else None
            if planned is None:
                trial.set_user_attr("dse_skip", "no queued trial left: another worker took the last one")
                raise _Skip("no queued trial left")
            for k, dist in self.distributions.items():
                trial.suggest_categorical(k, dist.choices)
            tcfg, facts = planned.trial, planned.facts
        else:
            point = suggest(trial, OmegaConf.to_container(self.cfg.search, resolve=True))
            seed = int(point.pop("seed", self.cfg.search.seeds[0]))
            tcfg = resolve_trial(self.base, point, seed)
            from dse.models import model_facts

            facts = model_facts(tcfg.model)
            identity = tcfg.identity
            trial.set_user_attr("identity", identity)
            if self.store.plan(self.name, identity, self._row_fields(tcfg, facts)):
                why = check_constraints(facts, OmegaConf.to_container(self.cfg.search.constraints))
                if why:
                    self.store.transition(self.name, identity, st.REJECTED, only_from=(st.PLANNED,),
                                          fail_reason=f"rejected by constraint: {why}", finished_at=st._now())
                    trial.set_user_attr("rejected", why)
                    raise optuna.TrialPruned(f"rejected by constraint: {why}")
        for k, v in (("model", tcfg.model.display_name), ("params", facts.params), ("macs", facts.macs),
                     ("checkpoint_bytes", facts.checkpoint_bytes)):
            trial.set_user_attr(k, v)

        row = self.store.get(self.name, identity)
        if row is not None and row.status == st.COMPLETE:  # never train a completed config twice
            if self.mode == "grid":  # a second queue entry (outage repair); Optuna already has (or gets) the result
                trial.set_user_attr("dse_skip", "already complete")
                raise _Skip("already complete")
            trial.set_user_attr("reused_from_store", True)
            return self._values(row)
        if row is not None and row.status in (st.FAILED, st.PRUNED, st.REJECTED):
            trial.set_user_attr("fail_reason", row.fail_reason)
            raise _Skip(f"already {row.status}: {row.fail_reason}")
        if row is not None and row.status == st.RUNNING and row.optuna_trial_number is not None and any(
                t.number == row.optuna_trial_number for t in self.study.get_trials(
                    deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))):
            raise _Skip("another worker is running this configuration")  # only a dead worker's trial is taken
        claimed = self.store.transition(
            self.name, identity, st.RUNNING, only_from=(st.PLANNED, st.QUEUED, st.INTERRUPTED, st.RUNNING),
            optuna_trial_number=trial.number, host=self.host, worker=f"{self.host}:{os.getpid()}",
            started_at=st._now(),
            attempts=(row.attempts if row else 0) + 1, **({} if row is None or row.status != st.RUNNING else
                                                          {"optuna_number": row.optuna_trial_number}))
        if not claimed:
            raise _Skip("another worker is running this configuration")
        row = self.store.get(self.name, identity)
        return self._train(trial, tcfg, row)

    def _train(self, trial: optuna.Trial, tcfg: TrialConfig, row: st.TrialRow) -> float | list[float]:
        from dse.data import load_data
        from dse.train import fit

        ckpt_dir = Path(self.cfg.study.checkpoint_dir)
        if not ckpt_dir.is_absolute():
            ckpt_dir = REPO / ckpt_dir
        ckpt_dir = ckpt_dir / self.name / tcfg.identity[:16]
        prune = not self.multi and self.cfg.pruner.name != "none"
        log.info("trial %d: %s (%s) seed %d, %s, %s; checkpoint %s", trial.number, tcfg.model.display_name,
                 tcfg.model.name, tcfg.seed, tcfg.optimizer["name"], tcfg.data["dataset"], ckpt_dir)

        def on_epoch(m: Any) -> None:
            md = asdict(m) if not isinstance(m, dict) else m
            self.store.record_epoch(row.id, {k: md.get(k) for k in (
                "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "lr", "train_seconds",
                "eval_seconds")})
            if prune:
                trial.report(float(md["val_acc"]), int(md["epoch"]))
                # the last epoch is never pruned: the trial is complete by then, whatever its curve
                if int(md["epoch"]) < int(tcfg.trainer["epochs"]) and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {md['epoch']} (val acc {md['val_acc']:.2f} %)")
            if self.stop_requested:
                raise KeyboardInterrupt

        try:
            train_cfg = tcfg.train_config(str(ckpt_dir))
            data = load_data(tcfg.data_config(), device=_device_of(train_cfg))
            n_train = int(data.train_x.shape[0])
            self.store.update_trial(row.id, data_source=data.source, train_images=n_train,
                                    data_fraction=n_train / data.train_pool if data.train_pool else 1.0,
                                    test_images=int(data.test_x.shape[0]))
            result = fit(tcfg.model, data, tcfg.optim_config(), train_cfg, on_epoch=on_epoch)
        except optuna.TrialPruned as e:
            self.store.update_trial(row.id, status=st.PRUNED, fail_reason=str(e), finished_at=st._now())
            raise
        except KeyboardInterrupt:
            self.store.update_trial(row.id, status=st.INTERRUPTED, fail_reason="interrupted (Ctrl-C/SIGTERM)",
                                    finished_at=st._now())
            raise
        except (st.StoreError, SQLAlchemyError) as e:
            log.warning("trial %d stopped by a storage error; it will be re-queued: %s", trial.number,
                        _first_line(e)[:200])
            try:
                self.store.update_trial(row.id, status=st.INTERRUPTED, fail_reason=f"storage error: "
                                        f"{_first_line(e)[:500]}")
            except Exception:  # noqa: BLE001 - still down: reconcile re-queues the running row later
                pass
            raise
        except Exception as e:
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            if _is_oom(e):
                reason = f"out of memory: {reason}"
            log.error("trial %d failed: %s", trial.number, reason)
            log.debug("%s", traceback.format_exc())
            self.store.update_trial(row.id, status=st.FAILED, fail_reason=reason[:2000], finished_at=st._now())
            trial.set_user_attr("fail_reason", reason[:500])
            raise
        self.trained += 1
        self.store.update_trial(
            row.id, status=st.COMPLETE, fail_reason=None, finished_at=st._now(),
            best_val_acc=result.best_val_acc, final_val_acc=result.final_val_acc, test_acc=result.test_acc,
            final_test_acc=result.final_test_acc, best_epoch=result.best_epoch, epochs_done=len(result.epochs),
            sec_per_epoch=result.sec_per_epoch, device=result.device, precision=result.precision,
            torch_version=result.torch_version, checkpoint_path=result.best_checkpoint)
        for k, v in (("test_acc", result.test_acc), ("sec_per_epoch", result.sec_per_epoch),
                     ("device", result.device), ("store_trial_id", row.id)):
            trial.set_user_attr(k, v)
        return self._values(self.store.get(self.name, tcfg.identity))

    # ---------------------------------------------------------------------------------------------------
    def _waiting_running(self) -> tuple[int, int]:
        ts = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,
                                                           optuna.trial.TrialState.RUNNING))
        w = sum(t.state == optuna.trial.TrialState.WAITING for t in ts)
        return w, len(ts) - w

    def run(self) -> None:
        self.open()
        queued = self.enqueue_plan() if self.mode == "grid" else 0
        requeued = self.reconcile()
        log.info("study %s in %s: %d newly queued, %d re-queued", self.name, st.redact(self.url), queued, requeued)
        max_trials = self.cfg.max_trials
        n_trials = self.cfg.search.n_trials
        done_states = st.TERMINAL
        failures = 0
        retries, backoff = int(self.cfg.storage.retries), float(self.cfg.storage.backoff)
        while not self.stop_requested:
            if max_trials is not None and self.trained >= max_trials:
                log.info("this worker reached max_trials=%d", max_trials)
                break
            try:
                if not self._step(n_trials, done_states):
                    break
                failures = 0
            except (KeyboardInterrupt, ConfigError):
                raise
            except Exception as e:  # the database went away mid-step (Optuna's own calls do not retry)
                failures += 1
                if failures > retries:
                    raise st.StoreError(f"storage {st.redact(self.url)} kept failing ({failures} times in a "
                                        f"row): {_first_line(e)}") from e
                delay = min(backoff * 2 ** (failures - 1), 30.0)
                log.warning("storage error (%s: %s); retry %d/%d in %.1f s", type(e).__name__,
                            _first_line(e)[:200], failures, retries, delay)
                time.sleep(delay)
        self.summary()

    def _step(self, n_trials: int | None, done_states: tuple[str, ...]) -> bool:
        """One scheduling step: run a trial, or wait for others' running trials; False when nothing is left."""
        waiting, running = self._waiting_running()
        if self.mode == "grid":
            if waiting == 0:
                if self.reconcile() > 0:
                    return True
                if not self.cfg.study.wait_for_running or (running == 0 and not self._unfinished()):
                    return False
                # others' trials are running (their worker may die), or rows of the plan are in no Optuna queue
                # yet (an outage cut an enqueue short): reconcile again after a poll
                time.sleep(float(self.cfg.study.poll_seconds))
                return True
        else:
            done = self.store.count(self.name, done_states)
            if done + running >= n_trials:
                if running == 0 or not self.cfg.study.wait_for_running:
                    return False
                time.sleep(float(self.cfg.study.poll_seconds))
                optuna.storages.fail_stale_trials(self.study)
                return True
        self.study.optimize(self.objective, n_trials=1, catch=(Exception,))
        return True

    def _unfinished(self) -> bool:
        """Whether rows of this plan are not finished (terminal), whatever Optuna says."""
        return any(r.status not in st.TERMINAL and r.identity in self.by_identity for r in self.store.rows(self.name))

    def summary(self) -> None:
        df = self.store.trials(self.name)
        counts = df["status"].value_counts().to_dict() if len(df) else {}
        done = df[df["status"] == st.COMPLETE]
        print(f"\nstudy {self.name}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) +
              f"; trained by this worker: {self.trained}")
        if len(done):
            best = done.loc[done["best_val_acc"].idxmax()]
            print(f"best so far: {best['model_name']} seed {best['seed']}: val {best['best_val_acc']:.2f} %, "
                  f"test {best['test_acc']:.2f} %, {best['checkpoint_bytes'] / 1e6:.3f} MB")
            front = pareto_front(done["best_val_acc"].tolist(), done["checkpoint_bytes"].tolist())
            print(f"Pareto front (val acc up, checkpoint size down): {len(front)} trials")
        print(f"store: {st.redact(self.url)}  (tables: make tables; dashboard: optuna-dashboard "
              f"{st.redact(self.url)})")


def _live_identities(trials: list[optuna.trial.FrozenTrial]) -> set[str | None]:
    """Identities that an Optuna trial still carries: waiting in the queue or running."""
    return {t.user_attrs.get("identity") for t in trials
            if t.state in (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING)}


def pareto_front(acc: list[float], size: list[float]) -> list[int]:
    """Indices of the points no other point beats on both accuracy (higher) and size (lower)."""
    order = sorted(range(len(acc)), key=lambda i: (size[i], -acc[i]))
    front, best = [], -math.inf
    for i in order:
        if acc[i] > best:
            front.append(i)
            best = acc[i]
    return front


def _device_of(train_cfg: Any) -> str:
    import torch

    dev = getattr(train_cfg, "device", "auto")
    if dev == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return dev


def _is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError | MemoryError) or "out of memory" in str(e).lower()


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    show_cfg = "--cfg" in args
    args = [a for a in args if a != "--cfg"]
    logging.basicConfig(level=os.environ.get("DSE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("optuna").setLevel(logging.WARNING)
    try:
        try:
            cfg = compose(args)
        except DSEError:
            raise
        except Exception as e:  # Hydra/OmegaConf composition errors: unknown keys, wrong types, bad YAML
            msg = " ".join(line.strip() for line in str(e).strip().splitlines() if line.strip())
            raise ConfigError(f"bad configuration: {msg or type(e).__name__}") from None
        if show_cfg:
            print(OmegaConf.to_yaml(cfg))
            return 0
        worker = Worker(cfg)
        if cfg.dry_run:
            worker.dry_run()
            return 0

        def on_term(signum: int, _frame: Any) -> None:  # SLURM preemption / kill: stop like Ctrl-C
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, on_term)
        worker.run()
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: the running trial is marked 'interrupted' and will be re-queued on the next "
              "start; nothing finished is lost", file=sys.stderr)
        return 130
    except DSEError as e:
        print(f"error: {_first_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
