"""Record a deployment in the results store: one ``dse_deployments`` row per format, the trial's int8 size."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from dse.deploy.report import DeployReport
from dse.store import DeploymentRow, Store, utc_now


def _runtime_of(fmt: str) -> str:
    """The runtime and its version that runs format ``fmt`` (for rows measured without latency)."""
    if fmt.startswith("onnx"):
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    import torch

    return f"torch {torch.__version__.split('+')[0]}"


def _put(store: Store, values: dict[str, Any]) -> None:
    """Insert or replace the measurement of one (trial, model, format, host): deployment is this table's one
    writer."""

    def go() -> None:
        with store.session() as s:
            row = s.scalars(select(DeploymentRow).where(
                DeploymentRow.trial_id == values.get("trial_id"),
                DeploymentRow.model_name == values["model_name"],
                DeploymentRow.format == values["format"],
                DeploymentRow.host == values["host"])).first()
            if row is None:
                s.add(DeploymentRow(**values))
            else:
                for k, v in values.items():
                    setattr(row, k, v)
                row.created_at = utc_now()

    store.retry(go, "recording a deployment")


def record(store: Store, report: DeployReport) -> None:
    """One ``dse_deployments`` row per format (insert or replace); the trial's ``int8_bytes``.

    A run without latency (``--no-latency``) leaves the latency columns of an existing row as they were, so a
    quick re-export does not erase an earlier measurement.
    """
    for r in report.formats:
        values = dict(trial_id=report.trial_id, model_name=report.model_name, format=r.format, path=r.path,
                      file_bytes=r.file_bytes, test_acc=r.test_acc, test_images=r.test_images,
                      max_abs_diff=r.max_abs_diff, threads=1, host=report.host, machine=report.machine,
                      runtime=_runtime_of(r.format))
        if r.latency:
            values.update(p50_ms=r.latency["p50_ms"], p99_ms=r.latency["p99_ms"],
                          peak_mem_bytes=r.latency["peak_mem_bytes"], threads=r.latency["threads"],
                          runtime=r.latency["runtime"])
        _put(store, values)
    if report.trial_id is not None:
        store.update_trial(report.trial_id, int8_bytes=report.format("onnx_int8").file_bytes)


__all__ = ["record"]
