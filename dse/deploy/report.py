"""The results of deploying a model: one row per format, the folder's report.json, and the printed table."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dse import store as st
from dse.common import results_relative


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
    target: dict[str, Any] | None = None  # the trained model against a target's budgets (dse.deploy.fit)

    def format(self, name: str) -> FormatResult:
        """The result of format ``name`` (torch, onnx, torchscript, onnx_int8)."""
        return next(f for f in self.formats if f.format == name)

    def as_json(self) -> dict[str, Any]:
        """The report with the files it made relative to the deploy folder and the checkpoint as the store keeps
        it, relative to results/ (either folder can be moved or copied)."""
        d = asdict(self)

        def rel(p: str) -> str:
            """``p`` relative to the deploy folder, with forward slashes."""
            return Path(os.path.relpath(Path(p).resolve(), Path(self.out).resolve())).as_posix()

        d["out"] = "."
        d["checkpoint"], d["component"] = results_relative(self.checkpoint), rel(self.component)
        for f in d["formats"]:
            f["path"] = rel(f["path"])
        return d


#: Other processes' share of the cores above which a timing is called loaded. The 1-minute load average counts
#: this deploy's own timing process (one busy thread) for up to a minute after it ran, hence the 1 taken off.
LOAD_WARN = 0.5


def load_of(r: FormatResult) -> float | None:
    """The higher 1-minute load average around a format's timing (None when it was not timed)."""
    lat = r.latency or {}
    seen = [v for v in (lat.get("load_before"), lat.get("load_after")) if v is not None]
    return max(seen) if seen else None


def timing_warnings(formats: list[FormatResult], cores: int | None = None) -> list[str]:
    """What a reader of the timings must know: they were taken on a loaded host; int8 ran slower than float32."""
    cores = cores or os.cpu_count() or 1
    out = []
    worst = max((v for v in map(load_of, formats) if v is not None), default=None)
    if worst is not None and worst - 1 > LOAD_WARN * cores:
        out.append(f"latency measured under load (1-minute load average up to {worst:.1f} on {cores} cores): other "
                   "processes shared the CPU, so the timings are inflated; time it again on a quiet host")
    lat = {r.format: r.latency for r in formats if r.latency}
    if "onnx_int8" in lat and "onnx" in lat and lat["onnx_int8"]["p50_ms"] > lat["onnx"]["p50_ms"]:
        out.append(f"int8 is slower than float32 on this host ({lat['onnx_int8']['p50_ms']:.2f} vs "
                   f"{lat['onnx']['p50_ms']:.2f} ms p50): its runtime has no fast int8 kernels for these layers on "
                   "this CPU; int8 still needs a quarter of the flash")
    return out


def summary(reports: list[DeployReport]) -> str:
    """A plain-text table: one row per model and format."""
    from tabulate import tabulate

    rows = []
    for rep in reports:
        for r in rep.formats:
            lat = r.latency or {}
            peak = lat.get("peak_mem_bytes")
            first = r.format == "torch"
            number = "" if rep.optuna_trial_number is None else st.trial_name(rep.optuna_trial_number)
            rows.append([rep.model_name if first else "", number if first else "", r.format,
                         f"{r.file_bytes / 1000:.1f}", f"{r.test_acc:.2f}", f"{r.agreement:.2f}",
                         f"{r.max_abs_diff:.1e}",
                         f"{lat['p50_ms']:.3f}" if lat else "-", f"{lat['p99_ms']:.3f}" if lat else "-",
                         f"{peak / 1e6:.1f}" if peak is not None else "-",
                         f"{load_of(r):.1f}" if load_of(r) is not None else "-"])
    headers = ["model", "trial", "format", "file kB", "test acc %", "same top-1 %", "max|dlogit|", "p50 ms",
               "p99 ms", "peak MB", "load"]
    text = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    if reports:
        rep = reports[0]
        n = rep.formats[0].test_images
        text += (f"\n{n} test images; latency: batch 1, 1 thread, host {rep.host}, {rep.machine}; "
                 "kB = 1000 bytes; peak MB = peak RSS added by loading and running the model; load = the host's "
                 "1-minute load average around the timing")
    for rep in reports:
        text += "".join(f"\nwarning: {rep.model_name}: {w}" for w in timing_warnings(rep.formats))
    from dse.deploy.fit import lines

    for rep in reports:
        if rep.target:
            text += "".join(f"\n{rep.model_name}: {line}" for line in lines(rep.target))
    return text


__all__ = ["LOAD_WARN", "DeployReport", "FormatResult", "load_of", "summary", "timing_warnings"]
