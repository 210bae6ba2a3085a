"""Figures from the results store: the Figure 9 analogue and the accuracy trade-offs (matplotlib, Agg, PNG).

- ``figure9.png``: train and validation accuracy per epoch for the SqueezeNet baseline (``squeezenet_1_0``),
  the SqueezeNext baseline (``sqnxt_23_1x``) and the best Shallow SqueezeNext (highest validation accuracy of
  arch ``shallow_sqnxt``), CIFAR-10 (Duggal & El-Sharkawy 2020, Figure 9 a-c). Only those three trials' epochs
  are read.
- ``tradeoff.png``: test accuracy of every complete CIFAR-10 trial against checkpoint size, MACs per image and
  seconds per full 50,000-image training epoch (log x, ours from the measured images per second), coloured by
  arch, with the paper's reported points overlaid and labelled. The Pareto front is the project's one definition
  (``dse.common.pareto_front``: validation accuracy up, checkpoint size down), the same trials that
  ``dse.deploy --pareto`` picks: ringed on every panel and labelled by their one name (``t12 SSqNxt-10-0.325x``)
  on the size panel, where the front itself is drawn on the axes it is computed on (a dashed step line at the
  trials' validation accuracy, each joined to its test-accuracy dot).

Both titles carry the budget the trials ran at (epochs, training and test images): a two-epoch study must not
read as the paper's 200.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on the workers
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from dse.common import atomic_write, pareto_front  # noqa: E402
from dse.models.registry import ARCHITECTURES, display_name_of  # noqa: E402
from dse.store import trial_name  # noqa: E402
from dse.tables.match import FULL_EPOCH_IMAGES, trial_ref  # noqa: E402
from dse.tables.render import pct  # noqa: E402

MB = 1_000_000  # bytes per MB, as the paper counts them

#: One colour per arch, stable across runs (dse.models.registry.ARCHITECTURES), and its family's name.
ARCH_COLOURS = {a: d.colour for a, d in ARCHITECTURES.items()}
ARCH_LABELS = {a: d.display for a, d in ARCHITECTURES.items()}

#: The three panels of Figure 9: (title, how to pick the trial).
FIG9_PANELS = (
    ("(a) SqueezeNet baseline", "model_name", "squeezenet_1_0"),
    ("(b) SqueezeNext baseline", "model_name", "sqnxt_23_1x"),
    ("(c) best Shallow SqueezeNext", "arch", "shallow_sqnxt"),
)


def _save(fig: plt.Figure, path: Path) -> Path:
    """PNG via a temp buffer and an atomic rename (a reader never sees half a file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
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
    # a panel per model that has a trial: an empty panel says nothing a subtitle cannot
    shown = [(panel, pick) for panel, pick in zip(FIG9_PANELS, picks, strict=True) if pick is not None]
    absent = [value if value != "shallow_sqnxt" else "any shallow_sqnxt model"
              for (_, _, value), pick in zip(FIG9_PANELS, picks, strict=True) if pick is None]
    fig, grid = plt.subplots(1, max(1, len(shown)), figsize=(5 * max(1, len(shown)), 4.6), sharey=True,
                             constrained_layout=True, squeeze=False)
    axes = grid[0]
    if not shown:
        axes[0].text(0.5, 0.5, "not run", ha="center", va="center", transform=axes[0].transAxes, fontsize=12,
                     color="0.4")
        axes[0].set_ylim(0, 100)
    for ax, ((title, _, _), pick) in zip(axes, shown, strict=False):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        curve = ep[ep["trial_id"] == int(pick["id"])].sort_values("epoch")
        # markers: a short study has one or two epochs, which a line alone would not show
        ax.plot(curve["epoch"], curve["train_acc"], label="train", color="#1f77b4", lw=1.6, marker="o", ms=4)
        ax.plot(curve["epoch"], curve["val_acc"], label="validation", color="#d62728", lw=1.6, marker="s", ms=4)
        last = int(curve["epoch"].max()) if len(curve) else 1
        ax.set_xlim(0.5, max(last, 2) + 0.5)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylim(0, 100)
        ax.set_title(f"{title}\n{pick['model_name']}, trial {trial_ref(pick['study'], pick['optuna_trial_number'])}"
                     f"\n{int(pick['epochs'])} ep, {pct(pick['data_fraction'])} of the training pool: "
                     f"val {pick['best_val_acc']:.1f} %, test {pick['test_acc']:.1f} %", fontsize=9)
        ax.legend(loc="lower right", fontsize=9)
    axes[0].set_ylabel("accuracy (%)")
    chosen = pd.DataFrame([p for p in picks if p is not None])
    missing = f"\nnot run yet: {', '.join(absent)} (CIFAR-10)" if absent else ""
    fig.suptitle("Figure 9 analogue: training and validation accuracy per epoch (CIFAR-10), "
                 f"{budget_title(chosen)}{missing}", fontsize=11)
    return _save(fig, path)


def budget_title(done: pd.DataFrame) -> str:
    """'budget: 2 ep x 1,000 train img (2.2 % of the pool), 1,000 test img' (each distinct budget, up to 3)."""
    if done.empty:
        return "budget: no complete trial"
    cols = ["epochs", "train_images", "data_fraction", "test_images"]
    parts = []
    for ep, tr, frac, te in done[cols].astype("object").drop_duplicates().itertuples(index=False):
        img = "? train img" if pd.isna(tr) else f"{int(tr):,} train img"
        test = "" if pd.isna(te) else f", {int(te):,} test img"
        parts.append(f"{int(ep)} ep x {img} ({pct(frac)} of the pool){test}")
    more = f" (+{len(parts) - 3} more)" if len(parts) > 3 else ""
    return ("budget: " if len(parts) == 1 else "budgets: ") + "; ".join(parts[:3]) + more


def _place_labels(ax: plt.Axes, xs, ys, labels, fontsize: float = 6.5) -> None:
    """Greedy label placement in display pixels: for each point (top first) try a ring of offsets and keep the
    one that overlaps earlier labels and other points least and stays inside the axes."""
    fig = ax.figure
    # limits are frozen by the caller and the layout is fixed (no constrained layout): transforms are final
    trans = ax.transData
    frame = ax.bbox.extents  # x0, y0, x1, y1 in pixels
    pts = trans.transform(np.column_stack([xs, ys]))
    px_per_pt = fig.dpi / 72
    char_w, h = fontsize * 0.6 * px_per_pt, fontsize * 1.25 * px_per_pt
    offsets = [(5, 3), (5, -9), (-5, 3), (-5, -9), (5, 12), (-5, 12), (5, -18), (-5, -18),  # points
               (14, 20), (-14, 20), (14, -26), (-14, -26), (22, 0), (-22, 0), (30, 10), (-30, 10),
               (30, -16), (-30, -16), (8, 30), (-8, 30), (8, -36), (-8, -36)]
    placed: list[tuple[float, float, float, float]] = []
    leaders: list[np.ndarray] = []

    def overlap(a, b) -> float:
        return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))

    for (px, py), label in sorted(zip(pts.tolist(), labels, strict=True), key=lambda t: -t[0][1]):
        w = char_w * len(label)
        best = None
        for dx, dy in offsets:
            x0 = px + dx * px_per_pt - (w if dx < 0 else 0)
            box = (x0, py + dy * px_per_pt, x0 + w, py + dy * px_per_pt + h)
            cost = 5 * sum(overlap(box, b) for b in placed)  # label on label is the worst: unreadable
            r = 6 * px_per_pt  # a star's radius: a label must not hide another paper point
            cost += sum(0.5 * w * h for qx, qy in pts
                        if box[0] - r <= qx <= box[2] + r and box[1] - r <= qy <= box[3] + r)
            outside = (max(0.0, frame[0] - box[0]) + max(0.0, box[2] - frame[2])) * h + \
                (max(0.0, frame[1] - box[1]) + max(0.0, box[3] - frame[3])) * w
            cost += 5 * outside + 2 * (abs(dx) + abs(dy))  # prefer near, inside
            if best is None or cost < best[0]:
                best = (cost, (dx, dy), box)
        assert best is not None
        _, (dx, dy), box = best
        placed.append(box)
        # plain text + one LineCollection of leaders (annotate's arrow clipping costs ~10 ms per label)
        tx, ty = trans.inverted().transform((px + dx * px_per_pt, py + dy * px_per_pt))
        ax.text(float(tx), float(ty), label, fontsize=fontsize, ha="left" if dx > 0 else "right", va="bottom")
        ly = py + dy * px_per_pt + (0 if dy >= 0 else h * 0.5)
        leaders.append(trans.inverted().transform([(px, py), (px + dx * px_per_pt, ly)]))
    ax.add_collection(LineCollection(leaders, colors="0.55", linewidths=0.4, zorder=4), autolim=False)


