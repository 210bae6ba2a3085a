"""The queue: ``dse_trials`` rows claimed by workers under a lease kept on the database's clock.

Every change of a trial's state is one compare-and-set UPDATE: it names the state (and for a running trial the
worker) it expects, and the row count says whether this worker won. A worker claims the oldest queued trial,
renews its lease from a heartbeat thread, and finishes or releases it only while it still holds it. A trial
whose lease ran out (its worker was killed, its host lost) goes back to the queue and the next claim resumes it
from its ``last.pt``. Expiry is compared in SQL against the database's own clock: the hosts' clocks never
matter.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from sqlalchemy import Interval, exists, func, literal_column, or_, select, update

from dse import store as st
from dse.errors import first_line
from dse.store import TrialRow

log = logging.getLogger("dse.sweep")

CLAIMABLE = (st.QUEUED, st.INTERRUPTED)


class StudyRows:
    """One study's ``dse_trials`` rows as they stand: reading only (Queue changes them)."""

    def __init__(self, store: st.Store, study: str) -> None:
        self.store, self.study = store, study

    def waiting(self) -> list[TrialRow]:
        """Trials waiting for a worker (queued, interrupted)."""
        return self._rows(TrialRow.status.in_(CLAIMABLE))

    def unrecorded(self) -> list[TrialRow]:
        """Finished trials whose result has not reached Optuna yet (rejected ones; an outage in between)."""
        return self._rows(TrialRow.status.in_(st.TERMINAL), TrialRow.recorded_at.is_(None))

    def failed(self) -> list[TrialRow]:
        return self._rows(TrialRow.status == st.FAILED)

    def _rows(self, *cond: Any) -> list[TrialRow]:
        def go() -> list[TrialRow]:
            with self.store.session() as s:
                return list(s.scalars(select(TrialRow).where(TrialRow.study == self.study, *cond)
                                      .order_by(TrialRow.id)))

        return self.store.retry(go, "reading the queue")

    def get(self, row_id: int) -> TrialRow:
        def go() -> TrialRow:
            with self.store.session() as s:
                return s.get_one(TrialRow, row_id)

        return self.store.retry(go, "reading a trial")

    def counts(self) -> dict[str, int]:
        def go() -> dict[str, int]:
            with self.store.session() as s:
                q = select(TrialRow.status, func.count()).where(TrialRow.study == self.study)
                return {k: int(v) for k, v in s.execute(q.group_by(TrialRow.status))}

        return self.store.retry(go, "counting trials")

    def unfinished_rows(self) -> list[TrialRow]:
        """Trials still to do or being done by someone."""
        return self._rows(TrialRow.status.in_((*CLAIMABLE, st.RUNNING)))

    def unfinished(self, only: set[str] | None = None) -> int:
        """Trials still to do or being done by someone (of ``only`` when given)."""
        cond = [TrialRow.status.in_((*CLAIMABLE, st.RUNNING))]
        if only is not None:
            cond.append(TrialRow.identity.in_(sorted(only)))
        return len(self._rows(*cond))

    def curve(self, row_id: int) -> dict[int, float]:
        """Validation accuracy (percent) per epoch, as stored."""
        def go() -> dict[int, float]:
            with self.store.session() as s:
                q = select(st.EpochRow.epoch, st.EpochRow.val_acc).where(st.EpochRow.trial_id == row_id)
                return {int(e): float(v) for e, v in s.execute(q) if v is not None}

        return self.store.retry(go, "reading a trial's curve")


