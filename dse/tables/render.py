"""Render one reproduced table as Markdown, CSV or LaTeX (pure functions of a ``TableResult``).

Markdown and LaTeX show rounded, human-readable cells with the flags as numbered footnotes; the CSV keeps the
raw numbers (one column per quantity, flags as text) for further analysis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from dse import common

MB = 1_000_000  # bytes per MB, as the paper counts them (dse.models.facts)

#: A row whose accuracy is at most this many points above chance did not learn at its budget: the difference to
#: the paper then says nothing about the model, and the row is marked "≈ chance".
NEAR_CHANCE_POINTS = 5.0

#: The speed columns' unit: seconds per full 50,000-image training epoch (ours computed from measured images/s).
SPEED_UNIT = "s/epoch (50k img)"

#: The paper's captions (section 4), by table number.
CAPTIONS = {
    1: "Comparison with baseline SqueezeNet architecture and baseline SqueezeNext architecture",
    2: "Different resolution multipliers implemented on Shallow SqueezeNext",
    3: "Different width multipliers implemented with Shallow SqueezeNext",
    4: "Different dropout layer probabilities with Shallow SqueezeNext",
    5: "Additional results for Shallow SqueezeNext with CIFAR-10",
    6: "Shallow SqueezeNext results trained and tested with CIFAR-100 from scratch",
    7: "Bluebox2.0 deployment results for Shallow SqueezeNext",
}


@dataclass
class TableResult:
    """One paper table reproduced: the paper's rows joined with ours, plus flags and notes per row."""

    number: int
    rows: pd.DataFrame  # paper columns + match.RESULT_COLUMNS + ours_mb, ours_mb_source, command, latencies
    flags: list[list[str]]  # per row, the paper's inconsistencies
    notes: list[list[str]]  # per row, how our number was obtained (budget, config choice)
    command: str = ""
    gpu_command: str = ""  # for rows the default CPU study leaves out on purpose ("gpu budget")
    studies: list[str] = field(default_factory=list)

    @property
    def caption(self) -> str:
        return CAPTIONS.get(self.number, f"Table {self.number}")


def _num(v) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _f(v, fmt: str, empty: str = "") -> str:
    x = _num(v)
    return empty if x is None else format(x, fmt)


def pct(fraction) -> str:
    """0.020202 -> '2.0 %' (one decimal; two significant digits below 0.1 %)."""
    x = _num(fraction)
    if x is None:
        return ""
    x *= 100
    return f"{x:.2g} %" if 0 < x < 0.1 else f"{x:.1f} %"


def _classes(dataset) -> int:
    """The paper's datasets: 100 classes on CIFAR-100, 10 on CIFAR-10."""
    return 100 if str(dataset) == "cifar100" else 10


def chance_pct(dataset) -> float:
    """Top-1 accuracy of guessing, percent: 1 % on CIFAR-100, 10 % on CIFAR-10."""
    return common.chance_percent(_classes(dataset))


def near_chance(acc, dataset, points: float = NEAR_CHANCE_POINTS) -> bool:
    """True when ``acc`` (percent) is at most ``points`` above chance for ``dataset``."""
    x = _num(acc)
    return x is not None and common.near_chance(x, _classes(dataset), points)


def speed_text(sec, devices, precisions) -> str:
    """'12.3 cpu bf16': seconds per full epoch, then the device(s) and precision(s) it was measured with."""
    s = _f(sec, ".1f")
    what = " ".join(str(x) for x in (devices, precisions) if isinstance(x, str) and x)
    return f"{s} {what}" if s and what else s


def budget_text(r) -> str:
    """'200 ep x 45,000 img (100.0 % of the training pool), cifar10-jpg'."""
    ep = _num(r.epochs)
    if ep is None:
        return ""
    imgs = _num(r.train_images)
    frac = _num(r.data_fraction)
    parts = [f"{ep:.0f} ep"]
    if imgs is not None:
        parts.append(f"x {imgs:,.0f} img")
    if frac is not None:
        parts.append(f"({pct(frac)} of the training pool)")
    s = " ".join(parts)
    test = _num(getattr(r, "test_images", None))
    if test is not None:
        s += f", test {test:,.0f} img"
    if r.data_sources:
        s += f", {short_source(r.data_sources)}"
    return s


def short_source(src: str) -> str:
    """'imagefolder:/data/cifar10-jpg' -> 'imagefolder:cifar10-jpg' (each of a ', ' list)."""
    out = []
    for one in str(src).split(", "):
        kind, _, path = one.rpartition(":") if ":" in one and not one.startswith("/") else ("", "", one)
        tail = path.rstrip("/").rsplit("/", 1)[-1] or path
        out.append(f"{kind}:{tail}" if kind else tail)
    return ", ".join(out)