def short_label(model: str) -> str:
    """The paper's row name, short: 'Shallow SqueezeNext-06-0.2x-v1' -> 'SSqNxt-06-0.2x' (a "-v1" is a re-run
    of the same model), 'Squeezed CNN (SqueezeNet implementation)' -> 'Squeezed CNN'."""
    s = str(model).replace("Shallow SqueezeNext-", "SSqNxt-").replace(" (baseline)", "")
    s = s.replace(" (SqueezeNet implementation)", "")
    return s.removesuffix("-v1")


def ours_points(trials: pd.DataFrame) -> pd.DataFrame:
    """Complete CIFAR-10 trials with a test accuracy, with the plotted quantities and ``on_front``.

    ``on_front``: on the project's one Pareto front (``dse.common.pareto_front``, validation accuracy up,
    checkpoint size down), never a front of the test accuracy that is plotted. ``sec_full``: seconds per full
    50,000-image epoch from the trial's measured images per second.
    """
    done = _complete_c10(trials)
    done = done.dropna(subset=["test_acc"]) if len(done) else done
    if done.empty:
        return done.assign(ckpt_mb=[], macs_m=[], sec_full=[], on_front=[], display=[])
    done = done.assign(ckpt_mb=done["checkpoint_bytes"].astype(float) / MB, macs_m=done["macs"].astype(float) / 1e6,
                       sec_full=done["sec_per_epoch"].astype(float) * FULL_EPOCH_IMAGES
                       / done["train_images"].astype(float))
    front = pareto_front(done["best_val_acc"].astype(float).tolist(), done["checkpoint_bytes"].astype(float).tolist())
    return done.assign(on_front=np.isin(np.arange(len(done)), front),
                       display=[display_name_of(m) for m in done["model_name"]])