class Queue(StudyRows):
    """One worker's view of one study's queue: claims, leases and every change of a trial's state."""

    def __init__(self, store: st.Store, study: str, lease_seconds: float) -> None:
        super().__init__(store, study)
        self.lease = float(lease_seconds)
        self.host = socket.gethostname()
        self.worker = f"{self.host}:{os.getpid()}"
        self.sqlite = store.engine.dialect.name == "sqlite"

    # -- the database's clock -------------------------------------------------------------------------------------
    def now(self, plus_seconds: float = 0.0) -> Any:
        """SQL for the database's time (naive UTC on SQLite, the server's local time on PostgreSQL), plus an
        offset; only ever compared with other values of this expression."""
        if self.sqlite:  # text with milliseconds: compares correctly as a string
            return func.strftime("%Y-%m-%d %H:%M:%f", "now", f"{plus_seconds:+.3f} seconds")
        return func.localtimestamp() + literal_column(f"interval '{plus_seconds:.3f} seconds'", Interval)

    def _run(self, stmt: Any, what: str) -> int:
        def go() -> int:
            with self.store.session() as s:
                return s.execute(stmt).rowcount

        return self.store.retry(go, what)

    # -- claiming ---------------------------------------------------------------------------------------------
    def claim(self, only: set[str] | None = None) -> TrialRow | None:
        """Take the costliest claimable trial (MACs per image x epochs; the oldest among equals) of ``only``
        (identities) when given; None when there is none. Longest first: N workers sharing the queue then finish
        together (longest-processing-time packing, what the study estimate assumes), instead of one worker
        starting the largest trial when the others are nearly done."""
        cond = [TrialRow.study == self.study, TrialRow.status.in_(CLAIMABLE)]
        if only is not None:
            cond.append(TrialRow.identity.in_(sorted(only)))
        cost = (TrialRow.macs * TrialRow.epochs).desc()
        oldest = select(TrialRow.id).where(*cond).order_by(cost, TrialRow.id).limit(1).scalar_subquery()
        stmt = (update(TrialRow).where(TrialRow.id == oldest, TrialRow.status.in_(CLAIMABLE))
                .values(status=st.RUNNING, worker=self.worker, host=self.host, attempts=TrialRow.attempts + 1,
                        lease_until=self.now(self.lease), heartbeat_at=self.now(), started_at=st.utc_now(),
                        finished_at=None).returning(TrialRow.id))

        def go() -> int | None:
            for _ in range(100):  # losing a race to another worker: try the next row
                with self.store.session() as s:
                    got = s.execute(stmt).scalar()
                    if got is not None or not s.scalar(select(exists().where(*cond))):
                        return got
            return None

        got = self.store.retry(go, "claiming a trial")
        return None if got is None else self.get(got)

    def insert_claimed(self, fields: dict[str, Any]) -> TrialRow | None:
        """Insert a sampled trial already claimed by this worker; None if the study has this identity already."""
        from sqlalchemy.exc import IntegrityError

        def go() -> int | None:
            try:
                with self.store.session() as s:
                    row = TrialRow(**fields, status=st.RUNNING, worker=self.worker, host=self.host, attempts=1,
                                   started_at=st.utc_now())
                    s.add(row)
                    s.flush()
                    s.execute(update(TrialRow).where(TrialRow.id == row.id).values(
                        lease_until=self.now(self.lease), heartbeat_at=self.now()))
                    return row.id
            except IntegrityError:
                return None

        got = self.store.retry(go, "recording a sampled trial")
        return None if got is None else self.get(got)

    def renew(self, row_id: int) -> bool:
        """Extend this worker's lease; False when the trial is no longer ours (its lease ran out and another
        worker re-queued or took it)."""
        return self._run(update(TrialRow).where(*self._mine(row_id)).values(
            lease_until=self.now(self.lease), heartbeat_at=self.now()), "renewing a lease") == 1

    def _mine(self, row_id: int) -> list[Any]:
        return [TrialRow.id == row_id, TrialRow.status == st.RUNNING, TrialRow.worker == self.worker]

    def release(self, row_id: int, status: str, reason: str) -> bool:
        """Put our running trial back (queued or interrupted), with why; it keeps its epochs and last.pt."""
        return self._run(update(TrialRow).where(*self._mine(row_id)).values(
            status=status, fail_reason=reason[:2000], worker=None, lease_until=None, queued_at=st.utc_now()),
            f"putting a trial back ({status})") == 1

    def finish(self, row_id: int, status: str, **values: Any) -> bool:
        """Move our running trial to a terminal state, with its results; False if it is not ours any more."""
        return self._run(update(TrialRow).where(*self._mine(row_id)).values(
            status=status, finished_at=st.utc_now(), lease_until=None, **values), f"finishing a trial ({status})") == 1

    def note(self, row_id: int, **values: Any) -> None:
        """Facts a trial learns while it runs (the data copy it read, its image counts, its Optuna number)."""
        self._run(update(TrialRow).where(TrialRow.id == row_id).values(**values), "updating a trial")

    def record_epoch(self, row_id: int, metrics: dict[str, Any]) -> None:
        """Insert or replace the row of one epoch (a resumed trial rewrites the epochs it repeats)."""

        def go() -> None:
            with self.store.session() as s:
                row = s.scalars(select(st.EpochRow).where(st.EpochRow.trial_id == row_id,
                                                          st.EpochRow.epoch == metrics["epoch"])).first()
                if row is None:
                    s.add(st.EpochRow(trial_id=row_id, **metrics))
                else:
                    for k, v in metrics.items():
                        setattr(row, k, v)
                s.execute(update(TrialRow).where(TrialRow.id == row_id).values(epochs_done=metrics["epoch"]))

        self.store.retry(go, "recording an epoch")

    def requeue_expired(self) -> int:
        """Every running trial of the study whose lease ran out goes back to the queue (the next claim of it
        counts as attempt + 1 and resumes from its last.pt)."""
        n = self._run(update(TrialRow).where(
            TrialRow.study == self.study, TrialRow.status == st.RUNNING,
            or_(TrialRow.lease_until.is_(None), TrialRow.lease_until < self.now())).values(
            status=st.QUEUED, lease_until=None, queued_at=st.utc_now(),
            fail_reason="re-queued: its worker stopped renewing the lease (killed, or its host lost)"),
            "re-queueing expired trials")
        if n:
            log.warning("%d trial%s of %s lost %s worker (lease expired); re-queued", n, "s" * (n > 1),
                        self.study, "their" if n > 1 else "its")
        return n

    def retry_failed(self) -> int:
        """retry_failed=true: failed trials go back to the queue (their next result is recorded anew)."""
        return self._run(update(TrialRow).where(TrialRow.study == self.study, TrialRow.status == st.FAILED).values(
            status=st.QUEUED, queued_at=st.utc_now(), recorded_at=None,
            fail_reason=TrialRow.fail_reason.concat(" (re-queued by retry_failed=true)")), "re-queueing failed trials")

    def requeue_failed(self, ids: list[int], reason: str) -> int:
        """Failed trials ``ids`` back to the queue, to be recorded anew when they finish."""
        if not ids:
            return 0
        return self._run(update(TrialRow).where(TrialRow.id.in_(ids), TrialRow.status == st.FAILED).values(
            status=st.QUEUED, queued_at=st.utc_now(), recorded_at=None, fail_reason=reason), "re-queueing trials")

    # -- recording in Optuna exactly once ------------------------------------------------------------------------
    def mark_recorded(self, row_id: int) -> bool:
        """Compare-and-set: True for exactly one caller per finished trial (the one that records it)."""
        return self._run(update(TrialRow).where(TrialRow.id == row_id, TrialRow.recorded_at.is_(None),
                                                TrialRow.status.in_(st.TERMINAL))
                         .values(recorded_at=st.utc_now()), "marking a trial recorded") == 1

    def unmark_recorded(self, row_id: int) -> None:
        self._run(update(TrialRow).where(TrialRow.id == row_id).values(recorded_at=None), "unmarking a trial")



class Lease(threading.Thread):
    """Renews one claimed trial's lease every ``interval`` seconds until stopped. ``lost`` is set when the trial
    is no longer ours; the training loop checks it after each epoch and drops the trial."""

    def __init__(self, queue: Queue, row_id: int, interval: float) -> None:
        super().__init__(daemon=True, name=f"lease-{row_id}")
        self.queue, self.row_id, self.interval = queue, row_id, float(interval)
        self.lost = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                if not self.queue.renew(self.row_id):
                    self.lost.set()
                    return
            except Exception as e:  # noqa: BLE001 - an outage: keep trying; the lease decides who owns the trial
                log.warning("could not renew the lease of trial %d: %s", self.row_id,
                            first_line(e))

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5)
