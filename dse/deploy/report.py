"""The results of deploying a model: one row per format, the folder's report.json, and the printed table."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FormatResult:
    """One format of a deployed model: its file, its test score and agreement with PyTorch, its latency."""

    format: str
    path: str
    file_bytes: int
    test_acc: float
    test_images: int
    max_abs_diff: float
    agreement: float  # % of test images whose top-1 equals PyTorch's
    latency: dict[str, Any] | None = None


@dataclass
class DeployReport:
    """Everything measured and written for one deployed model (report.json, the store's rows)."""

    model_name: str
    display_name: str
    trial_id: int | None  # the store's row id (dse_deployments.trial_id)
    optuna_trial_number: int | None  # what optuna-dashboard and the tables show
    study: str | None
    checkpoint: str
    out: str
    component: str
    component_model: str
    runtime: str
    stored_test_acc: float | None
    best_val_acc: float | None
    host: str
    machine: str
    int8_per_channel: bool
    int8_calibration_images: int
    int8_choice: dict[str, float]
    formats: list[FormatResult] = field(default_factory=list)

    def format(self, name: str) -> FormatResult:
        """The result of format ``name`` (torch, onnx, torchscript, onnx_int8)."""
        return next(f for f in self.formats if f.format == name)

    def as_json(self) -> dict[str, Any]:
        """The report with every path relative to the deploy folder (the folder can be moved or copied)."""
        d = asdict(self)

        def rel(p: str) -> str:
            """``p`` relative to the deploy folder, with forward slashes."""
            return Path(os.path.relpath(Path(p).resolve(), Path(self.out).resolve())).as_posix()

        d["out"] = "."
        d["checkpoint"], d["component"] = rel(self.checkpoint), rel(self.component)
        for f in d["formats"]:
            f["path"] = rel(f["path"])
        return d


def summary(reports: list[DeployReport]) -> str:
    """A plain-text table: one row per model and format."""
    from tabulate import tabulate

    rows = []
    for rep in reports:
        for r in rep.formats:
            lat = r.latency or {}
            peak = lat.get("peak_mem_bytes")
            first = r.format == "torch"
            number = "" if rep.optuna_trial_number is None else rep.optuna_trial_number
            rows.append([rep.model_name if first else "", number if first else "", r.format,
                         f"{r.file_bytes / 1000:.1f}", f"{r.test_acc:.2f}", f"{r.agreement:.2f}",
                         f"{r.max_abs_diff:.1e}",
                         f"{lat['p50_ms']:.3f}" if lat else "-", f"{lat['p99_ms']:.3f}" if lat else "-",
                         f"{peak / 1e6:.1f}" if peak is not None else "-"])
    headers = ["model", "trial", "format", "file kB", "test acc %", "same top-1 %", "max|dlogit|", "p50 ms",
               "p99 ms", "peak MB"]
    text = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    if reports:
        rep = reports[0]
        n = rep.formats[0].test_images
        text += (f"\n{n} test images; latency: batch 1, 1 thread, host {rep.host}, {rep.machine}; "
                 "kB = 1000 bytes; peak MB = peak RSS added by loading and running the model")
    return text


__all__ = ["DeployReport", "FormatResult", "summary"]
