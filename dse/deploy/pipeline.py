"""Deploy chosen models: export, verify, quantize, score, time, package and record each, one folder each."""

from __future__ import annotations

import logging
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dse.common import RESULTS
from dse.deploy import DeployError
from dse.deploy.chance import refuse_near_chance
from dse.deploy.inputs import load_checkpoint, pick_test_images, resolve_checkpoint
from dse.deploy.options import Options
from dse.deploy.package import FORMAT_FILES, package
from dse.deploy.progress import Steps
from dse.deploy.record import record
from dse.deploy.report import DeployReport, FormatResult, timing_warnings
from dse.deploy.select import Candidate

log = logging.getLogger("dse.deploy")

DEFAULT_OUT = RESULTS / "deploy"


def _export_and_score(model, cand: Candidate, bundle, opts: Options, test_x, test_y, steps: Steps):
    """Every format exported, verified against PyTorch and scored on the test images: (results, int8 result)."""
    import numpy as np
    import onnx

    from dse.deploy import export, quantize

    out = Path(opts.out)
    steps.start("score PyTorch")
    ref = export.logits_torch(model, test_x)
    ref_top, n = ref.argmax(1), len(test_y)
    ckpt = resolve_checkpoint(cand)
    results = [FormatResult("torch", str(ckpt), ckpt.stat().st_size, export.accuracy(ref, test_y), n, 0.0,
                            100.0)]
    refuse_near_chance(cand.label, results[0].test_acc, ref.shape[1], opts.force)
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused model leaves no folder behind
    steps.finish()

    def add(fmt: str, path: Path, logits, diff: float) -> None:
        """Append format ``fmt``'s result: its file, test accuracy and top-1 agreement with PyTorch (%)."""
        same = float((logits.argmax(1) == ref_top).mean() * 100.0)
        results.append(FormatResult(fmt, str(path), path.stat().st_size, export.accuracy(logits, test_y), n,
                                    diff, same))

    with tempfile.TemporaryDirectory(prefix=".work-", dir=out) as work_dir:  # intermediate files
        work = Path(work_dir)
        steps.start("export + verify ONNX")
        # the quantizer needs the export with PyTorch's tensor names (see quantize.quantize_int8)
        raw_onnx = export.export_onnx(model, work / "raw.onnx", opset=opts.opset, compact=False)
        onnx_path = export.save_onnx(export.compact_names(onnx.load(str(raw_onnx))), out / FORMAT_FILES["onnx"])
        lo = export.logits_onnx(onnx_path, test_x)
        add("onnx", onnx_path, lo, export.verify(ref, lo, what=f"ONNX export {onnx_path}", atol=opts.atol))
        steps.finish()
        steps.start("export + verify TorchScript")
        ts_path = export.export_torchscript(model, out / FORMAT_FILES["torchscript"])
        lt = export.logits_torchscript(ts_path, test_x)
        add("torchscript", ts_path, lt,
            export.verify(ref, lt, what=f"TorchScript export {ts_path}", atol=opts.atol))
        steps.finish()
        steps.start("quantize int8")
        calib = quantize.calibration_images(bundle.train_x.cpu(), bundle.train_y.cpu(), opts.calib_images)
        check = bundle.val_x[:quantize.CHECK_IMAGES].cpu() if len(bundle.val_x) else None
        per_channel = opts.per_channel if check is not None or opts.per_channel != "auto" else True
        q = quantize.quantize_int8(raw_onnx, out / FORMAT_FILES["onnx_int8"], calib, per_channel=per_channel,
                                   check=check)
        steps.finish()
    steps.start("score int8")
    lq = export.logits_onnx(q.path, test_x)
    add("onnx_int8", q.path, lq, float(np.max(np.abs(lq.astype(np.float64) - ref))))
    steps.finish()
    log.info("%s: int8 (%s) %d bytes, calibrated on %d training images", cand.label,
             "per-channel" if q.per_channel else "per-tensor", q.file_bytes, q.calibration_images)
    return results, q


