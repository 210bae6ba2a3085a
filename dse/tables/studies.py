"""A table per study whose trials no paper table holds: every trial of it, and its Pareto set.

A sampled search (``experiment=dse``) or a custom grid trains architectures the paper never reported, so no row
of Tables 1-7 matches them (``dse.tables.match.candidates``); without this table such a study would appear only
as points in the trade-off figure. Each such study gets ``<out>/tables/study_<name>.{md,csv,tex}``: one row per
trial (any status), best validation accuracy first, the Pareto set marked with the project's one definition
(``dse.common.pareto_front``: validation accuracy up, checkpoint size down, over the study's complete trials:
the set ``dse.deploy --pareto`` ships) and the budget said once above the rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dse.common import atomic_write, pareto_front
from dse.store import COMPLETE, trial_name
from dse.tables.match import candidates
from dse.tables.render import _f, _md_cell, _num, tex_escape

#: Columns of the CSV export, in order (raw numbers; the Markdown and LaTeX tables show them rounded).
CSV_COLUMNS = ("trial", "model", "model_name", "arch", "stage_depths", "width", "dropout", "optimizer", "dataset",
               "seed", "status", "pareto", "params", "macs", "checkpoint_bytes", "flash_bytes", "ram_bytes_int8",
               "ram_bytes_fp32", "latency_p50_ms", "latency_p99_ms", "best_val_acc", "test_acc", "epochs_done",
               "epochs", "sec_per_epoch", "device", "precision", "fail_reason")


@dataclass
class StudyTable:
    """One study outside the paper's tables: its trials (``CSV_COLUMNS``) and the budget they share."""

    study: str
    rows: pd.DataFrame
    budget: str  # e.g. "2 epochs, 5,000 training and 10,000 test images" ("mixed budgets: ..." when not shared)

    @property
    def pareto(self) -> list[str]:
        return list(self.rows.loc[self.rows["pareto"], "trial"])


def outside_paper(paper: pd.DataFrame, trials: pd.DataFrame) -> list[str]:
    """The studies with at least one trial that matches no row of the paper's tables."""
    if trials.empty:
        return []
    cand = candidates(paper, trials)
    matched = set(cand["id"]) if len(cand) else set()
    return sorted({str(s) for s, i in zip(trials["study"], trials["id"], strict=True) if i not in matched})


def _budget(trials: pd.DataFrame) -> str:
    """The budget of the study's complete trials, once: epochs, training and test images."""
    done = trials[trials["status"] == COMPLETE]
    if done.empty:
        return "no complete trial yet"
    parts = sorted({f"{int(e)} epochs, {int(tr):,} training and {int(te):,} test images"
                    for e, tr, te in zip(done["epochs"], done["train_images"].fillna(0),
                                         done["test_images"].fillna(0), strict=True)})
    return parts[0] if len(parts) == 1 else "mixed budgets: " + "; ".join(parts)


def study_table(study: str, trials: pd.DataFrame) -> StudyTable:
    """The table of ``study`` from its trials (a frame of ``dse_trials`` rows)."""
    from dse.models.registry import display_name_of  # imports torch: only when a study table is built

    t = trials[trials["study"] == study].reset_index(drop=True)
    complete = np.flatnonzero((t["status"] == COMPLETE).to_numpy())
    front = pareto_front(t["best_val_acc"].iloc[complete].astype(float).tolist(),
                         t["checkpoint_bytes"].iloc[complete].astype(float).tolist())
    rows = t.assign(
        trial=[trial_name(None if pd.isna(n) else int(n), int(i))
               for n, i in zip(t["optuna_trial_number"], t["id"], strict=True)],
        model=[display_name_of(m) for m in t["model_name"]],
        pareto=np.isin(np.arange(len(t)), complete[front]))
    order = rows.assign(_done=rows["status"] != COMPLETE, _acc=-rows["best_val_acc"].astype(float).fillna(-1))
    order = order.sort_values(["_done", "_acc", "id"], kind="stable")
    return StudyTable(study, order[list(CSV_COLUMNS)].reset_index(drop=True), _budget(t))


