"""Naming the store: one URL rule for every command, passwords kept out of files and logs, SQLite paths checked."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url

from dse.common import ROOT
from dse.store.schema import StoreError

DEFAULT_URL = "sqlite:///results/dse.db"
BACKENDS = ("sqlite", "postgresql")


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
        parsed = parsed.set(database=str(ROOT / parsed.database))
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


DEFAULT_DIR = ROOT / "results"  # the default store's folder: the only one a command creates by itself


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
