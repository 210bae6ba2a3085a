"""``<out>/report.md``: links to the tables and figures, with where the numbers came from (provenance)."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

import dse
from dse.store import redact

if TYPE_CHECKING:
    from dse.tables import Options, StoreData
    from dse.tables.render import TableResult


def _repo_commit() -> str:
    """The commit of the code that generated the report (``unknown`` outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(dse.__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _counts(series: pd.Series) -> str:
    vc = series.dropna().astype(str).value_counts()
    return ", ".join(f"`{k}` ({v:,})" for k, v in vc.items()) or "none recorded"


def _md_table(df: pd.DataFrame) -> list[str]:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return lines


def report_text(out_dir: Path, tables: dict[int, TableResult], data: StoreData, opts: Options,
                figures: list[Path]) -> str:
    t = data.trials
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    studies = (", ".join(opts.studies) if opts.studies
               else "all (" + (", ".join(data.all_studies) or "none") + ")")
    lines = ["# Reproduction report: Shallow SqueezeNext (Duggal & El-Sharkawy 2020)", "",
             f"Generated {now} by `python -m dse.tables` (dse {dse.__version__}, commit {_repo_commit()}) "
             f"from `{redact(opts.db_url)}`; studies: {studies}.", ""]
    if t.empty:
        lines += ["**The store has no trials**: every row below is 'not run'. Start with "
                  "`python -m dse.sweep experiment=tables`.", ""]
    lines += ["## Tables", "",
              "| Table | Caption | rows with results | not run / failed / pending | flagged rows | files |",
              "|---|---|---|---|---|---|"]
    for n, tab in tables.items():
        st = tab.rows["status"]
        files = [f"[{fmt}](tables/table{n}.{fmt})" for fmt in opts.formats]
        flagged = sum(1 for f in tab.flags if f)
        lines.append(f"| {n} | {tab.caption} | {int((st == 'ok').sum())} / {len(st)} | "
                     f"{int((st == 'not run').sum())} / {int((st == 'failed').sum())} / "
                     f"{int((st == 'pending').sum())} | {flagged} | {' '.join(files)} |")
    lines += ["", "Rows not run: `python -m dse.sweep experiment=tableN` runs table N "
              "(`experiment=tables` runs all seven).", ""]
    if figures:
        lines += ["## Figures", ""]
        for f in figures:
            rel = f.relative_to(out_dir) if f.is_relative_to(out_dir) else f
            lines += [f"### {f.stem}", "", f"![{f.stem}]({rel.as_posix()})", ""]
    lines += ["## Provenance", ""]
    if t.empty:
        lines += ["No trials recorded.", ""]
    else:
        by = t.groupby(["study", "status"]).size().unstack(fill_value=0)
        by.insert(0, "total", by.sum(axis=1))
        by = by.reset_index()
        lines += ["Trials by study and status:", "", *_md_table(by), ""]
        done = t[t["status"] == "complete"]
        lines += [f"- git commits of the trials: {_counts(t['git_commit'])}",
                  f"- torch versions: {_counts(t['torch_version'])}",
                  f"- devices (complete trials): {_counts(done['device'])}",
                  f"- precisions (complete trials): {_counts(done['precision'])}",
                  f"- data copies: {_counts(t['data_source'])}",
                  f"- datasets: {_counts(t['dataset'])}",
                  f"- hosts: {_counts(t['host'])}",
                  f"- budgets (epochs x data fraction, complete trials): "
                  f"{_counts(done['epochs'].astype(str) + ' ep x ' + done['data_fraction'].astype(str))}"]
        if len(data.deployments):
            d = data.deployments
            lines.append(f"- deployments: {len(d):,} measurements; formats {_counts(d['format'])}; "
                         f"runtimes {_counts(d['runtime'])}; machines {_counts(d['machine'])}")
        lines.append("")
    lines += ["Paper numbers: `experiments/paper_tables/` (transcribed from the paper's section 4). "
              "Model size = bytes of the saved float32 checkpoint / 1e6; model speed = training seconds per "
              "epoch (the paper's: RTX 2080 Ti; Table 7's: Bluebox2.0). Timings compare like for like only "
              "within one device and precision.", ""]
    return "\n".join(lines)


def write_report(out_dir: Path, tables: dict[int, TableResult], data: StoreData, opts: Options,
                 figures: list[Path]) -> Path:
    from dse.tables import write_atomic

    path = Path(out_dir) / "report.md"
    write_atomic(path, report_text(Path(out_dir), tables, data, opts, figures))
    return path
