"""The results store: our own SQLAlchemy schema beside Optuna's tables (DESIGN.md decision 4).

Optuna's tables schedule; ours record. One row per trial (its identity hash, the semantic config, status,
accuracies, cheap facts, timings, provenance) and one row per epoch. Tables, figures and deployment read only
these. The same database URL serves both (SQLite file for one worker, PostgreSQL for many).

Every write is one transaction: a crash never leaves a half-written trial. The schema version is recorded in
``dse_meta``; a database written by a newer ``dse`` is refused instead of being silently misread.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pandas as pd
from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from dse.errors import DSEError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# Trial states in our store. Terminal: complete, pruned, failed, rejected. "queued" = enqueued in Optuna,
# "interrupted" = stopped by Ctrl-C (re-enqueued on the next start), "running" = claimed by a worker.
PLANNED, QUEUED, RUNNING, COMPLETE, PRUNED, FAILED, REJECTED, INTERRUPTED = (
    "planned", "queued", "running", "complete", "pruned", "failed", "rejected", "interrupted")
TERMINAL = (COMPLETE, PRUNED, FAILED, REJECTED)


class StoreError(DSEError):
    """The results database cannot be used (unreachable, newer schema, bad URL)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "dse_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class TrialRow(Base):
    """One trial of one study, identified by the hash of its resolved semantic config + seed."""

    __tablename__ = "dse_trials"
    __table_args__ = (UniqueConstraint("study", "identity", name="uq_dse_trials_study_identity"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study: Mapped[str] = mapped_column(String(200), index=True)
    identity: Mapped[str] = mapped_column(String(64))
    optuna_trial_number: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # what was trained
    model_name: Mapped[str] = mapped_column(String(120), index=True)  # registry name: the join key
    arch: Mapped[str] = mapped_column(String(40))
    stage_depths: Mapped[str | None] = mapped_column(String(40))  # "1-2-8-1"
    width: Mapped[float] = mapped_column(Float)
    dropout: Mapped[float] = mapped_column(Float)
    activation: Mapped[str] = mapped_column(String(16))
    num_classes: Mapped[int] = mapped_column(Integer)
    optimizer: Mapped[str] = mapped_column(String(32))
    lr: Mapped[float | None] = mapped_column(Float)
    schedule: Mapped[str] = mapped_column(String(16))
    dataset: Mapped[str] = mapped_column(String(32))
    data_source: Mapped[str | None] = mapped_column(Text)  # which copy, e.g. imagefolder:/.../cifar10-jpg
    data_fraction: Mapped[float] = mapped_column(Float)  # fraction of the (train minus val) images used
    train_images: Mapped[int | None] = mapped_column(Integer)
    test_images: Mapped[int | None] = mapped_column(Integer)  # the whole test set unless the budget subsets it
    epochs: Mapped[int] = mapped_column(Integer)
    batch_size: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer)
    # outcome
    status: Mapped[str] = mapped_column(String(16), index=True)
    fail_reason: Mapped[str | None] = mapped_column(Text)
    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    best_epoch: Mapped[int | None] = mapped_column(Integer)
    best_val_acc: Mapped[float | None] = mapped_column(Float)  # percent
    final_val_acc: Mapped[float | None] = mapped_column(Float)
    test_acc: Mapped[float | None] = mapped_column(Float)  # test accuracy at the best-validation epoch
    final_test_acc: Mapped[float | None] = mapped_column(Float)
    # cheap facts (known before training)
    params: Mapped[int] = mapped_column(BigInteger)
    macs: Mapped[int] = mapped_column(BigInteger)  # per 32x32 image
    checkpoint_bytes: Mapped[int] = mapped_column(BigInteger)  # the paper's "model size"
    int8_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # the paper's "model speed"
    sec_per_epoch: Mapped[float | None] = mapped_column(Float)
    device: Mapped[str | None] = mapped_column(String(120))
    precision: Mapped[str | None] = mapped_column(String(16))
    torch_version: Mapped[str | None] = mapped_column(String(40))
    git_commit: Mapped[str | None] = mapped_column(String(64))
    host: Mapped[str | None] = mapped_column(String(200))
    worker: Mapped[str | None] = mapped_column(String(200))  # "host:pid" of the process that ran it last
    config_json: Mapped[str] = mapped_column(Text)
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)
    queued_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class EpochRow(Base):
    __tablename__ = "dse_epochs"
    __table_args__ = (UniqueConstraint("trial_id", "epoch", name="uq_dse_epochs_trial_epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("dse_trials.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)  # 1-based
    train_loss: Mapped[float | None] = mapped_column(Float)
    train_acc: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_acc: Mapped[float | None] = mapped_column(Float)
    test_acc: Mapped[float | None] = mapped_column(Float)
    lr: Mapped[float | None] = mapped_column(Float)
    train_seconds: Mapped[float | None] = mapped_column(Float)
    eval_seconds: Mapped[float | None] = mapped_column(Float)


class DeploymentRow(Base):
    """One exported model measured as an embedded target would (batch 1, one thread)."""

    __tablename__ = "dse_deployments"
    __table_args__ = (UniqueConstraint("trial_id", "model_name", "format", "host",
                                       name="uq_dse_deployments_trial_format_host"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trial_id: Mapped[int | None] = mapped_column(ForeignKey("dse_trials.id", ondelete="SET NULL"), index=True)
    model_name: Mapped[str] = mapped_column(String(120))
    format: Mapped[str] = mapped_column(String(32))  # torch, torchscript, onnx, onnx_int8
    path: Mapped[str | None] = mapped_column(Text)
    file_bytes: Mapped[int | None] = mapped_column(BigInteger)
    test_acc: Mapped[float | None] = mapped_column(Float)
    test_images: Mapped[int | None] = mapped_column(Integer)
    max_abs_diff: Mapped[float | None] = mapped_column(Float)
    p50_ms: Mapped[float | None] = mapped_column(Float)
    p99_ms: Mapped[float | None] = mapped_column(Float)
    peak_mem_bytes: Mapped[int | None] = mapped_column(BigInteger)
    threads: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(String(200))
    machine: Mapped[str | None] = mapped_column(Text)  # CPU model etc.
    runtime: Mapped[str | None] = mapped_column(String(80))  # e.g. onnxruntime 1.31.1
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_now)


T = TypeVar("T")


def redact(url: str) -> str:
    """The URL with its password hidden: what logs and errors may show."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: show nothing secret-looking
        return "<unparsable database URL>"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; persistent in the file
    cur.execute("PRAGMA busy_timeout=60000")  # milliseconds: wait for a lock instead of failing
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the settings our workload needs (WAL + busy timeout on SQLite)."""
    try:
        parsed = make_url(url)
    except Exception as e:
        raise StoreError(f"storage URL {url!r} is not a database URL; expected e.g. "
                         "sqlite:///results/dse.db or postgresql+psycopg://user@host/db") from e
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if db and db != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(db)), exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    return create_engine(url, pool_pre_ping=True)


def with_retries(fn: Callable[[], T], *, what: str, retries: int = 5, backoff: float = 0.5,
                 url: str = "") -> T:
    """Run ``fn``, retrying database outages (OperationalError) with exponential backoff, then a clear error."""
    delay = backoff
    for attempt in range(retries + 1):
        try:
            return fn()
        except OperationalError as e:
            if attempt == retries:
                msg = str(e.orig).strip().splitlines()[0] if e.orig else str(e).splitlines()[0]
                raise StoreError(f"{what}: database {redact(url)} unreachable after {retries + 1} attempts "
                                 f"({msg})") from e
            log.warning("%s: database unavailable (%s); retry %d/%d in %.1f s", what,
                        type(e.orig).__name__ if e.orig else "OperationalError", attempt + 1, retries, delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")


@contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """Serialise schema creation between workers starting at once (PostgreSQL advisory lock; CREATE TABLE
    racing CREATE TABLE fails there). SQLite needs nothing: its writes are serialised by the file lock."""
    if not url.startswith("postgresql"):
        yield
        return
    from sqlalchemy import text

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _SCHEMA_LOCK_KEY})
                conn.commit()
    finally:
        engine.dispose()


