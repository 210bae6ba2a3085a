"""One claimed trial, from its claim to its settled row: train it under a lease, write its epochs, finish it.

Its own failure (divergence, out of memory for that configuration, a bug its configuration hits) settles it as
FAILED with its reason; a failure of the environment (environment_fault: data, device, disk, store) puts it back
in the queue untouched and stops the worker; Ctrl-C marks it interrupted for the next claim to resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy.exc import SQLAlchemyError

from dse import autotune
from dse import store as st
from dse.common import results_relative
from dse.errors import ConfigError, CorruptDatasetError, DatasetNotFoundError, EnvironmentFault, first_line
from dse.faults import DiskFullError, disk_full, full_path
from dse.space import TrialConfig
from dse.sweep.plan import source_key
from dse.sweep.queue import Lease

log = logging.getLogger("dse.sweep")
#: The EpochMetrics fields a dse_epochs row holds: its columns, less its keys
EPOCH_COLUMNS = tuple(c.name for c in st.EpochRow.__table__.columns if c.name not in ("id", "trial_id"))
#: TrialResult fields that reach dse_trials under another name (None: not stored there; planning stored the
#: cheap facts already, the epochs go to dse_epochs)
RESULT_RENAMED: dict[str, str | None] = {
    "epochs": None, "resumed_from_epoch": None, "params": None, "macs": None, "checkpoint_bytes": None,
    "best_checkpoint": "checkpoint_path", "channels_last": "memory_format"}


def result_columns(r: Any) -> dict[str, Any]:
    """The dse_trials columns of a finished fit (a dse.train.TrialResult), derived from its fields: a field is
    stored under its own name unless RESULT_RENAMED says otherwise."""
    out = {}
    for f in dataclasses.fields(r):
        name = RESULT_RENAMED.get(f.name, f.name)
        if name is not None:
            out[name] = getattr(r, f.name)
    if out.get("checkpoint_path"):  # kept relative to results/: the folder can move
        out["checkpoint_path"] = results_relative(out["checkpoint_path"])
    out["memory_format"] = "channels_last" if r.channels_last else "nchw"
    out["epochs_done"] = len(r.epochs)
    return out


class LeaseLost(Exception):  # noqa: N818 - not an error: another worker holds the trial now
    pass


@dataclass
class RunResult:
    """What this worker did in this run."""

    trained: int = 0
    failed: int = 0
    pruned: int = 0
    interrupted: int = 0  # running trials this worker marked interrupted when a signal stopped it


class TrialRun:
    """Runs claimed trials for one worker (dse.sweep.worker.Worker): its config, plan, store, queue, Optuna
    record, stop request and counters."""

    def __init__(self, worker: Any) -> None:
        w = worker
        self.cfg, self.base, self.plan, self.queue = w.cfg, w.base, w.plan, w.queue
        self.record, self.stop, self.result, self.checkpoint_root = w.record, w.stop, w.result, w.checkpoint_root()
        self.progress = getattr(w, "progress", None)  # the study's ETA, corrected by each epoch's pace

    def run(self, row: st.TrialRow) -> None:
        """Train `row` under a lease and settle it in the store (complete, pruned, failed, or back in the queue);
        re-raise what must stop the worker."""
        tcfg = TrialConfig.from_dict(json.loads(row.config_json)).on_this_machine(self.base["data"],
                                                                                  self.base["trainer"])
        ckpt = checkpoint_folder(self.checkpoint_root, row)
        lease = Lease(self.queue, row.id, float(self.cfg.storage.heartbeat_interval))
        lease.start()
        self.record.start(row)
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
        log.info("trial %s (attempt %d): %s (%s) seed %d, %s, %s; checkpoints %s%s", name(row), row.attempts,
                 tcfg.model.display_name, tcfg.model.name, tcfg.seed, tcfg.optimizer["name"],
                 tcfg.data["dataset"], ckpt, f"; resuming after epoch {row.epochs_done}" if row.epochs_done else "")
        curve = self.queue.curve(row.id)
        self.record.fill_intermediate(row, curve)  # a resume after an outage between the store and Optuna

        def on_epoch(m: Any) -> None:  # an EpochMetrics, after its checkpoints are written
            md = m.to_dict()
            epoch, acc = int(md["epoch"]), float(md["val_acc"])
            if any(e not in curve for e in range(1, epoch)):  # resumed past epochs the store never got
                self.catch_up(row, ckpt / "last.pt", curve, epoch)
            self.queue.record_epoch(row.id, {k: md.get(k) for k in EPOCH_COLUMNS})
            if self.progress is not None:
                self.progress.epoch_done(row, m.train_seconds + m.eval_seconds + m.warmup_seconds)
            curve[epoch] = acc
            if lease.lost.is_set():
                raise LeaseLost
            # the last epoch is never pruned: the trial is complete by then, whatever its curve
            if self.record.report(row, epoch, acc, curve) and epoch < epochs:
                raise optuna.TrialPruned(f"pruned at epoch {epoch} (val acc {acc:.2f} %)")

        optim = tcfg.optim_config()
        board_run = f"{self.plan.name}/{ckpt.name}"  # TensorBoard: one folder per study, a run per trial
        train_cfg = autotune.resolve(tcfg.model, optim, tcfg.train_config(str(ckpt), run=board_run))  # auto: here
        try:
            data = load_data(tcfg.data_config(), device=resolve_device(str(train_cfg.device)))
        except (DatasetNotFoundError, CorruptDatasetError, OSError) as e:
            raise EnvironmentFault(f"data: {first_line(e)}") from e
        n_train = int(data.train_x.shape[0])
        facts = self.plan.sources.get(source_key(tcfg.data))
        self.queue.note(row.id, data_source=data.source, train_images=n_train,
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
            self.queue.record_epoch(row.id, {k: history[e].get(k) for k in EPOCH_COLUMNS})
            curve[e] = float(history[e]["val_acc"])
            self.record.intermediate(row, e, curve[e])
        if missing:
            log.info("trial %s: epoch%s %s written to the store from %s (trained while the store was away)",
                     name(row), "s" * (len(missing) > 1), ", ".join(map(str, missing)), last)

    def complete(self, row: st.TrialRow, r: Any, ckpt: Path) -> None:
        if not self.queue.finish(row.id, st.COMPLETE, fail_reason=None, **result_columns(r)):
            log.warning("trial %s finished after its lease ran out; another worker has it now", name(row))
            return
        self.result.trained += 1
        if not self.cfg.study.keep_last:  # best.pt stays: it is the trained model
            (ckpt / "last.pt").unlink(missing_ok=True)
        log.info("trial %s complete: val %.2f %%, test %.2f %%, %.1f s/epoch", name(row), r.best_val_acc, r.test_acc,
                 r.sec_per_epoch)
        self.record.record(self.queue.get(row.id))

    def settle(self, row: st.TrialRow, e: BaseException) -> None:
        """Store what ended the trial; re-raise what must stop the worker (Ctrl-C, the environment)."""
        if isinstance(e, LeaseLost):
            log.warning("trial %s: lease lost (the store was out of reach too long); another worker has it",
                        name(row))
            return
        if isinstance(e, KeyboardInterrupt):
            why = "interrupted (Ctrl-C or SIGTERM); the next claim resumes it from its last.pt"
            if self.queue.release(row.id, st.INTERRUPTED, why):
                self.result.interrupted += 1
            self.record.wait_again(row, why)  # the dashboard shows it waiting (grid) and says why
            raise e
        if isinstance(e, optuna.TrialPruned):
            self._fail(row, st.PRUNED, str(e))
            self.result.pruned += 1
            return
        fault = environment_fault(e)
        if fault is not None:
            log.debug("%s", "".join(traceback.format_exception(e)))
            self.queue.release(row.id, st.QUEUED, f"waiting: {fault}")
            with contextlib.suppress(Exception):  # the store itself may be the fault: the queue row is what counts
                self.record.wait_again(row, f"waiting: {fault}")
            raise EnvironmentFault(fault) from e
        reason = trial_failure(e)
        log.error("trial %s failed: %s", name(row), reason)
        log.debug("%s", "".join(traceback.format_exception(e)))
        self._fail(row, st.FAILED, reason)
        self.result.failed += 1

    def _fail(self, row: st.TrialRow, status: str, reason: str) -> None:
        if self.queue.finish(row.id, status, fail_reason=reason[:2000]):
            self.record.record(self.queue.get(row.id))



def name(row: st.TrialRow) -> str:
    return st.trial_name(row.optuna_trial_number, row.id)


def checkpoint_folder(root: Path, row: st.TrialRow) -> Path:
    """``<root>/<trial name>-<model>``: the folder of the trial's last.pt and best.pt. A trial an older version
    started keeps its folder (``<model>-t<store id>``), so that it resumes from its last.pt."""
    folder = root / f"{name(row)}-{row.model_name}"
    legacy = root / f"{row.model_name}-t{row.id}"
    return legacy if not folder.exists() and (legacy / "last.pt").exists() else folder


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