PAPER_EPOCHS = 200  # the paper's budget: 200 epochs on the whole training set (section 3)


def comparable(r) -> bool:
    """Whether a row was trained at the paper's budget, so that an accuracy difference to the paper means
    something (at 2 epochs it only says that 2 epochs are not 200)."""
    ep, frac = _num(r.epochs), _num(r.data_fraction)
    return ep is not None and ep >= PAPER_EPOCHS and (frac is None or frac >= 0.999)


def ranks(t: TableResult) -> dict[int, str]:
    """Row position -> 'ours/paper' accuracy ranks (1 = best) among the rows with a result: what compares when
    the budgets do not."""
    rows = t.rows.reset_index(drop=True)
    done = rows[(rows["status"] == "ok") & rows["acc_mean"].notna() & rows["accuracy_pct"].notna()]
    ours = done["acc_mean"].rank(ascending=False, method="min")
    paper = done["accuracy_pct"].rank(ascending=False, method="min")
    return {int(i): f"{int(ours[i])}/{int(paper[i])}" for i in done.index}


def rank_correlation(t: TableResult) -> tuple[float, int] | None:
    """(Spearman correlation of our accuracies with the paper's, rows) over the rows with a result; None under 3."""
    done = t.rows[(t.rows["status"] == "ok") & t.rows["acc_mean"].notna() & t.rows["accuracy_pct"].notna()]
    if len(done) < 3:
        return None
    # Spearman = Pearson of the ranks (ties averaged); pandas' method="spearman" would need scipy
    rho = done["acc_mean"].astype(float).rank().corr(done["accuracy_pct"].astype(float).rank())
    return (float(rho), len(done)) if rho == rho else None


def shared_budget(t: TableResult) -> str | None:
    """The budget text when every row with one has the same: said once above the table, not on each row."""
    texts = {budget_text(r) for r in t.rows.itertuples(index=False)} - {""}
    return next(iter(texts)) if len(texts) == 1 else None


def _acc_cells(t: TableResult, r, ref) -> tuple[str, str]:
    """(our accuracy cell, difference to the paper); footnotes through ``ref`` (text -> number)."""
    if r.status == "ok" and _num(r.acc_mean) is None:
        return f"complete, no test accuracy recorded ({len(r.trial_ids or [])} trials)", ""
    if r.status == "ok":
        std = "" if _num(r.acc_std) is None else f" ± {r.acc_std:.2f}"
        n = int(r.n) if _num(r.n) is not None else 1
        acc = f"{r.acc_mean:.2f}{std}" + (f" (n={n})" if n > 1 else "")
        diff = f"{r.acc_mean - r.accuracy_pct:+.2f}".replace("-0.00", "0.00").replace("+0.00", "0.00")
        if near_chance(r.acc_mean, r.dataset):
            k = ref(f"ours: ≈ chance: within {NEAR_CHANCE_POINTS:g} points of guessing "
                    f"({chance_pct(r.dataset):g} % on {'CIFAR-100' if r.dataset == 'cifar100' else 'CIFAR-10'});"
                    " this budget did not learn, so the difference to the paper says nothing about the model")
            acc, diff = f"{acc} ≈ chance [{k}]", f"({diff})"
        return acc, diff
    if r.status == "not run":
        return f"not run: `{t.command}`", ""
    if r.status == "gpu budget":
        return f"GPU budget: `{t.gpu_command}`", ""
    if r.status == "failed":
        return f"failed [{ref('ours: failed: ' + r.status_text)}]", ""
    return r.status_text, ""