def study_tables(paper: pd.DataFrame, trials: pd.DataFrame) -> dict[str, StudyTable]:
    """A ``StudyTable`` for every study outside the paper's tables (``outside_paper``)."""
    return {s: study_table(s, trials) for s in outside_paper(paper, trials)}


def _kb(v) -> float | None:
    """Bytes to kB (1000), None kept (a fact an older store did not record)."""
    x = _num(v)
    return None if x is None else x / 1e3


def display_cells(t: StudyTable) -> tuple[list[str], list[list[str]]]:
    """Header and body of the Markdown and LaTeX tables (units in the header)."""
    header = ["Trial", "Model", "Dropout", "Optimizer", "Status", "Pareto", "Params (K)", "MACs (M)", "Size (KB)",
              "Flash KB int8", "Peak RAM KB int8", "Latency p50 ms", "Val acc (%)", "Test acc (%)", "Epochs",
              "s/epoch"]
    body = []
    for r in t.rows.itertuples(index=False):
        status = r.status if r.status != "failed" or not r.fail_reason else f"failed: {str(r.fail_reason)[:60]}"
        body.append([r.trial, r.model, _f(r.dropout, "g"), str(r.optimizer), status, "★" if r.pareto else "",
                     _f(r.params / 1e3, ".1f"), _f(r.macs / 1e6, ".2f"), _f(r.checkpoint_bytes / 1e3, ".1f"),
                     _f(_kb(r.flash_bytes), ".1f"), _f(_kb(r.ram_bytes_int8), ".1f"), _f(r.latency_p50_ms, ".2f"),
                     _f(r.best_val_acc, ".2f"), _f(r.test_acc, ".2f"), f"{int(r.epochs_done)}/{int(r.epochs)}",
                     _f(r.sec_per_epoch, ".1f")])
    return header, body


def _summary(t: StudyTable) -> str:
    n, done = len(t.rows), int((t.rows["status"] == COMPLETE).sum())
    front = ", ".join(t.pareto) or "none yet"
    return (f"{n:,} trials, {done:,} complete. Budget (every complete trial): {t.budget}. Pareto set (validation "
            f"accuracy up, checkpoint size down; what `python -m dse.deploy --study {t.study} --pareto` ships): "
            f"{front}.")


def to_markdown(t: StudyTable) -> str:
    header, body = display_cells(t)
    lines = [f"### Study {t.study}: its trials and Pareto set", "", _summary(t), "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def to_latex(t: StudyTable) -> str:
    header, body = display_cells(t)
    out = [r"% generated by python -m dse.tables; do not edit", r"\begin{table}[ht]", r"\centering",
           r"\scriptsize", rf"\caption{{Study {tex_escape(t.study)}: {tex_escape(_summary(t))}}}",
           rf"\begin{{tabular}}{{{'l' * len(header)}}}", r"\hline",
           " & ".join(rf"\textbf{{{tex_escape(h)}}}" for h in header) + r" \\", r"\hline"]
    out += [" & ".join(tex_escape(c.replace("★", "*")) for c in cells) + r" \\" for cells in body]
    out += [r"\hline", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def to_csv(t: StudyTable) -> str:
    return t.rows.assign(study=t.study)[["study", *CSV_COLUMNS]].to_csv(index=False)


WRITERS = {"md": to_markdown, "csv": to_csv, "tex": to_latex}


def files_of(study: str, formats: tuple[str, ...]) -> list[str]:
    """The file names of ``study``'s table, relative to ``<out>/tables``."""
    return [f"study_{study}.{fmt}" for fmt in formats]


def write_study_tables(tables: dict[str, StudyTable], out_dir: Path, formats: tuple[str, ...]) -> list[Path]:
    """``<out_dir>/tables/study_<name>.<fmt>`` for every study table and format; returns the paths."""
    files = []
    for t in tables.values():
        for fmt, name in zip(formats, files_of(t.study, formats), strict=True):
            path = Path(out_dir) / "tables" / name
            atomic_write(path, WRITERS[fmt](t))
            files.append(path)
    return files


__all__ = ["CSV_COLUMNS", "StudyTable", "outside_paper", "study_table", "study_tables", "to_csv", "to_latex",
           "to_markdown", "write_study_tables"]
