"""One worker: claim a trial, train it under a lease, settle it, record it; until the study has nothing left.

Failures come in two classes. A trial's own failure (divergence, out of memory for that configuration, a bug
its configuration hits) is FAILED with its reason and the worker goes on. A failure of the environment (data
missing or unreadable, device unavailable, checkpoint folder unwritable, disk full, store unreachable) would
fail every trial the same way: the worker puts the trial back in the queue, untouched, and stops with one line,
so that fixing the cause and running the same command again carries on where it stopped.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from sqlalchemy.exc import SQLAlchemyError

from dse import autotune
from dse import store as st
from dse.common import REPO, git_commit
from dse.errors import ConfigError, CorruptDatasetError, DatasetNotFoundError, EnvironmentFault, first_line
from dse.faults import DiskFullError, disk_full, full_path, reason_is_disk_full
from dse.space import TrialConfig, check_constraints, resolve_trial, suggest
from dse.sweep.plan import StudyPlan, row_fields, source_key
from dse.sweep.progress import StudyProgress
from dse.sweep.queue import Lease, Queue
from dse.sweep.record import Record
from dse.sweep.stop import StopRequest
from dse.sweep.tune import CachedEstimates

log = logging.getLogger("dse.sweep")
EPOCH_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "lr", "train_seconds",
                 "eval_seconds")


class LeaseLost(Exception):  # noqa: N818 - not an error: another worker holds the trial now
    pass


@dataclass
class RunResult:
    """What this worker did in this run."""

    trained: int = 0
    failed: int = 0
    pruned: int = 0
    interrupted: int = 0  # running trials this worker marked interrupted when a signal stopped it


class Worker:
    def __init__(self, cfg: DictConfig, plan: StudyPlan, url: str) -> None:
        self.cfg, self.plan, self.url = cfg, plan, url
        self.base: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        # trials whose data this machine lacks stay queued for a machine that has it
        self.only = {p.identity for p in plan.runnable} if plan.mode == "grid" and plan.missing_data else None
        self.result = RunResult()
        self.commit = git_commit()
        self.stop = StopRequest()

    def open(self) -> None:
        """Open (and create, one worker at a time) our tables and the Optuna study."""
        s = self.cfg.storage

        def create() -> st.Store:
            with st.schema_lock(self.url):
                return st.Store(self.url, retries=int(s.retries), backoff=float(s.backoff))

        self.store = st.with_retries(create, what="opening the results store", retries=int(s.retries),
                                     backoff=float(s.backoff), url=self.url)
        self.queue = Queue(self.store, self.plan.name, float(s.grace_period))
        self.record = Record(self.cfg, self.plan, self.url, self.queue)
        self.record.open()

    def prepare(self) -> int:
        """Queue the plan's trials that are not in the store yet (rejected ones are finished at once), re-queue
        failed ones when asked, re-queue expired leases; how many trials were newly queued."""
        self.check_data_unchanged()
        rows = []
        for p in self.plan.runnable:
            rows.append({**row_fields(self.plan.name, p.trial, p.facts, self.commit), "queued_at": st._now(),
                         **({"status": st.REJECTED, "fail_reason": f"rejected by constraint: {p.rejected}",
                             "finished_at": st._now()} if p.rejected else {"status": st.QUEUED})})
        new = self.store.insert_missing(rows)
        if self.cfg.retry_failed:
            n = self.queue.retry_failed()
            log.info("retry_failed=true: %d failed trial%s re-queued", n, "s" * (n != 1))
        self.requeue_misread()
        self.queue.requeue_expired()
        self.record.record_pending()
        return new

    def check_data_unchanged(self) -> None:
        """Refuse to go on with data other than the data the study's trials were trained on (files added, removed
        or renamed since): their results and the new ones would not compare. Trials of older versions (no
        fingerprint) are not checked."""
        now = {key[0]: (f.fingerprint, key[1]) for key, f in self.plan.sources.items()}
        stale = [r for r in self.store.rows(self.plan.name)
                 if r.data_fingerprint and r.dataset in now and r.data_fingerprint != now[r.dataset][0]]
        if stale:
            fp, root = now[stale[0].dataset]
            n = len(stale)
            raise EnvironmentFault(
                f"data: {stale[0].dataset} at {root or 'the default root'} is not the data {n} trial{'s' * (n != 1)} "
                f"of study {self.plan.name} were trained on (files added, removed or renamed since: fingerprint "
                f"{fp[:12]}, theirs {stale[0].data_fingerprint[:12]}); restore it, or start a new study "
                "(study.name=...)")

    def requeue_misread(self) -> None:
        """Trials that older versions failed for a full disk (e.g. torch.save's "unexpected pos") never failed
        themselves: back to the queue, before their result is recorded in Optuna as a FAIL."""
        ids = [r.id for r in self.queue.failed() if reason_is_disk_full(r.fail_reason)]
        n = self.queue.requeue_failed(ids, "re-queued: its failure was a full disk, not the trial's own")
        if n:
            log.info("%d trial%s that failed for a full disk re-queued (a fault of the machine, not of the trial)",
                     n, "s" * (n != 1))

    def preflight(self) -> None:
        """Checks that would otherwise fail the first trial: the device exists, the checkpoint folder is writable."""
        dev = str(self.cfg.trainer.device)
        if dev.startswith("cuda"):
            import torch

            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            idx = int(dev.split(":")[1]) if ":" in dev else 0
            if idx >= n:
                have = f"{n} GPU{'s' * (n != 1)}" + (f" (cuda:0..cuda:{n - 1})" if n else "")
                raise EnvironmentFault(f"trainer.device={dev} is not available: this machine has {have}")
        folder = self.checkpoint_root()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
                pass
        except OSError as e:
            raise EnvironmentFault(f"checkpoint folder {folder} is not writable ({e.strerror or e}); set "
                                   "study.checkpoint_dir=... to a writable folder") from None

    def checkpoint_root(self) -> Path:
        root = Path(self.cfg.study.checkpoint_dir).expanduser()
        return (root if root.is_absolute() else REPO / root) / self.plan.name

    # -- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Train trials until the study has none left for this worker (or max_trials)."""
        max_trials = self.cfg.max_trials
        total = len(self.plan.runnable) if self.plan.mode == "grid" else int(self.cfg.search.n_trials)
        progress = StudyProgress(self.queue, total, int(self.cfg.workers), str(self.cfg.trainer.progress),
                                 estimate_of=CachedEstimates(self.base))
        self.stop.install()  # SIGINT/SIGTERM: stop at the next safe point (dse/sweep/stop.py)
        try:
            self._loop(max_trials, progress)
        finally:
            self.stop.restore()
            progress.close()
        self.record.record_pending()
        return self.result

    def _loop(self, max_trials: int | None, progress: StudyProgress) -> None:
        while max_trials is None or self.result.trained < max_trials:
            self.stop.check()
            row = self.next_trial()
            if row is not None:
                t0 = time.monotonic()
                self.run_one(row)
                progress.trial_done(row, time.monotonic() - t0)
            elif not self.cfg.study.wait_for_running or self.queue.unfinished(self.only) == 0:
                break
            else:  # others' trials are running: wait, so that a lost worker's trial is retried
                self._wait(float(self.cfg.study.poll_seconds))

    def _wait(self, seconds: float) -> None:
        """Sleep ``seconds``, in slices of 0.2 s so that a stop request is acted on without the whole wait."""
        end = time.monotonic() + seconds
        while not self.stop.requested and time.monotonic() < end:
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))

    def next_trial(self) -> st.TrialRow | None:
        self.queue.requeue_expired()
        row = self.queue.claim(self.only)
        if row is None and self.plan.mode == "sample":
            row = self.sample()
        return row

    def sample(self) -> st.TrialRow | None:
        """Ask Optuna for a new point while the study's budget lasts; the new row is claimed by this worker."""
        from dse.models import model_facts

        for _ in range(100):  # points that are duplicates or rejected by a constraint do not cost a training
            if sum(self.queue.counts().values()) >= int(self.cfg.search.n_trials):
                return None
            trial = self.record.ask()
            try:
                point = suggest(trial, OmegaConf.to_container(self.cfg.search, resolve=True))
                tcfg = resolve_trial(self.base, point, int(point.pop("seed", self.cfg.search.seeds[0])))
            except ConfigError as e:  # the space holds an invalid combination: a real failure of this point
                trial.set_user_attr("fail_reason", f"invalid configuration: {e}")
                self.record.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            facts = model_facts(tcfg.model)
            fields = {**row_fields(self.plan.name, tcfg, facts, self.commit), "optuna_trial_number": trial.number}
            row = self.queue.insert_claimed(fields)
            if row is None:
                self._duplicate(trial, tcfg.identity)
                continue
            why = check_constraints(facts, OmegaConf.to_container(self.cfg.search.constraints))
            if why:
                self.queue.finish(row.id, st.REJECTED, fail_reason=f"rejected by constraint: {why}")
                self.record.record(self.queue.get(row.id))
                continue
            return row
        return None

    def _duplicate(self, trial: optuna.Trial, identity: str) -> None:
        """The sampler drew a configuration the study already has: reuse its result, or mark the point."""
        row = self.store.get(self.plan.name, identity)
        if row is not None and row.status == st.COMPLETE:
            trial.set_user_attr("reused_from_store_trial", row.id)
            self.record.study.tell(trial, self.record.values(row))
        else:
            trial.set_user_attr("duplicate_of_store_trial", row.id if row else None)
            self.record.study.tell(trial, state=optuna.trial.TrialState.PRUNED)

    # -- one trial ----------------------------------------------------------------------------------------------
    def run_one(self, row: st.TrialRow) -> None:
        tcfg = TrialConfig.from_dict(json.loads(row.config_json)).on_this_machine(self.base["data"],
                                                                                  self.base["trainer"])
        ckpt = self.checkpoint_root() / f"{row.model_name}-t{row.id}"
        lease = Lease(self.queue, row.id, float(self.cfg.storage.heartbeat_interval))
        lease.start()
        try:
            with self.stop.training():  # a signal stops the training at once; last.pt is written atomically
                result = self.train(row, tcfg, ckpt, lease)
        except BaseException as e:  # noqa: BLE001 - every outcome is settled in the store, then re-raised or not
            lease.stop()
            self.settle(row, e)
            return
        lease.stop()
        self.complete(row, result, ckpt)

    def train(self, row: st.TrialRow, tcfg: TrialConfig, ckpt: Path, lease: Lease) -> Any:
        from dse.data import load_data
        from dse.train import fit, resolve_device

        epochs = int(tcfg.trainer["epochs"])
        log.info("trial t%d (attempt %d): %s (%s) seed %d, %s, %s; checkpoints %s%s", row.id, row.attempts,
                 tcfg.model.display_name, tcfg.model.name, tcfg.seed, tcfg.optimizer["name"],
                 tcfg.data["dataset"], ckpt, f"; resuming after epoch {row.epochs_done}" if row.epochs_done else "")
        curve = self.queue.curve(row.id)
        self.record.fill_intermediate(row, curve)  # a resume after an outage between the store and Optuna

        def on_epoch(m: Any) -> None:  # an EpochMetrics, after its checkpoints are written
            md = m.to_dict()
            epoch, acc = int(md["epoch"]), float(md["val_acc"])
            if any(e not in curve for e in range(1, epoch)):  # resumed past epochs the store never got
                self.catch_up(row, ckpt / "last.pt", curve, epoch)
            self.store.record_epoch(row.id, {k: md.get(k) for k in EPOCH_COLUMNS})
            curve[epoch] = acc
            if lease.lost.is_set():
                raise LeaseLost
            # the last epoch is never pruned: the trial is complete by then, whatever its curve
            if self.record.report(row, epoch, acc, curve) and epoch < epochs:
                raise optuna.TrialPruned(f"pruned at epoch {epoch} (val acc {acc:.2f} %)")

        optim = tcfg.optim_config()
        train_cfg = autotune.resolve(tcfg.model, optim, tcfg.train_config(str(ckpt)))  # auto: as measured here
        try:
            data = load_data(tcfg.data_config(), device=resolve_device(str(train_cfg.device)))
        except (DatasetNotFoundError, CorruptDatasetError, OSError) as e:
            raise EnvironmentFault(f"data: {first_line(e)}") from e
        n_train = int(data.train_x.shape[0])
        facts = self.plan.sources.get(source_key(tcfg.data))
        self.store.update_trial(row.id, data_source=data.source, train_images=n_train,
                                data_fingerprint=facts.fingerprint if facts else None,
                                data_fraction=n_train / data.train_pool if data.train_pool else 1.0,
                                test_images=int(data.test_x.shape[0]))
        return fit(tcfg.model, data, optim, train_cfg, on_epoch=on_epoch)

    def catch_up(self, row: st.TrialRow, last: Path, curve: dict[int, float], epoch: int) -> None:
        """Write the epochs before ``epoch`` that were trained while the store was out of reach (their last.pt
        was written, their store record was not): from the history in last.pt, which fit has just rewritten with
        this epoch. In order, so the store, Optuna's intermediate values, the pruner and the dashboard see the
        whole curve once."""
        from dse.train import load_checkpoint

        history = {int(h["epoch"]): h for h in load_checkpoint(last).get("history", [])}
        missing = [e for e in range(1, epoch) if e not in curve and e in history]
        for e in missing:
            self.store.record_epoch(row.id, {k: history[e].get(k) for k in EPOCH_COLUMNS})
            curve[e] = float(history[e]["val_acc"])
            self.record.intermediate(row, e, curve[e])
        if missing:
            log.info("trial t%d: epoch%s %s written to the store from %s (trained while the store was away)",
                     row.id, "s" * (len(missing) > 1), ", ".join(map(str, missing)), last)

    def complete(self, row: st.TrialRow, r: Any, ckpt: Path) -> None:
        if not self.queue.finish(row.id, st.COMPLETE, fail_reason=None, best_val_acc=r.best_val_acc,
                                 final_val_acc=r.final_val_acc, test_acc=r.test_acc, final_test_acc=r.final_test_acc,
                                 best_epoch=r.best_epoch, epochs_done=len(r.epochs), sec_per_epoch=r.sec_per_epoch,
                                 device=r.device, precision=r.precision, torch_version=r.torch_version,
                                 threads=r.threads, fast_path=r.fast_path, warmup_seconds=r.warmup_seconds,
                                 memory_format="channels_last" if r.channels_last else "nchw",
                                 checkpoint_path=r.best_checkpoint):
            log.warning("trial t%d finished after its lease ran out; another worker has it now", row.id)
            return
        self.result.trained += 1
        if not self.cfg.study.keep_last:  # best.pt stays: it is the trained model
            (ckpt / "last.pt").unlink(missing_ok=True)
        log.info("trial t%d complete: val %.2f %%, test %.2f %%, %.1f s/epoch", row.id, r.best_val_acc, r.test_acc,
                 r.sec_per_epoch)
        self.record.record(self.queue.get(row.id))

    def settle(self, row: st.TrialRow, e: BaseException) -> None:
        """Store what ended the trial; re-raise what must stop the worker (Ctrl-C, the environment)."""
        if isinstance(e, LeaseLost):
            log.warning("trial t%d: lease lost (the store was out of reach too long); another worker has it", row.id)
            return
        if isinstance(e, KeyboardInterrupt):
            why = "interrupted (Ctrl-C or SIGTERM); the next claim resumes it from its last.pt"
            if self.queue.release(row.id, st.INTERRUPTED, why):
                self.result.interrupted += 1
            self.record.note(row, "interrupted", why)  # sample mode: the dashboard says why it is still running
            raise e
        if isinstance(e, optuna.TrialPruned):
            self._fail(row, st.PRUNED, str(e))
            self.result.pruned += 1
            return
        fault = environment_fault(e)
        if fault is not None:
            log.debug("%s", "".join(traceback.format_exception(e)))
            self.queue.release(row.id, st.QUEUED, f"waiting: {fault}")
            raise EnvironmentFault(fault) from e
        reason = trial_failure(e)
        log.error("trial t%d failed: %s", row.id, reason)
        log.debug("%s", "".join(traceback.format_exception(e)))
        self._fail(row, st.FAILED, reason)
        self.result.failed += 1

    def _fail(self, row: st.TrialRow, status: str, reason: str) -> None:
        if self.queue.finish(row.id, status, fail_reason=reason[:2000]):
            self.record.record(self.queue.get(row.id))


