"""Figures from the results store: the Figure 9 analogue and the accuracy trade-offs (matplotlib, Agg, PNG).

- ``figure9.png``: train and validation accuracy per epoch for the SqueezeNet baseline (``squeezenet_1_0``),
  the SqueezeNext baseline (``sqnxt_23_1x``) and the best Shallow SqueezeNext (highest validation accuracy of
  arch ``shallow_sqnxt``), CIFAR-10 (Duggal & El-Sharkawy 2020, Figure 9 a-c). Only those three trials' epochs
  are read.
- ``tradeoff.png``: test accuracy of every complete CIFAR-10 trial against checkpoint size, MACs per image and
  seconds per training epoch (log x), coloured by arch, with the Pareto front (max accuracy, min cost) and
  the paper's reported points overlaid and labelled.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on the workers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

MB = 1_000_000  # bytes per MB, as the paper counts them

#: One colour per arch, stable across runs (tab10).
ARCH_COLOURS = {"squeezenet_1_0": "#1f77b4", "squeezenet_1_1": "#17becf", "sqnxt": "#ff7f0e",
                "modified_sqnxt": "#9467bd", "shallow_sqnxt": "#2ca02c"}
ARCH_LABELS = {"squeezenet_1_0": "SqueezeNet-v1.0", "squeezenet_1_1": "SqueezeNet-v1.1", "sqnxt": "SqueezeNext",
               "modified_sqnxt": "Modified SqueezeNext", "shallow_sqnxt": "Shallow SqueezeNext"}

#: The three panels of Figure 9: (title, how to pick the trial).
FIG9_PANELS = (
    ("(a) SqueezeNet baseline", "model_name", "squeezenet_1_0"),
    ("(b) SqueezeNext baseline", "model_name", "sqnxt_23_1x"),
    ("(c) best Shallow SqueezeNext", "arch", "shallow_sqnxt"),
)


def _save(fig: plt.Figure, path: Path) -> Path:
    """PNG via a temp buffer and an atomic rename (a reader never sees half a file)."""
    from dse.tables import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    write_atomic(path, buf.getvalue())
    return path


def _complete_c10(trials: pd.DataFrame) -> pd.DataFrame:
    if trials.empty:
        return trials
    return trials[(trials["status"] == "complete") & (trials["dataset"] == "cifar10")]


def pick_figure9_trials(trials: pd.DataFrame) -> list[pd.Series | None]:
    """Per panel, the complete CIFAR-10 trial with the highest validation accuracy (None if there is none)."""
    done = _complete_c10(trials)
    picks: list[pd.Series | None] = []
    for _, col, value in FIG9_PANELS:
        sub = done[done[col] == value] if len(done) else done
        sub = sub.dropna(subset=["best_val_acc"]) if len(sub) else sub
        picks.append(sub.loc[sub["best_val_acc"].idxmax()] if len(sub) else None)
    return picks


def figure9(trials: pd.DataFrame, load_epochs: Callable[[list[int]], pd.DataFrame], path: Path) -> Path:
    picks = pick_figure9_trials(trials)
    ids = [int(p["id"]) for p in picks if p is not None]
    ep = load_epochs(ids) if ids else pd.DataFrame(columns=["trial_id"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharey=True, constrained_layout=True)
    for ax, (title, _, value), pick in zip(axes, FIG9_PANELS, picks):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if pick is None:
            ax.set_title(title)
            what = value if value != "shallow_sqnxt" else "any shallow_sqnxt model"
            ax.text(0.5, 0.5, f"not run\n({what}, CIFAR-10)", ha="center", va="center", transform=ax.transAxes,
                    fontsize=12, color="0.4")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 100)
            continue
        curve = ep[ep["trial_id"] == int(pick["id"])].sort_values("epoch")
        ax.plot(curve["epoch"], curve["train_acc"], label="train", color="#1f77b4", lw=1.6)
        ax.plot(curve["epoch"], curve["val_acc"], label="validation", color="#d62728", lw=1.6)
        ax.set_title(f"{title}\n{pick['model_name']} (trial {int(pick['id'])}, {pick['study']}): "
                     f"val {pick['best_val_acc']:.1f} %, test {pick['test_acc']:.1f} %", fontsize=9)
        ax.legend(loc="lower right", fontsize=9)
    axes[0].set_ylabel("accuracy (%)")
    fig.suptitle("Figure 9 analogue: training and validation accuracy per epoch (CIFAR-10)", fontsize=11)
    return _save(fig, path)


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats (x lower or equal and y higher), sorted by x."""
    order = np.lexsort((-y, x))  # by x, then best y first
    best = -np.inf
    keep = []
    for i in order:
        if y[i] > best:
            keep.append(i)
            best = y[i]
    return np.asarray(keep, dtype=int)


