"""The paper's Tables 1-7 again, from the results store: the paper's numbers beside ours, with flags.

``python -m dse.tables`` (``make tables``) reads ``dse_trials`` / ``dse_deployments`` (never Optuna's
tables), matches every row of ``dse/experiments/paper_tables/table{1..7}_*.csv`` to trials (``dse.tables.match``),
flags the paper's own inconsistencies (``dse.tables.paper``) and writes ``<out>/tables/tableN.{md,csv,tex}``,
``<out>/figures/*.png`` (``dse.figures``) and ``<out>/report.md`` (``dse.tables.report``).

Library use::

    from dse.tables import Options, generate
    result = generate(Options(db_url="sqlite:///results/dse.db", out_dir=Path("results")))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from dse.common import atomic_write
from dse.errors import ConfigError, DSEError
from dse.store import DEFAULT_URL, Store, StoreError, TrialRow, resolve_url
from dse.tables.gpu import GpuRows, gpu_rows
from dse.tables.inputs import Options, StoreData
from dse.tables.match import aggregate, deployments_by_row
from dse.tables.paper import DEFAULT_PAPER_DIR, load_paper_tables, paper_flags
from dse.tables.render import MB, TableResult, to_csv_frame, to_latex, to_markdown
from dse.tables.report import write_report
from dse.tables.studies import StudyTable, study_tables, write_study_tables

DEFAULT_DB_URL = DEFAULT_URL  # the store every command opens when told none (dse.store)
FORMATS = ("md", "csv", "tex")


class TablesError(DSEError):
    """The tables cannot be generated (no store, unknown study, unknown format)."""


def default_db_url() -> str:
    """``$DSE_STORAGE_URL`` if set, else the embedded default ``sqlite:///results/dse.db``."""
    return resolve_url()


def run_command(table: int) -> str:
    """The exact command that runs a table's missing rows."""
    return f"python -m dse.sweep experiment=table{table}"


@dataclass
class Generated:
    tables: dict[int, TableResult]
    files: list[Path]
    data: StoreData
    studies: dict[str, StudyTable] = field(default_factory=dict)  # the studies no paper table holds


# ------------------------------------------------------------------------------------------------- reading


def _empty_trials() -> pd.DataFrame:
    return pd.DataFrame(columns=[c.name for c in TrialRow.__table__.columns])


def open_store(url: str) -> Store | None:
    """The store at ``url``; None if it holds no dse tables yet. A missing SQLite file is an error."""
    try:
        make_url(url)
    except Exception as e:
        raise TablesError(f"--db {url!r} is not a database URL; expected e.g. "
                          "sqlite:///results/dse.db") from e
    store = Store(url, create=False, retries=2, backoff=0.2)  # a missing or unusable file: StoreError, one line
    with store.engine.connect() as conn:
        if not inspect(conn).has_table(TrialRow.__tablename__):
            return None
    return store


def read_store(url: str, studies: tuple[str, ...] | None = None) -> StoreData:
    """Trials (every status) and deployments, restricted to ``studies`` when given."""
    store = open_store(url)
    if store is None:
        return StoreData(_empty_trials(), pd.DataFrame(), None, [])
    known = store.studies()
    if studies:
        unknown = sorted(set(studies) - set(known))
        if unknown:
            raise TablesError(f"unknown study {', '.join(map(repr, unknown))}; the store has: "
                              f"{', '.join(known) or 'no studies'}")
    trials = store.trials(study=list(studies) if studies else None)
    deployments = store.deployments()
    if studies and len(deployments):
        keep = deployments["trial_id"].isna() | deployments["trial_id"].isin(trials["id"])
        deployments = deployments[keep]
    return StoreData(trials, deployments, store, known)


# ------------------------------------------------------------------------------------------------ building