def environment_fault(e: BaseException) -> str | None:
    """Why the machine (not the trial) is at fault, or None when the trial itself failed."""
    msg = first_line(e)
    if isinstance(e, DiskFullError):
        return str(e)
    if disk_full(e):  # whatever layer it surfaced in: torch.save, the data cache, SQLite, PostgreSQL
        return str(DiskFullError(full_path(e)))
    if isinstance(e, EnvironmentFault):
        return str(e)
    if isinstance(e, DatasetNotFoundError | CorruptDatasetError):
        return f"data: {msg}"
    if isinstance(e, ConfigError):  # e.g. the device this worker was given does not exist
        return f"configuration: {msg}"
    if isinstance(e, st.StoreError | SQLAlchemyError):
        return f"store: {msg}"
    if _is_oom(e):
        return None
    if isinstance(e, OSError):
        return f"file system: {msg}"
    low = msg.lower()
    if "permission denied" in low:
        return f"not writable: {msg}"
    if any(s in low for s in ("invalid device ordinal", "no cuda gpus", "cuda driver", "cuda unavailable")):
        return f"device: {msg}"
    return None


def trial_failure(e: BaseException) -> str:
    reason = f"{type(e).__name__}: {first_line(e)}"
    return f"out of memory: {reason}" if _is_oom(e) else reason


def _is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError | MemoryError) or "out of memory" in str(e).lower()