def _place_labels(ax: plt.Axes, xs, ys, labels, fontsize: float = 6.5) -> None:
    """Greedy label placement: for each point try 8 offsets, keep the one overlapping least (display px)."""
    fig = ax.figure
    fig.canvas.draw()  # transforms must be final
    trans = ax.transData
    placed: list[tuple[float, float, float, float]] = []
    pts = trans.transform(np.column_stack([xs, ys]))
    char_w, h = fontsize * 0.62 * fig.dpi / 72, fontsize * 1.3 * fig.dpi / 72
    offsets = [(6, 4), (6, -10), (-6, 4), (-6, -10), (6, 14), (-6, 14), (6, -20), (-6, -20)]
    for (px, py), label in sorted(zip(pts.tolist(), labels), key=lambda t: -t[0][1]):
        w = char_w * len(label)
        best, best_cost = offsets[0], np.inf
        for dx, dy in offsets:
            dxp, dyp = dx * fig.dpi / 72, dy * fig.dpi / 72
            x0 = px + dxp if dx > 0 else px + dxp - w
            box = (x0, py + dyp, x0 + w, py + dyp + h)
            cost = sum(max(0.0, min(box[2], b[2]) - max(box[0], b[0])) * max(0.0, min(box[3], b[3]) - max(box[1], b[1]))
                       for b in placed)
            cost += 0.5 * sum(1 for qx, qy in pts if box[0] <= qx <= box[2] and box[1] <= qy <= box[3]) * w * h
            if cost < best_cost:
                best, best_cost = (dx, dy), cost
                box_best = box
            if cost == 0:
                break
        placed.append(box_best)
        ax.annotate(label, (float(trans.inverted().transform((px, py))[0]),
                            float(trans.inverted().transform((px, py))[1])),
                    xytext=best, textcoords="offset points", fontsize=fontsize,
                    ha="left" if best[0] > 0 else "right", va="bottom", color="black",
                    arrowprops=dict(arrowstyle="-", lw=0.4, color="0.5", shrinkA=0, shrinkB=2))


def tradeoff(trials: pd.DataFrame, paper_points: pd.DataFrame, path: Path) -> Path:
    """Accuracy vs checkpoint MB, MACs and s/epoch; Pareto fronts; the paper's points labelled.

    ``paper_points``: columns table, model, model_name, accuracy_pct, size_mb, sec_per_epoch, macs (ours,
    computed for that architecture), dataset; only CIFAR-10 rows are drawn.
    """
    done = _complete_c10(trials)
    done = done.dropna(subset=["test_acc"]) if len(done) else done
    pp = paper_points[paper_points["dataset"] == "cifar10"].copy() if len(paper_points) else paper_points
    panels = (("checkpoint size (MB, float32 state_dict)", "ckpt_mb", "size_mb"),
              ("MACs per 32x32 image (millions)", "macs_m", "macs_m"),
              ("training seconds per epoch", "sec_per_epoch", "sec_per_epoch"))
    if len(done):
        done = done.assign(ckpt_mb=done["checkpoint_bytes"].astype(float) / MB,
                           macs_m=done["macs"].astype(float) / 1e6)
    if len(pp):
        pp["macs_m"] = pp["macs"].astype(float) / 1e6
        pp["short"] = [str(m).replace("Shallow SqueezeNext-", "SSqNxt-").replace(" (baseline)", "")
                       .replace("Squeezed CNN (SqueezeNet implementation)", "Squeezed CNN") for m in pp["model"]]
    fig, axes = plt.subplots(1, 3, figsize=(19, 6.8), sharey=True, constrained_layout=True)
    devices = ", ".join(sorted({str(d) for d in done["device"].dropna()})) if len(done) else ""
    for ax, (xlabel, ours_col, paper_col) in zip(axes, panels):
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, which="both", lw=0.4)
        if len(done):
            sub = done.dropna(subset=[ours_col])
            sub = sub[sub[ours_col] > 0]
            for arch, grp in sub.groupby("arch", sort=True):
                ax.scatter(grp[ours_col], grp["test_acc"], s=9, alpha=0.45, lw=0,
                           color=ARCH_COLOURS.get(str(arch), "0.5"), label=f"ours: {ARCH_LABELS.get(arch, arch)}",
                           rasterized=True)
            if len(sub):
                x, y = sub[ours_col].to_numpy(float), sub["test_acc"].to_numpy(float)
                front = pareto_front(x, y)
                ax.plot(x[front], y[front], drawstyle="steps-post", color="black", lw=1.3,
                        label="ours: Pareto front")
        # Table 7's speed is on Bluebox2.0, not training s/epoch on the RTX 2080 Ti: left off that panel
        pts = pp if paper_col != "sec_per_epoch" or not len(pp) else pp[pp["table"] != 7]
        if len(pts):
            pts = pts.dropna(subset=[paper_col])
            pts = pts.drop_duplicates(subset=["short", "accuracy_pct", paper_col])
            ax.scatter(pts[paper_col], pts["accuracy_pct"], marker="*", s=90, color="#d62728",
                       edgecolor="black", lw=0.5, zorder=5,
                       label="paper (MACs: ours for that architecture)" if paper_col == "macs_m" else "paper")
            lab = pts.sort_values("accuracy_pct", ascending=False).drop_duplicates("short")
            _place_labels(ax, lab[paper_col].to_numpy(float), lab["accuracy_pct"].to_numpy(float),
                          list(lab["short"]))
        if not len(done) and not len(pts):
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes, color="0.4")
    axes[0].set_ylabel("top-1 test accuracy (%), CIFAR-10")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(handles), 7), fontsize=8,
                   markerscale=1.5)
    n = len(done)
    fig.suptitle(f"Accuracy trade-offs: {n:,} complete CIFAR-10 trials (ours{': ' + devices if devices else ''}) "
                 "vs the paper's reported models (paper speeds: RTX 2080 Ti)", fontsize=11)
    return _save(fig, path)


def write_figures(trials: pd.DataFrame, paper_points: pd.DataFrame,
                  load_epochs: Callable[[list[int]], pd.DataFrame], out_dir: Path) -> list[Path]:
    """Both figures into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    return [figure9(trials, load_epochs, out_dir / "figure9.png"),
            tradeoff(trials, paper_points, out_dir / "tradeoff.png")]
