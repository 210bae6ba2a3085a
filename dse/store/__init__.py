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

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
from sqlalchemy import select, update
from sqlalchemy.exc import DatabaseError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dse.store.engine import T, db_outage, make_engine, schema_lock, unreadable_store, with_retries
from dse.store.schema import (
    COMPLETE,
    FAILED,
    INTERRUPTED,
    PLANNED,
    PRUNED,
    QUEUED,
    REJECTED,
    RUNNING,
    SCHEMA_VERSION,
    TERMINAL,
    DeploymentRow,
    EpochRow,
    Meta,
    StoreError,
    TrialRow,
    init_schema,
    trial_name,
    utc_now,
)
from dse.store.url import DEFAULT_URL, check_sqlite_file, password_refusal, redact, resolve_url, url_password


class Store:
    """Read/write access to our tables. Cheap to create; one per process is plenty."""

    def __init__(self, url: str, *, retries: int = 5, backoff: float = 0.5, create: bool = True) -> None:
        self.url = url
        self.retries, self.backoff = retries, backoff
        check_sqlite_file(url, create=create)
        self.engine = make_engine(url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        try:
            self._retry(lambda: init_schema(self.engine, redact(url), self._session, create=create),
                        "opening the results store")
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

    def update_trial(self, trial_id: int, **values: Any) -> None:
        def go() -> None:
            with self.session() as s:
                s.execute(update(TrialRow).where(TrialRow.id == trial_id).values(**values))

        self._retry(go, "updating a trial")

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
    "COMPLETE", "DEFAULT_URL", "DeploymentRow", "EpochRow", "FAILED", "INTERRUPTED", "PLANNED", "PRUNED", "QUEUED",
    "REJECTED", "RUNNING", "SCHEMA_VERSION", "Store", "StoreError", "SQLAlchemyError", "TERMINAL", "TrialRow",
    "config_json", "db_outage", "make_engine", "password_refusal", "redact", "resolve_url", "schema_lock",
    "trial_name", "url_password", "utc_now", "with_retries",
]
