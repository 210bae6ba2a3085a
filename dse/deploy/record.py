"""Record a deployment in the results store: one ``dse_deployments`` row per format, the trial's int8 size."""

from __future__ import annotations

from dse.deploy.report import DeployReport


def _runtime_of(fmt: str) -> str:
    """The runtime and its version that runs format ``fmt`` (for rows measured without latency)."""
    if fmt.startswith("onnx"):
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    import torch

    return f"torch {torch.__version__.split('+')[0]}"


def record(store, report: DeployReport) -> None:
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
        store.record_deployment(**values)
    if report.trial_id is not None:
        store.update_trial(report.trial_id, int8_bytes=report.format("onnx_int8").file_bytes)


__all__ = ["record"]
