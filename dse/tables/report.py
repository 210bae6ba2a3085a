"""``<out>/report.md``: links to the tables and figures, with where the numbers came from (provenance)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd

import dse
from dse.common import atomic_write, git_commit
from dse.store import COMPLETE, redact
from dse.tables.inputs import Options, StoreData
from dse.tables.render import NEAR_CHANCE_POINTS, TableResult, near_chance, pct, short_source
from dse.tables.studies import StudyTable, files_of


def _counts(series: pd.Series) -> str:
    vc = series.dropna().astype(str).value_counts()
    return ", ".join(f"`{k}` ({v:,})" for k, v in vc.items()) or "none recorded"


def _md_table(df: pd.DataFrame) -> list[str]:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return lines


def _int(v) -> str:
    return "?" if pd.isna(v) else f"{int(v):,}"


def budget_lines(trials: pd.DataFrame) -> list[str]:
    """The budget the numbers below come from, per study: epochs, images, data copy, device and precision."""
    done = trials[trials["status"] == COMPLETE] if len(trials) else trials
    if done.empty:
        return ["No complete trial yet: no budget to state.", ""]
    keys = ["study", "epochs", "train_images", "data_fraction", "test_images", "data_source", "device", "precision"]
    g = done[keys].astype("object").where(done[keys].notna(), None).value_counts(dropna=False).reset_index()
    lines = ["| study | complete trials | epochs | train images per epoch | test images | data copy | "
             "device precision |", "|---|---|---|---|---|---|---|"]
    for r in g.sort_values(["study", "count"], ascending=[True, False]).itertuples(index=False):
        frac = f" ({pct(r.data_fraction)} of the training pool)" if r.data_fraction is not None else ""
        lines.append(f"| {r.study} | {r.count:,} | {_int(r.epochs)} | {_int(r.train_images)}{frac} | "
                     f"{_int(r.test_images)} | {short_source(r.data_source) if r.data_source else '?'} | "
                     f"{r.device or '?'} {r.precision or ''} |")
    return lines + [""]


def _chance_models(tab: TableResult) -> list[str]:
    """The models of ``tab``'s rows with results whose accuracy is within NEAR_CHANCE_POINTS of guessing."""
    return [str(r.model) for r in tab.rows.itertuples(index=False)
            if r.status == "ok" and near_chance(r.acc_mean, r.dataset)]


def chance_lines(tables: dict[int, TableResult]) -> list[str]:
    """A warning naming the rows whose accuracy is within NEAR_CHANCE_POINTS of guessing (none: no lines)."""
    rows = [(n, m) for n, tab in tables.items() for m in _chance_models(tab)]
    if not rows:
        return []
    shown = ", ".join(f"Table {n} {m}" for n, m in rows[:8]) + (" ..." if len(rows) > 8 else "")
    return [f"**{len(rows)} rows are ≈ chance** (test accuracy within {NEAR_CHANCE_POINTS:g} points of guessing: "
            f"10 % on CIFAR-10, 1 % on CIFAR-100): {shown}. Their budget did not learn; their difference to the "
            "paper says nothing about the model. They are marked \"≈ chance\" in the tables.", ""]


def _header_lines(data: StoreData, opts: Options) -> list[str]:
    """The report's title, when, by what and from which store and studies it was made (now, in UTC)."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    studies = (", ".join(opts.studies) if opts.studies
               else "all (" + (", ".join(data.all_studies) or "none") + ")")
    lines = ["# Reproduction report: Shallow SqueezeNext (Duggal & El-Sharkawy 2020)", "",
             f"Generated {now} by `python -m dse.tables` (dse {dse.__version__}, commit {git_commit() or 'unknown'}) "
             f"from `{redact(opts.db_url)}`; studies: {studies}.", ""]
    if data.trials.empty:
        lines += ["**The store has no trials**: every row below is 'not run'. Start with "
                  "`python -m dse.sweep experiment=tables`.", ""]
    return lines


def _budget_section(trials: pd.DataFrame, tables: dict[int, TableResult]) -> list[str]:
    """The "Budget" section: the budgets of the complete trials and the rows at chance."""
    return ["## Budget", "", "Every accuracy and timing below was measured at this budget (the paper's: full "
            "CIFAR training set, every test image). Speeds are shown as seconds per full 50,000-image epoch, "
            "computed from the measured images per second.", "", *budget_lines(trials), *chance_lines(tables)]


def _tables_section(tables: dict[int, TableResult], opts: Options) -> list[str]:
    """The "Tables" section: per table its rows by status, flagged rows and files, then how to run the rest."""
    lines = ["## Tables", "",
             "| Table | Caption | rows with results | ≈ chance | not run / GPU budget / failed / pending | "
             "flagged rows | files |",
             "|---|---|---|---|---|---|---|"]
    for n, tab in tables.items():
        st = tab.rows["status"]
        files = [f"[{fmt}](tables/table{n}.{fmt})" for fmt in opts.formats]
        flagged = sum(1 for f in tab.flags if f)
        chance = len(_chance_models(tab))
        lines.append(f"| {n} | {tab.caption} | {int((st == 'ok').sum())} / {len(st)} | {chance} | "
                     f"{int((st == 'not run').sum())} / {int((st == 'gpu budget').sum())} / "
                     f"{int((st == 'failed').sum())} / "
                     f"{int((st == 'pending').sum())} | {flagged} | {' '.join(files)} |")
    gpu = sorted({tab.gpu_command for tab in tables.values() if (tab.rows["status"] == "gpu budget").any()})
    return lines + ["", "Rows not run: `python -m dse.sweep experiment=tableN` runs table N "
                    "(`experiment=tables` runs all seven)." + (
                        " Rows marked GPU budget are left out of the default CPU study on purpose (too heavy for "
                        "its CPU budget): " + ", ".join(f"`{c}`" for c in gpu) + " runs them." if gpu else ""), ""]


def _figures_section(out_dir: Path, figures: list[Path]) -> list[str]:
    """The "Figures" section: each figure under a heading, linked relative to ``out_dir`` (none: no lines)."""
    if not figures:
        return []
    lines = ["## Figures", ""]
    for f in figures:
        rel = f.relative_to(out_dir) if f.is_relative_to(out_dir) else f
        lines += [f"### {f.stem}", "", f"![{f.stem}]({rel.as_posix()})", ""]
    return lines


def _provenance_section(data: StoreData) -> list[str]:
    """The "Provenance" section: trials by study and status, where they ran, and what the paper's numbers mean."""
    lines = ["## Provenance", "", *(["No trials recorded.", ""] if data.trials.empty else _provenance_facts(data))]
    return lines + ["Paper numbers: `dse/experiments/paper_tables/` (transcribed from the paper's section 4). "
                    "Model size = bytes of the saved float32 checkpoint / 1e6; model speed = training seconds per "
                    "full 50,000-image epoch (the paper's: RTX 2080 Ti; Table 7's: Bluebox2.0). Timings compare "
                    "like for like only within one device and precision.", ""]