def display_cells(t: TableResult) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows of text cells and the numbered footnotes shared by Markdown and LaTeX.

    No cell is ever cut: long texts (failure reasons) go to the footnotes whole.
    """
    notes: list[str] = []

    def ref(text: str) -> int:
        if text not in notes:
            notes.append(text)
        return notes.index(text) + 1

    extra = []
    if t.number == 4:
        extra = [("Dropout p", lambda r: _f(r.dropout, "g"))]
    elif t.number == 6:
        extra = [("Optimizer", lambda r: str(r.optimizer))]
    speed = "s (Bluebox2.0) paper" if t.number == 7 else f"{SPEED_UNIT} paper (RTX 2080 Ti)"
    # a difference to the paper only where the budgets compare; otherwise where each row ranks, ours and theirs
    at_paper_budget = all(comparable(r) for r in t.rows.itertuples(index=False) if r.status == "ok")
    rank = {} if at_paper_budget else ranks(t)
    header = ["Model (paper)", "Ours: registry name", *[h for h, _ in extra], "Acc % paper", "Acc % ours",
              "Δ acc" if at_paper_budget else "Rank ours/paper", "MB paper", "MB ours", "Params", "int8 MB",
              "Flash KB int8", "Peak RAM KB int8", speed, f"{SPEED_UNIT} ours (device precision)"]
    if t.number == 7:
        header += ["ONNX p50/p99 ms", "int8 p50/p99 ms"]
    one_budget = shared_budget(t)
    header += ([] if one_budget else ["Budget"]) + ["Flags"]
    body = []
    for i, r in enumerate(t.rows.itertuples(index=False)):
        acc, diff = _acc_cells(t, r, ref)
        if not at_paper_budget:
            diff = rank.get(i, "")
        mb = _f(r.ours_mb, ".3f")
        if mb and r.ours_mb_source == "computed":
            mb += "*"
        int8 = _num(r.int8_bytes)
        cells = [str(r.model), str(r.model_name), *[fn(r) for _, fn in extra], r.accuracy_pct_txt, acc, diff,
                 r.size_mb_txt, mb, _f(r.params, ",.0f"), _f(None if int8 is None else int8 / MB, ".3f"),
                 _f(r.flash_bytes / 1e3, ",.1f"), _f(r.ram_bytes_int8 / 1e3, ",.1f"), r.sec_per_epoch_txt,
                 speed_text(r.sec_full_mean, r.devices, r.precisions)]
        if t.number == 7:
            for fmt in ("onnx", "onnx_int8"):
                p50, p99 = getattr(r, f"{fmt}_p50_ms"), getattr(r, f"{fmt}_p99_ms")
                both = _num(p50) is not None and _num(p99) is not None
                cells.append(f"{p50:.2f} / {p99:.2f}" if both else "")
        refs = [ref(f) for f in t.flags[i]]
        for n in t.notes[i]:
            refs.append(ref("ours: " + n))
        cells += ([] if one_budget else [budget_text(r)]) + [" ".join(f"[{k}]" for k in refs)]
        body.append(cells)
    return header, body, notes


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def to_markdown(t: TableResult) -> str:
    header, body, notes = display_cells(t)
    lines = [f"# Table {t.number}: {t.caption}", ""]
    full = ("training seconds per full 50,000-image epoch (ours: from the measured images per second of the "
            "trials' own, possibly smaller, epochs; labelled with device and precision)")
    speed = (f"paper speed: seconds on Bluebox2.0 (as printed); ours: {full} and batch-1 latency (p50/p99)."
             if t.number == 7 else f"speed: {full}; the paper's on an RTX 2080 Ti.")
    lines.append("Paper numbers beside ours. Accuracy: top-1 test accuracy in percent (CIFAR-100 for "
                 "Table 6, CIFAR-10 otherwise) at the best-validation epoch, mean ± std over seeds (n = seeds, "
                 "shown when above 1); MB = 1e6 bytes of the float32 checkpoint; " + speed)
    lines.append("")
    lines += budget_lines(t)
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for cells in body:
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    lines.append("")
    if (t.rows["ours_mb_source"] == "computed").any():
        lines.append("\\* computed from the architecture (``dse.models.model_facts``), no trial yet.")
        lines.append("")
    lines += remedy_lines(t)
    chance = sum(1 for r in t.rows.itertuples(index=False) if r.status == "ok" and near_chance(r.acc_mean, r.dataset))
    if chance:
        lines.append(f"**{chance} of {len(t.rows)} rows are ≈ chance** (within {NEAR_CHANCE_POINTS:g} points of "
                     "guessing): their budget did not learn; compare them with the paper only after a longer run.")
        lines.append("")
    if t.studies:
        lines.append(f"Trials from studies: {', '.join(t.studies)}.")
        lines.append("")
    if notes:
        lines.append("## Flags and notes")
        lines.append("")
        lines.append("Flags are the paper's own inconsistencies, found by rules over its numbers "
                     "(`dse.tables.paper.paper_flags`); notes starting with 'ours:' say how our number was "
                     "obtained.")
        lines.append("")
        for k, n in enumerate(notes, 1):
            lines.append(f"{k}. {n}")
        lines.append("")
    return "\n".join(lines)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$",
        "`": "", "*": r"$^*$"}


def tex_escape(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(s))


def budget_lines(t: TableResult) -> list[str]:
    """The budget once, when the rows share it; and whether the accuracies compare with the paper's."""
    out = []
    one = shared_budget(t)
    if one:
        out += [f"Budget (every row): {one}.", ""]
    done = [r for r in t.rows.itertuples(index=False) if r.status == "ok"]
    if done and not all(comparable(r) for r in done):
        corr = rank_correlation(t)
        said = (f" Spearman rank correlation of our accuracies with the paper's: {corr[0]:.2f} over {corr[1]} rows."
                if corr else "")
        out += [f"Trained below the paper's {PAPER_EPOCHS} epochs on all its data, so the accuracies are not "
                "compared point by point: the rank column says where each row stands among this table's rows, "
                f"ours/paper.{said}", ""]
    return out


