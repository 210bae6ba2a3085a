"""``target.png``: validation accuracy against what a board limits, batch-1 latency and peak RAM, with the Pareto
front of each panel computed and drawn on that panel's own axes.

Every complete CIFAR-10 trial that recorded the fact (``dse.target``: peak int8 activation bytes always, latency
when the study's target measured it) is a dot coloured by arch; the front (validation accuracy up, the panel's x
down: ``dse.common.pareto_front`` with that x as the size) is a step line, its trials labelled by their one name.
Validation accuracy, not test: the front is what the search chooses by, so it is drawn where it was chosen. The
latency is the untrained network's on the host that planned the study, not the board's.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.ticker
import numpy as np
import pandas as pd

from dse.common import pareto_front
from dse.figures import ARCH_COLOURS, ARCH_LABELS, _complete_c10, _place_labels, _save, budget_title, plt, short_label
from dse.models.registry import display_name_of
from dse.store import trial_name

#: (column, x label, scale to the plotted unit)
PANELS = (("latency_p50_ms", "batch-1 latency p50 (ms; untrained network, ONNX Runtime, 1 thread, this host)", 1.0),
          ("ram_bytes_int8", "peak activation memory, one image, int8 (KB)", 1e-3))


def _panel(ax: plt.Axes, done: pd.DataFrame, col: str, xlabel: str, scale: float) -> None:
    sub = done.dropna(subset=[col, "best_val_acc"])
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3, which="both", lw=0.4)
    if sub.empty:
        ax.text(0.5, 0.5, f"no trial recorded {col}", ha="center", va="center", transform=ax.transAxes, color="0.4")
        return
    x = sub[col].astype(float) * scale
    for arch, grp in sub.assign(_x=x).groupby("arch", sort=True):
        ax.scatter(grp["_x"], grp["best_val_acc"], s=10, alpha=0.5, lw=0, color=ARCH_COLOURS.get(str(arch), "0.5"),
                   label=f"ours: {ARCH_LABELS.get(arch, arch)}", rasterized=True)
    front = sub.iloc[pareto_front(sub["best_val_acc"].astype(float).tolist(), x.tolist())]
    fx = front[col].astype(float) * scale
    ax.step(fx, front["best_val_acc"], where="post", color="black", lw=1.0, label="Pareto front (this panel)")
    ax.scatter(fx, front["best_val_acc"], s=36, facecolors="none", edgecolors="black", lw=1.0)
    ax.margins(x=0.1, y=0.08)
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    labels = [f"{trial_name(n, i)} {short_label(display_name_of(m))}"
              for n, i, m in zip(front["optuna_trial_number"], front["id"], front["model_name"], strict=True)]
    _place_labels(ax, fx.to_numpy(float), front["best_val_acc"].to_numpy(float), labels)


def target_figure(trials: pd.DataFrame, path: Path) -> Path:
    """The two panels into ``path`` (PNG); panels without data say so."""
    done = _complete_c10(trials)
    for col, _, _ in PANELS:
        if col not in done.columns:
            done = done.assign(**{col: np.nan})
    fig, axes = plt.subplots(1, 2, figsize=(14, 6), sharey=True)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.88, bottom=0.2, wspace=0.06)
    for ax, (col, xlabel, scale) in zip(axes, PANELS, strict=True):
        _panel(ax, done, col, xlabel, scale)
    axes[0].set_ylabel("top-1 validation accuracy (%), CIFAR-10")
    handles, labels = axes[1].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.suptitle(f"What a board limits: {len(done):,} complete CIFAR-10 trials\nours at {budget_title(done)}",
                 fontsize=11)
    return _save(fig, path)


__all__ = ["target_figure"]