def _draw_ours(ax: plt.Axes, done: pd.DataFrame, col: str) -> pd.DataFrame:
    """Our trials on one panel, coloured by arch, the Pareto-front trials ringed. On the size panel the front is
    also drawn where it is computed: a step line at the trials' validation accuracy, each joined by a thin line to
    its test accuracy (the dot). Returns the front's trials (to label)."""
    sub = done.dropna(subset=[col])
    sub = sub[sub[col] > 0]
    for arch, grp in sub.groupby("arch", sort=True):
        ax.scatter(grp[col], grp["test_acc"], s=9, alpha=0.45, lw=0, color=ARCH_COLOURS.get(str(arch), "0.5"),
                   label=f"ours: {ARCH_LABELS.get(arch, arch)}", rasterized=True)
    front = sub[sub["on_front"]].sort_values(col)
    if front.empty:
        return front
    ax.scatter(front[col], front["test_acc"], s=36, facecolors="none", edgecolors="black", lw=1.0,
               label="ours: Pareto-front trials (test accuracy)" if col == "ckpt_mb" else None)
    if col == "ckpt_mb":
        val = front["best_val_acc"].astype(float)
        ax.step(front[col], val, where="post", color="black", lw=1.0, ls="--",
                label="ours: Pareto front, at its validation accuracy (where it is computed)")
        ax.vlines(front[col], np.minimum(val, front["test_acc"]), np.maximum(val, front["test_acc"]),
                  colors="0.4", lw=0.5)
    return front