def remedy_lines(t: TableResult) -> list[str]:
    """What completes the table: the same command again for trials a study left queued or interrupted, the
    table's study for rows never planned, the GPU budget's for rows the CPU study leaves out."""
    st = t.rows["status"]
    n = len(t.rows)
    pending = int((st == "pending").sum())
    missing = int(((st != "ok") & (st != "gpu budget") & (st != "pending")).sum())
    gpu = int((st == "gpu budget").sum())
    out = []
    if pending:
        studies = f" (study {', '.join(t.studies)})" if t.studies else ""
        out += [f"{pending} of {n} rows have trials queued, running or interrupted{studies}: run the command that "
                "started that study again; it resumes them and trains nothing twice.", ""]
    if missing:
        out += [f"{missing} of {n} rows have no complete trial; run them with `{t.command}`.", ""]
    if gpu:
        out += [f"{gpu} of {n} rows are not in the default CPU study (`dse/experiments/cpu.yaml`); run them on a GPU "
                f"with `{t.gpu_command}`.", ""]
    return out


def to_latex(t: TableResult) -> str:
    header, body, notes = display_cells(t)
    cols = "l" * len(header)
    out = [r"% generated by python -m dse.tables; do not edit", r"\begin{table}[ht]", r"\centering",
           r"\scriptsize", rf"\caption{{Table {t.number}: {tex_escape(t.caption)} (paper vs.\ ours)}}",
           rf"\begin{{tabular}}{{{cols}}}", r"\hline",
           " & ".join(rf"\textbf{{{tex_escape(h)}}}" for h in header) + r" \\", r"\hline"]
    for cells in body:
        out.append(" & ".join(tex_escape(c) for c in cells) + r" \\")
    out += [r"\hline", r"\end{tabular}"]
    if notes:
        out.append(r"\begin{enumerate}\tiny")
        out += [rf"\item {tex_escape(n)}" for n in notes]
        out.append(r"\end{enumerate}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def to_csv_frame(t: TableResult) -> pd.DataFrame:
    """Raw numbers, one column per quantity (flags and notes joined with ' | ')."""
    r = t.rows
    df = pd.DataFrame({
        "table": r["table"], "row": r["row"], "model": r["model"], "model_name": r["model_name"],
        "dropout": r["dropout"], "optimizer": r["optimizer"], "dataset": r["dataset"],
        "paper_acc_pct": r["accuracy_pct"], "acc_mean_pct": r["acc_mean"], "acc_std_pct": r["acc_std"],
        "n": r["n"], "acc_diff_pct": r["acc_mean"] - r["accuracy_pct"], "paper_mb": r["size_mb"],
        "ours_mb": r["ours_mb"], "ours_mb_source": r["ours_mb_source"], "params": r["params"],
        "macs": r["macs"],
        "int8_mb": r["int8_bytes"] / MB, "flash_bytes": r["flash_bytes"], "ram_bytes_int8": r["ram_bytes_int8"],
        "paper_sec": r["sec_per_epoch"],
        "ours_sec_per_50k_epoch": r["sec_full_mean"], "ours_sec_per_trial_epoch": r["sec_mean"],
        "devices": r["devices"], "precisions": r["precisions"], "epochs": r["epochs"],
        "data_fraction": r["data_fraction"], "train_images": r["train_images"],
        "test_images": r["test_images"],
        "data_sources": r["data_sources"], "n_budgets": r["n_budgets"], "n_configs": r["n_configs"],
        "config": r["config"], "status": r["status"],
        "near_chance": [s == "ok" and near_chance(a, d) for s, a, d in zip(r["status"], r["acc_mean"], r["dataset"],
                                                                           strict=True)],
        "status_text": r["status_text"],
        "run_command": [{"ok": "", "gpu budget": t.gpu_command}.get(s, t.command) for s in r["status"]],
    })
    if t.number == 7:
        for fmt in ("onnx", "onnx_int8"):
            for q in ("p50_ms", "p99_ms"):
                df[f"{fmt}_{q}"] = r[f"{fmt}_{q}"]
    df["flags"] = [" | ".join(f) for f in t.flags]
    df["notes"] = [" | ".join(n) for n in t.notes]
    # Optuna's trial numbers, as optuna-dashboard shows them (the store's row ids mean nothing there)
    df["trials"] = ["; ".join(refs) if isinstance(refs, list) else "" for refs in r["trial_refs"]]
    return df
