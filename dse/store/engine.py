"""The engine and its faults: SQLite settings, what counts as an outage, retries with backoff, the schema lock."""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DatabaseError, OperationalError

from dse.errors import first_line
from dse.faults import DiskFullError, disk_full
from dse.store.schema import StoreError
from dse.store.url import check_sqlite_file, redact, sqlite_file

log = logging.getLogger("dse.store")

T = TypeVar("T")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; persistent in the file
    cur.execute("PRAGMA busy_timeout=60000")  # milliseconds: wait for a lock instead of failing
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


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
