"""Which store trials the command line chooses: ``select``'s rules applied to the store, latency measured when
a budget needs it (``select`` itself stays pure: no store, no measurement)."""

from __future__ import annotations

import logging
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dse.deploy import DeployError
from dse.deploy import select as sel
from dse.deploy.inputs import load_checkpoint, pick_test_images
from dse.deploy.options import Options
from dse.deploy.select import Candidate

log = logging.getLogger("dse.deploy")


def latency_probe(cand: Candidate, fmt: str, stat: str, opts: Options, store, bundle_for) -> float:
    """A candidate's latency in ms: the store's measurement on this host if any, else measured now."""
    if store is not None and cand.trial_id is not None:
        df = store.deployments([cand.trial_id])
        df = df[(df["format"] == fmt) & (df["host"] == socket.gethostname()) & (df["threads"] == 1)]
        col = f"{stat}_ms"
        if len(df) and df[col].notna().any():
            ms = float(df[col].dropna().iloc[-1])
            log.info("%s: %s %s %.3f ms (stored measurement)", cand.label, fmt, stat, ms)
            return ms
    from dse.deploy import export, latency, quantize

    model, spec = load_checkpoint(cand)
    bundle = bundle_for(cand)
    feed = export.preprocess(pick_test_images(bundle, 16)[0]).numpy()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        if fmt == "torchscript":
            path = export.export_torchscript(model, d / "m.pt")
        else:
            path = export.export_onnx(model, d / "m.onnx", opset=opts.opset, compact=fmt != "onnx_int8")
            if fmt == "onnx_int8":
                calib = quantize.calibration_images(bundle.train_x.cpu(), bundle.train_y.cpu(),
                                                    opts.calib_images)
                pc = opts.per_channel if opts.per_channel != "auto" else True
                path = quantize.quantize_int8(path, d / "m.int8.onnx", calib, per_channel=pc).path
        res = latency.measure(fmt, path, feed, warmup=opts.warmup, runs=opts.runs)
    ms = res.p50_ms if stat == "p50" else res.p99_ms
    log.info("%s: %s %s %.3f ms (measured)", cand.label, fmt, stat, ms)
    return ms


def _under_latency(cands: list[Candidate], max_ms: float, pareto: bool,
                   probe: Callable[[Candidate], float]) -> list[Candidate]:
    """Of the Pareto front every trial within ``max_ms``; otherwise the most accurate one within it."""
    if pareto:
        kept = [c for c in cands if probe(c) <= max_ms]
        if not kept:
            raise DeployError(f"no Pareto-front trial meets the latency budget of {max_ms} ms")
        return kept
    winner, _ = sel.first_under_latency(cands, max_ms, probe)
    return [winner]


def from_store(store, opts: Options, bundle_for: Callable[[Candidate], Any], *, study: str | None,
               trials: list[int] | None, pareto: bool, max_size: str | None, max_latency_ms: float | None,
               latency_stat: str) -> list[Candidate]:
    """The trials to deploy: those numbered ``trials``, else the best (or the Pareto front) within the budgets."""
    rows = store.trials(study=study)
    if trials:
        return sel.trials_by_number(rows, trials)
    cands = sel.candidates(rows[rows["status"] == "complete"] if len(rows) else rows)
    where = f"study {study!r}" if study else "the store"
    if not cands:
        from dse.store import redact

        studies = ", ".join(store.studies()) or "none"
        raise DeployError(f"no complete trial with a checkpoint in {where} ({redact(store.url)}; "
                          f"studies: {studies})")
    if max_size is not None:
        cands = sel.under_size(cands, sel.parse_size(max_size))
    if pareto:
        cands = sel.pareto_front(cands)
    if max_latency_ms is not None:
        fmt = opts.component_format

        def probe(c: Candidate) -> float:
            """``c``'s latency (``latency_stat``, ms) in the component's format."""
            return latency_probe(c, fmt, latency_stat, opts, store, bundle_for)

        return _under_latency(cands, max_latency_ms, pareto, probe)
    return cands if pareto else [sel.best(cands)]


__all__ = ["from_store", "latency_probe"]