def _provenance_facts(data: StoreData) -> list[str]:
    """The trials (there are some) by study and status, then their commits, versions, devices, data and hosts."""
    t = data.trials
    by = t.groupby(["study", "status"]).size().unstack(fill_value=0)
    by.insert(0, "total", by.sum(axis=1))
    by = by.reset_index()
    done = t[t["status"] == "complete"]
    budgets = done["epochs"].astype(str) + " ep x " + done["data_fraction"].map(pct) + " of the training pool"
    lines = ["Trials by study and status:", "", *_md_table(by), "",
             f"- git commits of the trials: {_counts(t['git_commit'])}",
             f"- torch versions: {_counts(t['torch_version'])}",
             f"- devices (complete trials): {_counts(done['device'])}",
             f"- precisions (complete trials): {_counts(done['precision'])}",
             f"- data copies: {_counts(t['data_source'])}",
             f"- datasets: {_counts(t['dataset'])}",
             f"- hosts: {_counts(t['host'])}",
             f"- budgets (complete trials): {_counts(budgets)}",
             f"- target facts before training: peak RAM and int8 flash for {int(t['ram_bytes_int8'].notna().sum()):,}"
             f" of {len(t):,} trials; latency of the untrained network for {int(t['latency_p50_ms'].notna().sum()):,}"
             f" (measured on: {_counts(t['latency_runtime'])}; this host's CPU, not the board)"]
    if len(data.deployments):
        d = data.deployments
        lines.append(f"- deployments: {len(d):,} measurements; formats {_counts(d['format'])}; "
                     f"runtimes {_counts(d['runtime'])}; machines {_counts(d['machine'])}")
    return lines + [""]


def _studies_section(studies: dict[str, StudyTable], opts: Options) -> list[str]:
    """The "Studies outside the paper's tables" section: per study its trials, Pareto set and files."""
    if not studies:
        return []
    lines = ["## Studies outside the paper's tables", "",
             "Trials that match no row of Tables 1-7 (a sampled search, a custom grid): each study's own table.", "",
             "| Study | trials | complete | Pareto set | files |", "|---|---|---|---|---|"]
    for name, t in studies.items():
        files = " ".join(f"[{f.rsplit('.', 1)[1]}](tables/{f})" for f in files_of(name, opts.formats))
        done = int((t.rows["status"] == COMPLETE).sum())
        lines.append(f"| {name} | {len(t.rows):,} | {done:,} | {', '.join(t.pareto) or 'none yet'} | {files} |")
    return lines + [""]


def report_text(out_dir: Path, tables: dict[int, TableResult], data: StoreData, opts: Options,
                figures: list[Path], studies: dict[str, StudyTable] | None = None) -> str:
    """The Markdown text of ``report.md``: header, budget, tables, other studies, figures and provenance."""
    return "\n".join([*_header_lines(data, opts), *_budget_section(data.trials, tables),
                      *_tables_section(tables, opts), *_studies_section(studies or {}, opts),
                      *_figures_section(out_dir, figures), *_provenance_section(data)])


def write_report(out_dir: Path, tables: dict[int, TableResult], data: StoreData, opts: Options,
                 figures: list[Path], studies: dict[str, StudyTable] | None = None) -> Path:
    path = Path(out_dir) / "report.md"
    atomic_write(path, report_text(Path(out_dir), tables, data, opts, figures, studies))
    return path