def tradeoff(trials: pd.DataFrame, paper_points: pd.DataFrame, path: Path) -> Path:
    """Accuracy vs checkpoint MB, MACs and s/epoch; Pareto fronts; the paper's points labelled.

    ``paper_points``: columns table, model, model_name, display_name, accuracy_pct, size_mb, sec_per_epoch,
    macs (ours, computed for that architecture), dataset; only CIFAR-10 rows are drawn.
    """
    done = ours_points(trials)
    pp = paper_points[paper_points["dataset"] == "cifar10"].copy() if len(paper_points) else paper_points
    panels = (("checkpoint size (MB, float32 state_dict)", "ckpt_mb", "size_mb"),
              ("MACs per 32x32 image (millions)", "macs_m", "macs_m"),
              ("training seconds per full 50,000-image epoch", "sec_full", "sec_per_epoch"))
    if len(pp):
        pp["macs_m"] = pp["macs"].astype(float) / 1e6
        pp["short"] = [short_label(m) for m in pp["model"]]
    # fixed margins (not constrained layout): label placement needs final transforms without a draw
    fig, axes = plt.subplots(1, 3, figsize=(19, 6.8), sharey=True)
    fig.subplots_adjust(left=0.045, right=0.99, top=0.91, bottom=0.17, wspace=0.06)
    devices = ", ".join(sorted({f"{d} {p}" for d, p in zip(done["device"], done["precision"], strict=True)
                                if isinstance(d, str)})) if len(done) else ""
    to_label = []
    for ax, (xlabel, ours_col, paper_col) in zip(axes, panels, strict=True):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.margins(x=0.1, y=0.05)  # room for the labels of the outermost points
        ax.grid(alpha=0.3, which="both", lw=0.4)
        if len(done):
            front = _draw_ours(ax, done, ours_col)
            if ours_col == "ckpt_mb" and len(front):  # our labelled points: the front's, by their one name
                to_label.append((ax, front[ours_col].to_numpy(float), front["test_acc"].to_numpy(float),
                                 [f"{trial_name(n, i)} {short_label(d)}" for n, i, d in
                                  zip(front["optuna_trial_number"], front["id"], front["display"], strict=True)]))
        # Table 7's speed is on Bluebox2.0, not training s/epoch on the RTX 2080 Ti: left off that panel
        pts = pp if paper_col != "sec_per_epoch" or not len(pp) else pp[pp["table"] != 7]
        if len(pts):
            pts = pts.dropna(subset=[paper_col])
            pts = pts.drop_duplicates(subset=["short", "accuracy_pct", paper_col])
            ax.scatter(pts[paper_col], pts["accuracy_pct"], marker="*", s=90, color="#d62728",
                       edgecolor="black", lw=0.5, zorder=5,
                       label="paper (MACs: ours for that architecture)" if paper_col == "macs_m" else "paper")
            # one label per name and x position (Table 4's five dropout rates share one)
            lab = pts.sort_values("accuracy_pct", ascending=False).drop_duplicates(["short", paper_col])
            to_label.append((ax, lab[paper_col].to_numpy(float), lab["accuracy_pct"].to_numpy(float),
                             list(lab["short"])))
        if not len(done) and not len(pts):
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes, color="0.4")
    # labels last: the shared y limits are final only once every panel has its data
    for ax in axes:
        ax.set_xlim(ax.get_xlim())
    axes[0].set_ylim(axes[0].get_ylim())
    for ax in axes:  # one placement per panel: our labels and the paper's avoid each other
        mine = [t for t in to_label if t[0] is ax]
        if mine:
            _place_labels(ax, np.concatenate([t[1] for t in mine]), np.concatenate([t[2] for t in mine]),
                          [label for t in mine for label in t[3]])
    axes[0].set_ylabel("top-1 test accuracy (%), CIFAR-10 (dashed: validation accuracy of the front)")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(handles), 7), fontsize=8,
                   markerscale=1.5, frameon=False)
    on = f": {devices}" if devices else ""
    fig.suptitle(f"Accuracy trade-offs: {len(done):,} complete CIFAR-10 trials (ours{on}) vs the paper's reported "
                 f"models (full training set; paper speeds: RTX 2080 Ti)\nours at {budget_title(done)}", fontsize=11)
    return _save(fig, path)


def write_figures(trials: pd.DataFrame, paper_points: pd.DataFrame,
                  load_epochs: Callable[[list[int]], pd.DataFrame], out_dir: Path) -> list[Path]:
    """Every figure into ``out_dir`` (Figure 9, the trade-offs, the target's); returns their paths."""
    from dse.figures_target import target_figure

    out_dir = Path(out_dir)
    return [figure9(trials, load_epochs, out_dir / "figure9.png"),
            tradeoff(trials, paper_points, out_dir / "tradeoff.png"),
            target_figure(trials, out_dir / "target.png")]
