"""The results store: our own SQLAlchemy schema beside Optuna's tables (docs/design.md, "Trial state").

``dse_trials`` is the one owner of trial state: the queue the workers claim from (with a lease on the database's
clock) and the record tables, figures and deployment read. Optuna's tables, in the same database, are the
sampler's memory and what optuna-dashboard shows. One row per trial (its identity hash, the semantic config,
status, accuracies, cheap facts, timings, provenance) and one row per epoch. ``resolve_url`` is the one way
every command names the store (``storage.url``/``--db``, else ``$DSE_STORAGE_URL``, else the SQLite default,
relative SQLite paths taken from the repository root).

Every write is one transaction: a crash never leaves a half-written trial. The schema version is recorded in
``dse_meta``; a database written by a newer ``dse`` is refused instead of being silently misread.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
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
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from dse.common import REPO
from dse.errors import DSEError, first_line
from dse.faults import DiskFullError, disk_full

log = logging.getLogger(__name__)

# 2: the queue columns lease_until, heartbeat_at, recorded_at; 3: data_fingerprint (added in place to older files)
SCHEMA_VERSION = 3
DEFAULT_URL = "sqlite:///results/dse.db"
BACKENDS = ("sqlite", "postgresql")

# Trial states in our store. Terminal: complete, pruned, failed, rejected. "queued" = waiting for a worker,
# "interrupted" = stopped by Ctrl-C/SIGTERM (claimable like queued), "running" = claimed under a lease.
# "planned" is only found in stores written by older versions (treated like queued).
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
    data_fingerprint: Mapped[str | None] = mapped_column(String(64))  # its files (dse/sweep/datacheck.py)
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
    # the settings that ran (auto ones as decided on that machine): compare speeds only like for like
    threads: Mapped[int | None] = mapped_column(Integer)
    fast_path: Mapped[str | None] = mapped_column(String(16))  # graph | compile | eager
    memory_format: Mapped[str | None] = mapped_column(String(16))  # nchw | channels_last
    warmup_seconds: Mapped[float | None] = mapped_column(Float)  # capture / compilation, not in sec_per_epoch
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
    # the queue (written with the database's clock, compared in SQL: the hosts' clocks never matter)
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime)  # a running trial past this is re-queued
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    recorded_at: Mapped[dt.datetime | None] = mapped_column(DateTime)  # its result reached Optuna (set once)


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


def url_password(url: str | None) -> str | None:
    """The password written inside a database URL, if any (what must never reach a file or a log)."""
    if not url:
        return None
    try:
        return make_url(url).password
    except Exception:
        return None


def password_refusal(url: str, setting: str = "storage.url") -> StoreError:
    """The error for a password inside a URL: where it would end up, and the two ways to pass it instead."""
    return StoreError(f"{setting} {redact(url)} has a password in it, and the run folder's .hydra/*.yaml would keep "
                      "it in plain text; give the URL without it and pass the password through $DSE_DB_PASSWORD or "
                      "storage.password_file=PATH")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; persistent in the file
    cur.execute("PRAGMA busy_timeout=60000")  # milliseconds: wait for a lock instead of failing
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def resolve_url(url: str | None = None, *, url_env: str = "DSE_STORAGE_URL", password_env: str = "DSE_DB_PASSWORD",
                password_file: str | None = None, backend: str | None = None) -> str:
    """The one way every command names the store: ``url`` (``storage.url``, ``--db``), else ``$<url_env>``, else
    ``sqlite:///results/dse.db``. A relative SQLite path is taken from the repository root, whatever the working
    directory, so the sweep, the tables, deployment and the dashboard open the same file. The password comes from
    ``$<password_env>`` or ``password_file`` (never a command line). ``backend`` (e.g. "postgresql" for
    ``storage=postgres``) refuses a URL of another kind instead of quietly using it."""
    given = url or os.environ.get(url_env) or None
    if given is None and backend not in (None, "sqlite"):
        raise StoreError(f"storage backend {backend} needs a URL: set storage.url=... or ${url_env} "
                         "(e.g. postgresql+psycopg://dse@db-host:5432/dse); refusing to fall back to SQLite")
    raw = given or DEFAULT_URL
    try:
        parsed = make_url(raw)
    except Exception:
        raise StoreError(f"storage URL {redact(raw)} is not a database URL; allowed: sqlite:///path.db or "
                         "postgresql+psycopg://user@host:port/db") from None
    name = parsed.get_backend_name()
    if name not in BACKENDS:
        raise StoreError(f"storage URL {redact(raw)}: backend {name!r} is not supported; allowed: sqlite, postgresql")
    if backend is not None and name != backend:
        raise StoreError(f"storage backend {backend} was asked for but the URL {redact(raw)} is {name}; "
                         f"set storage.url or ${url_env} to a {backend} URL")
    if name == "sqlite" and parsed.database and parsed.database != ":memory:" and not os.path.isabs(parsed.database):
        parsed = parsed.set(database=str(REPO / parsed.database))
    if parsed.password is None and name != "sqlite":
        password = os.environ.get(password_env)
        if password is None and password_file:
            pf = os.path.expanduser(password_file)
            if not os.path.isfile(pf):
                raise StoreError(f"storage.password_file {pf} does not exist")
            with open(pf) as f:
                password = f.read().strip()
        if password is not None:
            parsed = parsed.set(password=password)
    return parsed.render_as_string(hide_password=False)


def sqlite_file(url: str) -> str | None:
    """The database file of a SQLite URL (None for PostgreSQL, in-memory SQLite or an unparsable URL)."""
    try:
        parsed = make_url(url)
    except Exception:
        return None
    db = parsed.database
    return db if parsed.get_backend_name() == "sqlite" and db and db != ":memory:" else None


DEFAULT_DIR = REPO / "results"  # the default store's folder: the only one a command creates by itself


def check_sqlite_file(url: str, *, create: bool) -> None:
    """StoreError (one line naming the path and what to do) for a SQLite path that cannot be the store: under a
    regular file, a folder, in a folder that does not exist (a typo; only the default results/ is created); or,
    unless ``create``, not there at all (reading commands never create a store)."""
    file = sqlite_file(url)
    if file is None:
        return
    p = Path(file)
    above = next(a for a in p.parents if a.exists())  # "/" exists
    if not above.is_dir():
        raise StoreError(f"store path {p} is under {above}, which is a file, not a folder; point storage.url (or "
                         "--db) at a file in a folder")
    if p.is_dir():
        raise StoreError(f"store path {p} is a folder; point storage.url (or --db) at a database file in it, "
                         f"e.g. sqlite:///{p / 'dse.db'}")
    if not p.exists():
        if not create:
            raise StoreError(f"no results store at {p}; run `python -m dse.sweep` first, or pass --db URL / set "
                             "DSE_STORAGE_URL to the sweep's store")
        if not p.parent.is_dir() and p.parent != DEFAULT_DIR:
            raise StoreError(f"store path {p}: its folder does not exist (a typo?); create it (mkdir -p "
                             f"{p.parent}) or fix storage.url")
        return
    # not read here: closing any descriptor of a database file drops this process's POSIX locks on it, also
    # SQLite's own (measured: another process then checkpointed and deleted the WAL under a running sweep). A
    # file that is not a database is said by Store when SQLite opens it (SQLITE_NOTADB).


def unreadable_store(url: str, e: DatabaseError) -> StoreError:
    why = first_line(e.orig or e)
    if getattr(e.orig, "sqlite_errorcode", None) == 26:  # SQLITE_NOTADB
        return StoreError(f"{sqlite_file(url)} is not a SQLite database ({why}); point storage.url (or --db) at a "
                          "dse store, or move the file away")
    return StoreError(f"results store {redact(url)} cannot be read ({why}); restore it from a backup or point "
                      "storage.url (or --db) at another file")


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the settings our workload needs (WAL + busy timeout on SQLite)."""
    try:
        parsed = make_url(url)
    except Exception as e:
        raise StoreError(f"storage URL {redact(url)} is not a database URL; expected e.g. "
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
    raise StoreError(f"storage URL {redact(url)}: backend {parsed.get_backend_name()!r} is not supported; "
                     "allowed: sqlite, postgresql")


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


# SQLite's primary codes that waiting cannot cure: SQLITE_PERM, SQLITE_READONLY, SQLITE_CORRUPT, SQLITE_CANTOPEN,
# SQLITE_NOTADB. Others pass: BUSY/LOCKED (another process holds the lock), and IOERR, which a reader in another
# process can cause for a moment in WAL mode (measured: "disk I/O error" on an epoch write, gone on the retry).
SQLITE_PERSISTENT = (3, 8, 11, 14, 26)


def sqlite_may_pass(outage: OperationalError) -> bool:
    """False for a SQLite error that is the file's own state (cannot be opened, read-only, damaged): retrying it
    20 times as an outage only delays the one line. PostgreSQL's errors always may pass."""
    code = getattr(outage.orig, "sqlite_errorcode", None)
    return code is None or code & 0xFF not in SQLITE_PERSISTENT  # the low byte is the primary code


def _orig_line(e: OperationalError) -> str:
    return first_line(e.orig or e)


def with_retries(fn: Callable[[], T], *, what: str, retries: int = 5, backoff: float = 0.5,
                 url: str = "") -> T:
    """Run ``fn``, retrying database outages (an OperationalError anywhere in the exception's chain, also when
    Optuna wrapped it) with exponential backoff (seconds, capped at 30), then one clear StoreError."""
    if retries < 0:
        raise StoreError(f"storage.retries={retries} must be >= 0 (reconnection attempts after an outage)")
    delay = backoff
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as e:
            if disk_full(e):  # waiting does not free a disk: say it now, with where
                file = sqlite_file(url)
                raise DiskFullError(file, f"the results store could not write ({what})" if file else
                                    f"the database server {redact(url)} has no room ({what})") from e
            outage = db_outage(e)
            if outage is None:
                raise
            if not sqlite_may_pass(outage):
                raise StoreError(f"results store {sqlite_file(url)}: {_orig_line(outage)} ({what}); this is the "
                                 "file's own state, not an outage (check the file and its folder's permissions)") from e
            if attempt == retries:
                raise StoreError(f"{what}: database {redact(url)} unreachable after {retries + 1} attempts "
                                 f"({_orig_line(outage)})") from e
            log.warning("%s: database unavailable (%s); retry %d/%d in %.1f s", what,
                        type(outage.orig).__name__ if outage.orig else "OperationalError", attempt + 1, retries,
                        delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
    raise StoreError(f"{what}: no attempt was made")  # not reached: the loop returns or raises


@contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """Serialise schema creation (ours and Optuna's, whose alembic_version insert races) between workers that
    start at once: a PostgreSQL advisory lock, or on SQLite an exclusive lock on a file beside the database."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            yield
            return
        check_sqlite_file(url, create=True)
        lock_path = os.path.abspath(parsed.database) + ".lock"
        os.makedirs(os.path.dirname(lock_path), exist_ok=True)  # only the default folder gets this far missing
        with open(lock_path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
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
        check_sqlite_file(url, create=create)
        self.engine = make_engine(url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        try:
            self._retry(lambda: self._init_schema(create), "opening the results store")
        except DatabaseError as e:  # not a database, or a damaged one: not an outage, and not ours to repair
            raise unreadable_store(url, e) from e

    # -- plumbing -----------------------------------------------------------------------------------------
    def retry(self, fn: Callable[[], T], what: str) -> T:
        """``with_retries`` with this store's URL and settings."""
        return with_retries(fn, what=what, retries=self.retries, backoff=self.backoff, url=self.url)

    _retry = retry

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
            if self.engine.dialect.has_table(conn, TrialRow.__tablename__):
                _add_missing_columns(conn)
        if not create:
            return
        Base.metadata.create_all(self.engine)
        with self.session() as s:
            meta = s.get(Meta, "schema_version")
            if meta is not None and int(meta.value) < SCHEMA_VERSION:  # its columns were added above
                meta.value = str(SCHEMA_VERSION)
            if meta is None:
                try:
                    with s.begin_nested():
                        s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                except IntegrityError:  # another worker wrote it first
                    pass

    def insert_missing(self, rows: list[dict[str, Any]]) -> int:
        """Insert the trial rows whose (study, identity) is not there yet, in one transaction; how many were new.
        Workers planning the same study at once insert each row once (the unique constraint decides)."""
        if not rows:
            return 0
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert

        def go() -> int:
            with self.session() as s:
                res = s.execute(insert(TrialRow).on_conflict_do_nothing(
                    index_elements=["study", "identity"]).returning(TrialRow.id), rows)
                return len(res.all())

        return self._retry(go, "planning the study's trials")

    def schema_version(self) -> int:
        with self.session() as s:
            m = s.get(Meta, "schema_version")
            return int(m.value) if m else 0

    def dispose(self) -> None:
        self.engine.dispose()

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


def _add_missing_columns(conn: Any) -> None:
    """Bring a version-1 ``dse_trials`` up to date: the queue columns are nullable, so adding them is all."""
    from sqlalchemy import inspect, text

    have = {c["name"] for c in inspect(conn).get_columns(TrialRow.__tablename__)}
    missing = [c for c in TrialRow.__table__.columns if c.name not in have]
    for col in missing:
        ddl = col.type.compile(dialect=conn.dialect)
        conn.execute(text(f"ALTER TABLE {TrialRow.__tablename__} ADD COLUMN {col.name} {ddl}"))
    if missing:
        conn.commit()
        log.info("results store: added columns %s to %s", ", ".join(c.name for c in missing),
                 TrialRow.__tablename__)


def config_json(cfg: dict[str, Any]) -> str:
    return json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str)


__all__ = [
    "COMPLETE", "DeploymentRow", "EpochRow", "FAILED", "INTERRUPTED", "PLANNED", "PRUNED", "QUEUED",
    "REJECTED", "RUNNING", "SCHEMA_VERSION", "Store", "StoreError", "SQLAlchemyError", "TERMINAL", "TrialRow",
    "config_json", "db_outage", "make_engine", "redact", "resolve_url", "schema_lock", "with_retries",
]