_SCHEMA_LOCK_KEY = 0x64736531  # "dse1"


class Store:
    """Read/write access to our tables. Cheap to create; one per process is plenty."""

    def __init__(self, url: str, *, retries: int = 5, backoff: float = 0.5, create: bool = True) -> None:
        self.url = url
        self.retries, self.backoff = retries, backoff
        self.engine = make_engine(url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._retry(lambda: self._init_schema(create), "opening the results store")

    # -- plumbing -----------------------------------------------------------------------------------------
    def _retry(self, fn: Callable[[], T], what: str) -> T:
        return with_retries(fn, what=what, retries=self.retries, backoff=self.backoff, url=self.url)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any error."""
        with self._session() as s, s.begin():
            yield s

    def _init_schema(self, create: bool) -> None:
        with self.engine.connect() as conn:
            has_meta = self.engine.dialect.has_table(conn, Meta.__tablename__)
            if has_meta:
                row = conn.execute(select(Meta.value).where(Meta.key == "schema_version")).scalar()
                if row is not None and int(row) > SCHEMA_VERSION:
                    raise StoreError(
                        f"results database {redact(self.url)} has schema version {row}, newer than this "
                        f"dse supports ({SCHEMA_VERSION}); upgrade dse (nothing was changed)")
        if not create:
            return
        Base.metadata.create_all(self.engine)
        with self.session() as s:
            if s.get(Meta, "schema_version") is None:
                try:
                    with s.begin_nested():
                        s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                except IntegrityError:  # another worker wrote it first
                    pass

    def schema_version(self) -> int:
        with self.session() as s:
            m = s.get(Meta, "schema_version")
            return int(m.value) if m else 0

    def dispose(self) -> None:
        self.engine.dispose()

    # -- writes used by the sweep ---------------------------------------------------------------------------
    def plan(self, study: str, identity: str, fields: dict[str, Any]) -> bool:
        """Insert a planned trial; False if (study, identity) is already there (another worker planned it)."""

        def go() -> bool:
            try:
                with self.session() as s:
                    s.add(TrialRow(study=study, identity=identity, status=PLANNED, **fields))
                return True
            except IntegrityError:
                return False

        return self._retry(go, "planning a trial")

    def transition(self, study: str, identity: str, to: str, *, only_from: tuple[str, ...],
                   optuna_number: Any = ..., **values: Any) -> bool:
        """Atomically move a trial to state ``to`` if it is in one of ``only_from`` (compare-and-set).

        This is how workers agree without locks: of two workers racing to enqueue or claim the same trial,
        exactly one sees rowcount 1. ``optuna_number`` (when given) must also match the row's Optuna trial.
        """

        def go() -> bool:
            cond = [TrialRow.study == study, TrialRow.identity == identity, TrialRow.status.in_(only_from)]
            if optuna_number is not ...:
                cond.append(TrialRow.optuna_trial_number.is_(None) if optuna_number is None
                            else TrialRow.optuna_trial_number == optuna_number)
            with self.session() as s:
                res = s.execute(update(TrialRow).where(*cond).values(status=to, **values))
                return res.rowcount == 1

        return self._retry(go, f"moving a trial to {to}")

    def get(self, study: str, identity: str) -> TrialRow | None:
        def go() -> TrialRow | None:
            with self.session() as s:
                return s.scalars(select(TrialRow).where(TrialRow.study == study,
                                                        TrialRow.identity == identity)).first()

        return self._retry(go, "reading a trial")

    def rows(self, study: str) -> list[TrialRow]:
        def go() -> list[TrialRow]:
            with self.session() as s:
                return list(s.scalars(select(TrialRow).where(TrialRow.study == study).order_by(TrialRow.id)))

        return self._retry(go, "reading the study's trials")

    def count(self, study: str, statuses: tuple[str, ...]) -> int:
        def go() -> int:
            with self.session() as s:
                return int(s.scalar(select(func.count()).select_from(TrialRow)
                                    .where(TrialRow.study == study, TrialRow.status.in_(statuses))) or 0)

        return self._retry(go, "counting trials")

    def record_epoch(self, trial_id: int, metrics: dict[str, Any]) -> None:
        """Insert or replace the row of one epoch (a resumed trial rewrites the epochs it repeats)."""

        def go() -> None:
            with self.session() as s:
                row = s.scalars(select(EpochRow).where(EpochRow.trial_id == trial_id,
                                                       EpochRow.epoch == metrics["epoch"])).first()
                if row is None:
                    s.add(EpochRow(trial_id=trial_id, **metrics))
                else:
                    for k, v in metrics.items():
                        setattr(row, k, v)
                s.execute(update(TrialRow).where(TrialRow.id == trial_id)
                          .values(epochs_done=metrics["epoch"]))

        self._retry(go, "recording an epoch")

    def update_trial(self, trial_id: int, **values: Any) -> None:
        def go() -> None:
            with self.session() as s:
                s.execute(update(TrialRow).where(TrialRow.id == trial_id).values(**values))

        self._retry(go, "updating a trial")

    def record_deployment(self, **values: Any) -> None:
        """Insert or replace the measurement of one (trial, model, format, host)."""

        def go() -> None:
            with self.session() as s:
                row = s.scalars(select(DeploymentRow).where(
                    DeploymentRow.trial_id == values.get("trial_id"),
                    DeploymentRow.model_name == values["model_name"],
                    DeploymentRow.format == values["format"],
                    DeploymentRow.host == values["host"])).first()
                if row is None:
                    s.add(DeploymentRow(**values))
                else:
                    for k, v in values.items():
                        setattr(row, k, v)
                    row.created_at = _now()

        self._retry(go, "recording a deployment")

    # -- the query API: pandas DataFrames for tables, plots and deployment -------------------------------
    def _frame(self, stmt: Any) -> pd.DataFrame:
        def go() -> pd.DataFrame:
            with self.engine.connect() as conn:
                return pd.read_sql(stmt, conn)

        return self._retry(go, "querying the results store")

    def trials(self, study: str | list[str] | None = None, status: str | tuple[str, ...] | None = None
               ) -> pd.DataFrame:
        """Trials as a DataFrame (one row per trial, every column of ``dse_trials``)."""
        stmt = select(TrialRow.__table__)
        if study is not None:
            studies = [study] if isinstance(study, str) else list(study)
            stmt = stmt.where(TrialRow.study.in_(studies))
        if status is not None:
            statuses = (status,) if isinstance(status, str) else tuple(status)
            stmt = stmt.where(TrialRow.status.in_(statuses))
        return self._frame(stmt.order_by(TrialRow.id))

    def epochs(self, trial_ids: list[int] | None = None, study: str | None = None) -> pd.DataFrame:
        """Per-epoch metrics, with the trial's study, identity and model name joined in."""
        t, e = TrialRow.__table__, EpochRow.__table__
        stmt = select(e, t.c.study, t.c.identity, t.c.model_name).join(t, t.c.id == e.c.trial_id)
        if trial_ids is not None:
            stmt = stmt.where(e.c.trial_id.in_([int(i) for i in trial_ids]))
        if study is not None:
            stmt = stmt.where(t.c.study == study)
        return self._frame(stmt.order_by(e.c.trial_id, e.c.epoch))

    def deployments(self, trial_ids: list[int] | None = None) -> pd.DataFrame:
        stmt = select(DeploymentRow.__table__)
        if trial_ids is not None:
            stmt = stmt.where(DeploymentRow.trial_id.in_([int(i) for i in trial_ids]))
        return self._frame(stmt.order_by(DeploymentRow.id))

    def studies(self) -> list[str]:
        def go() -> list[str]:
            with self.session() as s:
                return list(s.scalars(select(TrialRow.study).distinct().order_by(TrialRow.study)))

        return self._retry(go, "listing studies")


def config_json(cfg: dict[str, Any]) -> str:
    return json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str)


__all__ = [
    "COMPLETE", "DeploymentRow", "EpochRow", "FAILED", "INTERRUPTED", "PLANNED", "PRUNED", "QUEUED",
    "REJECTED", "RUNNING", "SCHEMA_VERSION", "Store", "StoreError", "SQLAlchemyError", "TERMINAL", "TrialRow",
    "config_json", "make_engine", "redact", "with_retries",
]