def _our_sizes(paper: pd.DataFrame, res: pd.DataFrame) -> pd.DataFrame:
    """Our checkpoint MB / params / MACs per row: from trials, else computed from the architecture; its int8
    flash and peak activations (what a small board holds) always from the architecture."""
    import torch

    from dse.models import model_facts

    out = res.copy()
    have = out["ckpt_bytes"].notna()
    out["ours_mb_source"] = np.where(have, "trial", "computed")
    threads = torch.get_num_threads()
    # one 32x32 image per model: extra threads only contend (measured 10x slower on 2 busy cores)
    torch.set_num_threads(1)
    try:
        facts = [model_facts(s) for s in paper["spec"]]  # cached per spec (dse.models.facts)
    finally:
        torch.set_num_threads(threads)
    for col, key in (("ckpt_bytes", "checkpoint_bytes"), ("params", "params"), ("macs", "macs")):
        out[col] = out[col].astype(float).fillna(pd.Series([float(getattr(f, key)) for f in facts], index=out.index))
    out["flash_bytes"] = [f.flash_bytes for f in facts]
    out["ram_bytes_int8"] = [f.ram_bytes_int8 for f in facts]
    out["ours_mb"] = out["ckpt_bytes"].astype(float) / MB
    return out


def _notes(r) -> list[str]:
    notes = []
    if r.status == "ok" and (r.n_budgets or 0) > 1:
        notes.append(f"largest of {int(r.n_budgets)} budgets used ({int(r.epochs)} epochs, data fraction "
                     f"{r.data_fraction:g}); smaller budgets not averaged in")
    if r.status == "ok" and (r.n_configs or 0) > 1:
        notes.append(f"best of {int(r.n_configs)} training configs at this budget by validation accuracy: "
                     f"{r.config}")
    return notes


def build_tables(paper: pd.DataFrame, trials: pd.DataFrame, deployments: pd.DataFrame | None = None,
                 gpu: GpuRows | None = None) -> dict[int, TableResult]:
    """Every paper table joined with our trials (pure: frames in, ``TableResult`` per table out).

    A row nobody ran that ``gpu`` declares a GPU row reads "GPU budget" with the command that runs it there.
    """
    gpu = gpu or GpuRows()
    res = aggregate(paper, trials, deployments)
    res.loc[(res["status"] == "not run").to_numpy() & gpu.mask(paper), "status"] = "gpu budget"
    res = _our_sizes(paper, res)
    rows = paper.drop(columns=["spec"]).merge(res, on=["table", "row"], how="left", validate="1:1")
    for fmt in ("onnx", "onnx_int8"):
        for q in ("p50_ms", "p99_ms"):
            rows[f"{fmt}_{q}"] = np.nan
    if deployments is not None and len(deployments):
        per = deployments_by_row(rows, paper, deployments)
        if len(per):
            for fmt in ("onnx", "onnx_int8"):
                sub = per[per["format"] == fmt].set_index(["table", "row"])
                idx = pd.MultiIndex.from_frame(rows[["table", "row"]])
                for q in ("p50_ms", "p99_ms"):
                    rows[f"{fmt}_{q}"] = sub[q].reindex(idx).to_numpy(dtype=float)
    ours = {(m, d): mb for m, d, mb in zip(rows["model_name"], rows["dataset"], rows["ours_mb"], strict=True)}
    flags = paper_flags(paper, ours)
    tables: dict[int, TableResult] = {}
    for n, part in rows.groupby("table", sort=True):
        part = part.sort_values("row").reset_index(drop=True)
        studies = sorted({s for ss in part["studies"].dropna() for s in str(ss).split(", ") if s})
        tables[int(n)] = TableResult(
            number=int(n), rows=part,
            flags=[flags[(int(n), int(r))] for r in part["row"]],
            notes=[_notes(r) for r in part.itertuples(index=False)],
            command=run_command(int(n)), gpu_command=gpu.command(int(n)), studies=studies)
    return tables


# ------------------------------------------------------------------------------------------------- writing


