"""The tables of the results store and its schema version: what a trial, an epoch and a deployment row hold.

Every column is nullable or has a default unless planning always knows it, so a store written by an older version
gains the newer columns in place (``add_missing_columns``) and keeps opening.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from dse.errors import DSEError

log = logging.getLogger("dse.store")

# 2: the queue columns lease_until, heartbeat_at, recorded_at; 3: data_fingerprint; 4: the target facts
# (flash_bytes, ram_bytes_*, latency_*). Each added in place to older files (nullable columns).
SCHEMA_VERSION = 4

# Trial states in our store. Terminal: complete, pruned, failed, rejected. "queued" = waiting for a worker,
# "interrupted" = stopped by Ctrl-C/SIGTERM (claimable like queued), "running" = claimed under a lease.
# "planned" is only found in stores written by older versions: opening one makes those rows queued.
PLANNED, QUEUED, RUNNING, COMPLETE, PRUNED, FAILED, REJECTED, INTERRUPTED = (
    "planned", "queued", "running", "complete", "pruned", "failed", "rejected", "interrupted")
TERMINAL = (COMPLETE, PRUNED, FAILED, REJECTED)


class StoreError(DSEError):
    """The results database cannot be used (unreachable, newer schema, bad URL)."""


def trial_name(optuna_number: int | None, store_id: int | None = None) -> str:
    """A trial's one name: "t12" for Optuna's trial 12 (optuna-dashboard's "Trial 12"), used by the sweep log, the
    checkpoint folder, the tables and dse.deploy alike; "id17" (the store's row id) for a trial Optuna does not
    have yet (a sampled point being asked; a store written by an older version)."""
    if optuna_number is not None and not math.isnan(optuna_number):  # NaN from a pandas frame: unknown
        return f"t{int(optuna_number)}"
    return "id?" if store_id is None else f"id{int(store_id)}"


def utc_now() -> dt.datetime:
    """Now in UTC without a zone: what every DateTime column holds."""
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
    # what a small board needs (dse.target), known before training
    flash_bytes: Mapped[int | None] = mapped_column(BigInteger)  # int8 weights (dse.models.footprint)
    ram_bytes_int8: Mapped[int | None] = mapped_column(BigInteger)  # peak activations of one image, int8
    ram_bytes_fp32: Mapped[int | None] = mapped_column(BigInteger)  # ... float32
    latency_p50_ms: Mapped[float | None] = mapped_column(Float)  # batch 1, untrained, this host (dse.deploy.facts)
    latency_p99_ms: Mapped[float | None] = mapped_column(Float)
    latency_runtime: Mapped[str | None] = mapped_column(String(200))  # "onnxruntime 1.31.1 on <host>"
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
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utc_now)
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
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utc_now)


def init_schema(engine: Engine, shown_url: str, session: sessionmaker[Session], *, create: bool) -> None:
    """Refuse a store of a newer version (naming it by ``shown_url``, the URL without its password); add the
    columns an older one lacks; with ``create``, the tables and the version row (workers opening one new store
    at once write it once)."""
    with engine.connect() as conn:
        if engine.dialect.has_table(conn, Meta.__tablename__):
            row = conn.execute(select(Meta.value).where(Meta.key == "schema_version")).scalar()
            if row is not None and int(row) > SCHEMA_VERSION:
                raise StoreError(
                    f"results database {shown_url} has schema version {row}, newer than this "
                    f"dse supports ({SCHEMA_VERSION}); upgrade dse (nothing was changed)")
        if engine.dialect.has_table(conn, TrialRow.__tablename__):
            add_missing_columns(conn)
            queue_planned(conn)
    if not create:
        return
    Base.metadata.create_all(engine)
    with session() as s, s.begin():
        meta = s.get(Meta, "schema_version")
        if meta is not None and int(meta.value) < SCHEMA_VERSION:  # its columns were added above
            meta.value = str(SCHEMA_VERSION)
        if meta is None:
            try:
                with s.begin_nested():
                    s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
            except IntegrityError:  # another worker wrote it first
                pass


def queue_planned(conn: Any) -> None:
    """Rows an older version left "planned" become "queued": the same meaning under the one name workers claim."""
    moved = conn.execute(update(TrialRow).where(TrialRow.status == PLANNED).values(status=QUEUED)).rowcount
    if moved:
        conn.commit()
        log.info("results store: %d planned trial%s now queued", moved, "s" * (moved != 1))


def add_missing_columns(conn: Any) -> None:
    """Bring an older ``dse_trials`` up to date: the columns added since are nullable, so adding them is all."""
    have = {c["name"] for c in inspect(conn).get_columns(TrialRow.__tablename__)}
    missing = [c for c in TrialRow.__table__.columns if c.name not in have]
    for col in missing:
        ddl = col.type.compile(dialect=conn.dialect)
        conn.execute(text(f"ALTER TABLE {TrialRow.__tablename__} ADD COLUMN {col.name} {ddl}"))
    if missing:
        conn.commit()
        log.info("results store: added columns %s to %s", ", ".join(c.name for c in missing),
                 TrialRow.__tablename__)
