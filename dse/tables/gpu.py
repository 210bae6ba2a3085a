"""Which paper rows the default CPU study leaves out on purpose: they read "GPU budget" with the command to run them.

Read from the configs as data, never from a list of row names here:

- the GPU experiment ``dse/experiments/cpu_gpu.yaml`` (the rows the CPU default does not train): the points of its
  search blocks (``model.name``, ``model.dropout``, ``optimizer.name``, ``data.dataset``); a paper row of any table
  with the same model, dropout, optimizer and dataset (the same training config: Table 3 repeats rows of Tables 1
  and 2) is a GPU row, run by ``python -m dse.sweep experiment=cpu_gpu budget=paper trainer=gpu``;
- a list under a ``gpu_only_models`` key anywhere in ``dse/experiments/*.yaml`` or ``dse/conf/budget/*.yaml``:
  every row of such a model is a GPU row, run per table by
  ``python -m dse.sweep experiment=tableN budget=paper trainer=gpu``.

Neither present (an older checkout, a custom config) means no row is marked: the rows nobody ran read "not run".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dse.common import PACKAGE

#: The experiment holding the rows that only a GPU budget trains.
GPU_EXPERIMENT = "cpu_gpu"
#: The key under which an experiment or budget YAML lists models too heavy for the default CPU study.
GPU_ONLY_KEY = "gpu_only_models"


@dataclass(frozen=True)
class GpuRows:
    """The GPU rows: search points of the GPU experiment, and whole models."""

    points: tuple[dict, ...] = ()  # search points of the GPU experiment: {model.name: ..., ...}
    models: frozenset[str] = frozenset()
    experiment: str | None = None  # the GPU experiment's name when its file exists

    def command(self, table: int) -> str:
        """The exact command that trains the GPU rows of ``table``."""
        exp = self.experiment or f"table{table}"
        return f"python -m dse.sweep experiment={exp} budget=paper trainer=gpu"

    def mask(self, paper: pd.DataFrame) -> np.ndarray:
        """Per paper row: is it a GPU row? (columns table, model_name, dropout, optimizer)"""
        return np.array([r.model_name in self.models or any(_same(p, r) for p in self.points)
                         for r in paper.itertuples(index=False)], dtype=bool)


def _same(point: dict, row) -> bool:
    """A search point is this paper row's config: same model, dataset, dropout and optimizer (a value the row
    leaves free must be left free by the point too: it is then the default on both sides)."""
    drop, opt = getattr(row, "dropout", None), getattr(row, "optimizer", None)
    drop = None if drop is None or pd.isna(drop) else float(drop)
    opt = opt if isinstance(opt, str) and opt else None
    want_drop = point.get("model.dropout")
    same_drop = (want_drop is None and drop is None) or (
        want_drop is not None and drop is not None and math.isclose(float(want_drop), drop, abs_tol=1e-9))
    return (point.get("model.name") == row.model_name and same_drop and point.get("optimizer.name") == opt
            and point.get("data.dataset", "cifar10") == getattr(row, "dataset", "cifar10"))


def _load(path: Path):
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _find_key(node, key: str) -> list[str]:
    if isinstance(node, dict):
        found = [str(m) for m in node[key]] if isinstance(node.get(key), list) else []
        return found + [m for v in node.values() for m in _find_key(v, key)]
    return []


def gpu_rows(root: Path = PACKAGE) -> GpuRows:
    """The GPU rows the configs under ``root`` declare (see the module docstring)."""
    models: set[str] = set()
    for path in sorted([*root.glob("experiments/*.yaml"), *root.glob("conf/budget/*.yaml")]):
        models.update(_find_key(_load(path), GPU_ONLY_KEY))
    exp_path = root / "experiments" / f"{GPU_EXPERIMENT}.yaml"
    cfg = _load(exp_path) if exp_path.exists() else None
    blocks = ((cfg or {}).get("search") or {}).get("blocks") or {} if isinstance(cfg, dict) else {}
    points = tuple(p for block in blocks.values() if isinstance(block, dict)
                   for p in block.get("points") or [] if isinstance(p, dict))
    return GpuRows(points, frozenset(models), GPU_EXPERIMENT if cfg is not None else None)


__all__ = ["GPU_EXPERIMENT", "GPU_ONLY_KEY", "GpuRows", "gpu_rows"]
