"""Render one reproduced table as Markdown, CSV or LaTeX (pure functions of a ``TableResult``).

Markdown and LaTeX show rounded, human-readable cells with the flags as numbered footnotes; the CSV keeps the
raw numbers (one column per quantity, flags as text) for further analysis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

MB = 1_000_000  # bytes per MB, as the paper counts them (dse.models.facts)

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


def budget_text(r) -> str:
    """'200 ep x 45,000 img (100 % data), cifar10-jpg'."""
    ep = _num(r.epochs)
    if ep is None:
        return ""
    imgs = _num(r.train_images)
    frac = _num(r.data_fraction)
    parts = [f"{ep:.0f} ep"]
    if imgs is not None:
        parts.append(f"x {imgs:,.0f} img")
    if frac is not None:
        parts.append(f"({frac * 100:.3g} % data)")
    s = " ".join(parts)
    test = _num(getattr(r, "test_images", None))
    if test is not None:
        s += f", test {test:,.0f} img"
    if r.data_sources:
        s += f", {short_source(r.data_sources)}"
    return s


def short_source(src: str) -> str:
    """'imagefolder:/work/shared/data/cifar10-jpg' -> 'imagefolder:cifar10-jpg' (each of a ', ' list)."""
    out = []
    for one in str(src).split(", "):
        kind, _, path = one.rpartition(":") if ":" in one and not one.startswith("/") else ("", "", one)
        tail = path.rstrip("/").rsplit("/", 1)[-1] or path
        out.append(f"{kind}:{tail}" if kind else tail)
    return ", ".join(out)


def display_cells(t: TableResult) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, rows of text cells and the numbered footnotes shared by Markdown and LaTeX."""
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
    speed = "s (Bluebox2.0) paper" if t.number == 7 else "s/epoch paper"
    header = ["Model (paper)", "Ours: registry name", *[h for h, _ in extra], "Acc % paper",
              "Acc % ours (mean ± std, n)", "Δ acc", "MB paper", "MB ours", "Params", "int8 MB", speed,
              "s/epoch ours (device, precision)"]
    if t.number == 7:
        header += ["ONNX p50/p99 ms", "int8 p50/p99 ms"]
    header += ["Budget", "Flags"]
    body = []
    for i, r in enumerate(t.rows.itertuples(index=False)):
        if r.status == "ok" and _num(r.acc_mean) is None:
            acc, diff = f"complete, no test accuracy recorded ({len(r.trial_ids or [])} trials)", ""
        elif r.status == "ok":
            std = "" if _num(r.acc_std) is None else f" ± {r.acc_std:.2f}"
            acc = f"{r.acc_mean:.2f}{std} (n={int(r.n)})"
            diff = f"{r.acc_mean - r.accuracy_pct:+.2f}".replace("-0.00", "0.00").replace("+0.00", "0.00")
        elif r.status == "not run":
            acc, diff = f"not run: `{t.command}`", ""
        else:
            acc, diff = r.status_text, ""
        mb = _f(r.ours_mb, ".3f")
        if mb and r.ours_mb_source == "computed":
            mb += "*"
        sec = _f(r.sec_mean, ".1f")
        if sec:
            what = ", ".join(x for x in (r.devices, r.precisions) if x)
            sec += f" ({what})" if what else ""
        int8 = _num(r.int8_bytes)
        cells = [str(r.model), str(r.model_name), *[fn(r) for _, fn in extra], r.accuracy_pct_txt, acc, diff,
                 r.size_mb_txt, mb, _f(r.params, ",.0f"), _f(None if int8 is None else int8 / MB, ".3f"),
                 r.sec_per_epoch_txt, sec]
        if t.number == 7:
            for fmt in ("onnx", "onnx_int8"):
                p50, p99 = getattr(r, f"{fmt}_p50_ms"), getattr(r, f"{fmt}_p99_ms")
                both = _num(p50) is not None and _num(p99) is not None
                cells.append(f"{p50:.2f} / {p99:.2f}" if both else "")
        refs = [ref(f) for f in t.flags[i]]
        for n in t.notes[i]:
            refs.append(ref("ours: " + n))
        cells += [budget_text(r), " ".join(f"[{k}]" for k in refs)]
        body.append(cells)
    return header, body, notes


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def to_markdown(t: TableResult) -> str:
    header, body, notes = display_cells(t)
    lines = [f"# Table {t.number}: {t.caption}", ""]
    speed = ("paper speed: seconds on Bluebox2.0 (as printed); ours: training seconds per epoch and batch-1 "
             "latency (p50/p99)." if t.number == 7 else "speed: training seconds per epoch.")
    lines.append("Paper numbers beside ours. Accuracy: top-1 test accuracy in percent (CIFAR-100 for "
                 "Table 6, CIFAR-10 otherwise) at the best-validation epoch, averaged over seeds; MB = 1e6 "
                 "bytes of the float32 checkpoint; " + speed)
    lines.append("")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for cells in body:
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    lines.append("")
    if (t.rows["ours_mb_source"] == "computed").any():
        lines.append("\\* computed from the architecture (``dse.models.model_facts``), no trial yet.")
        lines.append("")
    missing = int((t.rows["status"] != "ok").sum())
    if missing:
        lines.append(f"{missing} of {len(t.rows)} rows have no complete trial; run them with `{t.command}`.")
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
        "int8_mb": r["int8_bytes"] / MB, "paper_sec": r["sec_per_epoch"], "ours_sec_per_epoch": r["sec_mean"],
        "devices": r["devices"], "precisions": r["precisions"], "epochs": r["epochs"],
        "data_fraction": r["data_fraction"], "train_images": r["train_images"],
        "test_images": r["test_images"],
        "data_sources": r["data_sources"], "n_budgets": r["n_budgets"], "n_configs": r["n_configs"],
        "config": r["config"], "status": r["status"],
        "status_text": r["status_text"], "run_command": [t.command if s != "ok" else "" for s in r["status"]],
    })
    if t.number == 7:
        for fmt in ("onnx", "onnx_int8"):
            for q in ("p50_ms", "p99_ms"):
                df[f"{fmt}_{q}"] = r[f"{fmt}_{q}"]
    df["flags"] = [" | ".join(f) for f in t.flags]
    df["notes"] = [" | ".join(n) for n in t.notes]
    df["trial_ids"] = [" ".join(map(str, ids)) if isinstance(ids, list) else "" for ids in r["trial_ids"]]
    return df
