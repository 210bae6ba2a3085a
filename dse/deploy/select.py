"""Which trials to deploy: pure functions over the store's trials (no export, no measurement here).

A trial qualifies when it is complete, has a validation accuracy and a checkpoint path. Models are ranked by
``best_val_acc`` (search on validation, report on test: choosing on the test set would leak it into the
reported number); ties go to the smaller checkpoint, then to the older trial. The test accuracy is only
reported. The Pareto front is ``dse.common.pareto_front`` (validation accuracy up, checkpoint size down), the
one definition the sweep summary and the tables' figure use too.

Size budgets are parsed by ``parse_size`` with decimal units (KB = 1000 bytes, MB = 1000**2 bytes, as the
paper's "272KB" and "0.272 MB" are the same number); binary units are spelled KiB / MiB.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from dse import store as st
from dse.common import pareto_front as front_indices
from dse.deploy import DeployError

_UNITS = {"": 1, "b": 1, "byte": 1, "bytes": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_SIZE_RE = re.compile(r"^\s*(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[a-zA-Z]*)\s*$")


def parse_size(text: str | int | float) -> int:
    """Bytes in a size budget: "272KB" -> 272000, "0.3MB" -> 300000, "2048" / "2048B" -> 2048, "1KiB" -> 1024.

    Decimal units (KB = 1000 bytes) as in the paper's "272KB"; KiB/MiB/GiB are binary. Raises DeployError.
    """
    if isinstance(text, bool):
        raise DeployError(f"size budget must be a number of bytes or e.g. '272KB', got {text!r}")
    if isinstance(text, (int, float)):
        if not math.isfinite(text) or text <= 0:
            raise DeployError(f"size budget must be > 0 bytes, got {text!r}")
        return int(text)
    m = _SIZE_RE.match(str(text))
    unit = m["unit"].lower() if m else None
    if m is None or unit not in _UNITS:
        raise DeployError(f"size budget {text!r} is not a size; use e.g. 272KB, 0.3MB, 2048 (bytes) or 1KiB "
                          f"(units: B, KB, MB, GB = powers of 1000; KiB, MiB, GiB = powers of 1024)")
    value = float(m["num"]) * _UNITS[unit]
    if value < 1:
        raise DeployError(f"size budget must be at least 1 byte, got {text!r}")
    return int(value)


@dataclass(frozen=True)
class Candidate:
    """One trained model that may be deployed: a store trial, or a checkpoint named on the command line."""

    model_name: str
    checkpoint_path: str
    trial_id: int | None = None
    study: str | None = None
    best_val_acc: float | None = None  # percent
    test_acc: float | None = None  # percent, as the trial recorded it (test images at the best-val epoch)
    checkpoint_bytes: int | None = None
    macs: int | None = None
    dataset: str = "cifar10"
    data_source: str | None = None  # where the trial's images came from, e.g. "imagefolder:/path"
    optuna_number: int | None = None  # Optuna's trial number in its study: what optuna-dashboard shows
    epochs: int | None = None  # the budget it was trained at
    train_images: int | None = None
    params: int | None = None
    ram_bytes_int8: int | None = None  # peak activations the search counted (dse.models.footprint)
    latency_p99_ms: float | None = None  # the untrained network's, measured at planning (dse.deploy.facts)
    expected: dict[str, Any] = field(default_factory=dict, compare=False)  # spec fields the store recorded

    @property
    def label(self) -> str:
        """Folder-friendly name: ``<trial name>-<model>``, the name the sweep log, the checkpoint folder,
        optuna-dashboard and the tables give the trial (``dse.store.trial_name``); ``<model>`` for a bare
        checkpoint."""
        if self.optuna_number is None and self.trial_id is None:
            return self.model_name
        return f"{st.trial_name(self.optuna_number, self.trial_id)}-{self.model_name}"


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _candidate(row: dict[str, Any]) -> Candidate:
    expected = {k: row[k] for k in ("activation", "num_classes", "dropout") if row.get(k) is not None}
    try:
        cfg = json.loads(row.get("config_json") or "{}")
        model_cfg = cfg.get("model") if isinstance(cfg, dict) else None
        if isinstance(model_cfg, dict):  # the resolved ModelSpec, when the sweep stored one
            expected.update({k: model_cfg[k] for k in ("activation", "num_classes", "dropout")
                             if model_cfg.get(k) is not None})
    except (TypeError, ValueError):
        pass
    def whole(key: str) -> int | None:
        v = _num(row.get(key))
        return None if v is None else int(v)

    return Candidate(
        model_name=str(row["model_name"]),
        checkpoint_path=str(row.get("checkpoint_path") or ""),
        trial_id=int(row["id"]),
        study=row.get("study"),
        best_val_acc=_num(row.get("best_val_acc")),
        test_acc=_num(row.get("test_acc")),
        checkpoint_bytes=whole("checkpoint_bytes"),
        macs=whole("macs"),
        dataset=str(row.get("dataset") or "cifar10"),
        data_source=row.get("data_source"),
        optuna_number=whole("optuna_trial_number"),
        epochs=whole("epochs"),
        train_images=whole("train_images"),
        params=whole("params"),
        ram_bytes_int8=whole("ram_bytes_int8"),
        latency_p99_ms=_num(row.get("latency_p99_ms")),
        expected=expected,
    )


def candidates(trials: pd.DataFrame) -> list[Candidate]:
    """Deployable trials (complete, with a validation accuracy and a checkpoint), best first."""
    out = []
    for row in trials.to_dict("records"):
        if row.get("status", "complete") != "complete":
            continue
        if _num(row.get("best_val_acc")) is None or not row.get("checkpoint_path"):
            continue
        out.append(_candidate(row))
    return rank(out)


def rank(cands: Iterable[Candidate]) -> list[Candidate]:
    """Highest validation accuracy first; ties: smaller checkpoint, then lower trial id."""
    return sorted(cands, key=lambda c: (-(c.best_val_acc or -1.0),
                                        c.checkpoint_bytes if c.checkpoint_bytes is not None else math.inf,
                                        c.trial_id if c.trial_id is not None else math.inf))


def best(cands: list[Candidate]) -> Candidate:
    """The most accurate candidate (validation accuracy)."""
    if not cands:
        raise DeployError("no complete trial with a validation accuracy and a checkpoint to choose from")
    return rank(cands)[0]


def pareto_front(cands: list[Candidate]) -> list[Candidate]:
    """Trials no other trial beats on both objectives (``dse.common.pareto_front``: max validation accuracy,
    min checkpoint bytes; of exact ties the older trial), returned best first."""
    if not cands:
        raise DeployError("no complete trial with a validation accuracy and a checkpoint to choose from")
    ordered = rank(cands)  # ties keep the first: rank puts the older trial first
    keep = front_indices([c.best_val_acc for c in ordered], [c.checkpoint_bytes for c in ordered])
    return rank(ordered[i] for i in keep)


def under_size(cands: list[Candidate], max_bytes: int) -> list[Candidate]:
    """Candidates whose float32 checkpoint (the paper's "model size") is at most ``max_bytes``; best first."""
    kept = [c for c in cands if c.checkpoint_bytes is not None and c.checkpoint_bytes <= max_bytes]
    if not kept:
        sizes = sorted(c.checkpoint_bytes for c in cands if c.checkpoint_bytes is not None)
        smallest = f"the smallest is {sizes[0]} bytes" if sizes else "no trial has a recorded size"
        raise DeployError(f"no trial has a checkpoint of at most {max_bytes} bytes ({smallest}, "
                          f"{len(cands)} candidates)")
    return rank(kept)


def first_under_latency(cands: list[Candidate], max_ms: float,
                        latency_ms: Callable[[Candidate], float]
                        ) -> tuple[Candidate, list[tuple[Candidate, float]]]:
    """The most accurate candidate whose latency is at most ``max_ms``.

    ``latency_ms`` measures (or looks up) one candidate; candidates are tried in order of accuracy and the
    search stops at the first that passes, so at most one measurement per more accurate model is spent.
    Returns the winner and every (candidate, latency) tried. Raises DeployError when none passes.
    """
    if not math.isfinite(max_ms) or max_ms <= 0:
        raise DeployError(f"latency budget must be > 0 ms, got {max_ms!r}")
    tried: list[tuple[Candidate, float]] = []
    for c in rank(cands):
        ms = float(latency_ms(c))
        tried.append((c, ms))
        if ms <= max_ms:
            return c, tried
    shown = ", ".join(f"{c.label} {ms:.3f} ms" for c, ms in tried[:5]) + (" ..." if len(tried) > 5 else "")
    raise DeployError(f"no trial meets the latency budget of {max_ms} ms ({shown})")


def trials_by_number(trials: pd.DataFrame, numbers: list[int]) -> list[Candidate]:
    """The trials with these Optuna trial numbers (what optuna-dashboard and the tables show), in the order
    asked; DeployError names a number that is missing, ambiguous across studies (pass --study) or unusable."""
    rows = trials.to_dict("records")
    out = []
    for n in numbers:
        hits = [r for r in rows if _num(r.get("optuna_trial_number")) == int(n)]
        if not hits:
            known = sorted({int(v) for v in (_num(r.get("optuna_trial_number")) for r in rows) if v is not None})
            shown = (f"{known[0]}..{known[-1]}" if len(known) > 10 else ", ".join(map(str, known))) or "none"
            raise DeployError(f"trial {n} does not exist in the store (Optuna trial numbers: {shown})")
        if len(hits) > 1:
            studies = ", ".join(sorted({str(r["study"]) for r in hits}))
            raise DeployError(f"trial {n} is in several studies ({studies}); name one with --study")
        row = hits[0]
        if row.get("status") != "complete":
            raise DeployError(f"trial {n} ({row['model_name']}) is {row.get('status')}, not complete")
        if not row.get("checkpoint_path"):
            raise DeployError(f"trial {n} ({row['model_name']}) has no checkpoint path")
        out.append(_candidate(row))
    return out


__all__ = ["Candidate", "best", "candidates", "first_under_latency", "pareto_front", "parse_size", "rank",
           "trials_by_number", "under_size"]