def _time_formats(model, spec, cand: Candidate, results: list[FormatResult], test_x, opts: Options,
                  steps: Steps) -> None:
    """Batch-1, one-thread latency of every format (each in a fresh process), into ``results``."""
    from dse.deploy import export, latency

    feed = export.preprocess(test_x[:16]).numpy()
    with tempfile.TemporaryDirectory() as d:
        paths = {r.format: Path(r.path) for r in results}
        paths["torch"] = latency.save_eager(model, spec, Path(d) / "eager.pt")
        for r in results:
            steps.start(f"time {r.format}")
            res = latency.measure(r.format, paths[r.format], feed, warmup=opts.warmup, runs=opts.runs)
            r.latency = res.to_dict()
            steps.finish()
            log.info("%s: %-11s p50 %.3f ms  p99 %.3f ms", cand.label, r.format, res.p50_ms, res.p99_ms)


def deploy_model(model, spec, cand: Candidate, bundle, opts: Options, store=None) -> DeployReport:
    """Export, verify, quantize, score, time and package one model; record it in ``store`` if given.

    DeployError before anything is written to the store when the model is within CHANCE_MARGIN_POINTS of
    chance on the test images (unless ``opts.force``).
    """
    from dse.deploy import latency

    if spec.num_classes != bundle.num_classes:
        raise DeployError(f"{cand.label}: the model has {spec.num_classes} classes, the data "
                          f"{bundle.num_classes}")
    n = min(int(opts.test_images), len(bundle.test_y))
    if n < 1:
        raise DeployError(f"--test-images must be >= 1, got {opts.test_images}")
    test_x, test_y = pick_test_images(bundle, n)
    t0 = time.perf_counter()
    steps = Steps(cand.label, opts.latency)
    results, q = _export_and_score(model, cand, bundle, opts, test_x, test_y, steps)
    log.info("%s: exported, verified and scored on %d test images (%.1f s)", cand.label, n,
             time.perf_counter() - t0)
    if opts.latency:
        _time_formats(model, spec, cand, results, test_x, opts, steps)
        for w in timing_warnings(results):
            log.warning("%s: %s", cand.label, w)
    steps.start("package")
    report = DeployReport(
        model_name=spec.name, display_name=spec.display_name, trial_id=cand.trial_id,
        optuna_trial_number=cand.optuna_number, study=cand.study, checkpoint=results[0].path, out=str(opts.out),
        component="", component_model="", runtime=opts.runtime, stored_test_acc=cand.test_acc,
        best_val_acc=cand.best_val_acc, host=socket.gethostname(), machine=latency.machine(),
        int8_per_channel=q.per_channel, int8_calibration_images=q.calibration_images, int8_choice=q.tried,
        formats=results)
    if opts.target:
        from dse.deploy import fit

        report.target = fit.check(report, spec, cand, opts.target)
        for line in fit.lines(report.target):
            (log.info if report.target["fits"] is not False else log.warning)("%s: %s", cand.label, line)
    package(report, spec, cand, bundle, opts)
    steps.finish()
    if store is not None:
        record(store, report)
    return report


def deploy_all(chosen: list[Candidate], out: Path | None, opts: Options, bundle_for: Callable[[Candidate], Any],
               store=None) -> list[DeployReport]:
    """Deploy each candidate into ``out`` (one model), ``out/<label>`` (several) or DEFAULT_OUT/<label>."""
    reports = []
    for c in chosen:
        if out is None:
            folder = DEFAULT_OUT / c.label
        else:
            folder = out if len(chosen) == 1 else out / c.label
        classes = c.expected.get("num_classes")
        if c.test_acc is not None and classes:  # the store knows it did not learn: refuse before any work
            refuse_near_chance(c.label, float(c.test_acc), int(classes), opts.force)
        model, spec = load_checkpoint(c)
        opts.out = folder
        reports.append(deploy_model(model, spec, c, bundle_for(c), opts, store=store))
    return reports


__all__ = ["DEFAULT_OUT", "deploy_all", "deploy_model"]