def write_tables(tables: dict[int, TableResult], out_dir: Path, formats: tuple[str, ...]) -> list[Path]:
    files = []
    for n, t in tables.items():
        for fmt in formats:
            path = out_dir / "tables" / f"table{n}.{fmt}"
            if fmt == "md":
                atomic_write(path, to_markdown(t))
            elif fmt == "tex":
                atomic_write(path, to_latex(t))
            elif fmt == "csv":
                atomic_write(path, to_csv_frame(t).to_csv(index=False))
            files.append(path)
    return files


#: The epochs CSV: who (study, Optuna's trial number, model, dataset, seed, store id), then every metric.
EPOCH_ID_COLUMNS = ("study", "optuna_trial_number", "model_name", "dataset", "seed", "trial_id")
#: The trial's target facts, repeated on each of its epochs (dse.target): last columns of the epochs CSV.
TARGET_COLUMNS = ("flash_bytes", "ram_bytes_int8", "ram_bytes_fp32", "latency_p50_ms", "latency_p99_ms")


def epochs_frame(data: StoreData) -> pd.DataFrame:
    """Every epoch row of the trials in ``data`` (any status), with the trial's identity columns in front."""
    ids = [int(i) for i in data.trials["id"]] if len(data.trials) else []
    ep = data.epochs(ids)
    who = data.trials[["id", "optuna_trial_number", "dataset", "seed", *TARGET_COLUMNS]].rename(
        columns={"id": "trial_id"})
    who["optuna_trial_number"] = who["optuna_trial_number"].astype("Int64")  # whole numbers, blank if unknown
    ep = ep.drop(columns=[c for c in ("id", "identity") if c in ep.columns]).merge(who, on="trial_id", how="left")
    metrics = [c for c in ep.columns if c not in EPOCH_ID_COLUMNS and c not in TARGET_COLUMNS] + list(TARGET_COLUMNS)
    return ep[[*EPOCH_ID_COLUMNS, *metrics]].sort_values(["study", "trial_id", "epoch"], ignore_index=True)


def write_epochs_csv(data: StoreData, path: Path) -> int:
    """Write ``epochs_frame(data)`` to ``path`` (CSV, atomically); returns the number of epoch rows."""
    frame = epochs_frame(data)
    atomic_write(path, frame.to_csv(index=False))
    return len(frame)


def parse_formats(text: str) -> tuple[str, ...]:
    fmts = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise TablesError(f"unknown format {', '.join(bad) or repr(text)}; allowed: {', '.join(FORMATS)}")
    return fmts


def generate(opts: Options, data: StoreData | None = None) -> Generated:
    """Read the store (unless ``data`` is given), build every table, write tables, figures and the report."""

    for f in opts.formats:
        if f not in FORMATS:
            raise TablesError(f"unknown format {f!r}; allowed: {', '.join(FORMATS)}")
    if data is None:
        data = read_store(opts.db_url, opts.studies)  # first: a missing store fails before torch is imported
    paper = load_paper_tables(opts.paper_dir or DEFAULT_PAPER_DIR)
    tables = build_tables(paper, data.trials, data.deployments, gpu_rows())
    out = Path(opts.out_dir)
    studies = study_tables(paper, data.trials)
    files = write_tables(tables, out, opts.formats) + write_study_tables(studies, out, opts.formats)
    figs: list[Path] = []
    if opts.figures:
        from dse.figures import write_figures
        cols = ["table", "model", "model_name", "display_name", "accuracy_pct", "size_mb", "sec_per_epoch",
                "macs", "dataset"]
        points = pd.concat([t.rows for t in tables.values()], ignore_index=True)[cols]
        figs = write_figures(data.trials, points, data.epochs, out / "figures")
        files += figs
    files.append(write_report(out, tables, data, opts, figs, studies))
    return Generated(tables, files, data, studies)


__all__ = [
    "ConfigError", "DEFAULT_DB_URL", "FORMATS", "Generated", "Options", "StoreData", "StoreError",
    "TableResult",
    "TablesError", "build_tables", "default_db_url", "generate", "load_paper_tables", "open_store",
    "parse_formats", "read_store", "GpuRows", "gpu_rows", "run_command", "write_epochs_csv",
    "write_tables",
]
