"""Batch-1 latency of each architecture before training: the untrained network, measured as ``dse.deploy`` measures
a trained one.

Latency depends on the graph (layers, shapes, operators), not on the weights' values: an untrained network runs
the same kernels on the same shapes, so measuring it before training is honest. Each architecture is exported to
float32 ONNX (``dse.deploy.export``) and timed by ``dse.deploy.latency`` in a fresh process: ONNX Runtime, one
intra-op thread, sequential execution, batch 1, ``warmup`` untimed runs then ``runs`` timed ones (p50 and p99 in
ms; with the default 100 runs p99 is the second slowest run). All architectures still unmeasured go through one
child process, which imports the runtime once. The inputs are seeded normal noise (the values do not change a
convolution's work).

This is the latency on THIS host's CPU, not on the board: it ranks architectures on the board's kind of runtime
(one thread, batch 1), it does not predict the board's milliseconds.

Cached like ``dse.models.model_facts``, in ``<cache>/latency-v1-<runtime>-<host>.json``, keyed by architecture
(dropout left out: it does nothing at inference), input size and the timing settings: another host or runtime
version measures again.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dse.common import cache_root, progress_every, read_json_cache, update_json_cache
from dse.models.registry import ModelSpec

log = logging.getLogger("dse.deploy")

RUNS, WARMUP = 100, 10  # timed and untimed batch-1 runs per architecture (each a few ms on a desktop core)
IMAGES = 4  # distinct noise images cycled through


@dataclass(frozen=True)
class LatencyFacts:
    p50_ms: float
    p99_ms: float
    runtime: str  # "onnxruntime 1.31.1"
    host: str


def _runtime() -> str:
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__}"


def cache_path() -> Path:
    host = socket.gethostname().replace(os.sep, "_") or "host"
    return cache_root() / f"latency-v1-{_runtime().replace(' ', '')}-{host}.json"


def _key(spec: ModelSpec, input_size: tuple[int, ...], runs: int, warmup: int) -> str:
    return json.dumps([spec.replace(dropout=None).to_dict(), list(input_size), runs, warmup], sort_keys=True)


PARALLEL_FROM = 16  # architectures: fewer are exported here (a spawned exporter takes ~3 s to import torch)


def _export(spec_dict: dict, path: str, image_size: int) -> str:
    """Export one untrained network (seeded) to float32 ONNX, one thread; runs here or in a spawned exporter."""
    import torch

    from dse.deploy.export import export_onnx
    from dse.models.registry import ModelSpec, build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny exports: more threads only add contention
    try:
        torch.manual_seed(0)
        return str(export_onnx(build_model(ModelSpec.from_dict(spec_dict)), path, image_size=image_size))
    finally:
        torch.set_num_threads(threads)


def _export_all(specs: list[ModelSpec], folder: Path, image_size: int) -> list[str]:
    """Every network exported, over the cores when there are many (exports take ~0.2 s each: 40 s for the
    paper plan one by one); progress logged every 5 s. Nothing is timed meanwhile."""
    jobs = [(s.to_dict(), str(folder / f"m{i}.onnx"), image_size) for i, s in enumerate(specs)]
    tick = progress_every(5.0, log, "latency facts: exported")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if len(jobs) < PARALLEL_FROM or cores < 2:
        out = []
        for job in jobs:
            out.append(_export(*job))
            tick(len(out), len(jobs))
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(cores, 4), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_export, *job) for job in jobs]
        out = []
        for f in futures:
            out.append(f.result())
            tick(len(out), len(jobs))
        return out


def _measure(specs: list[ModelSpec], input_size: tuple[int, ...], runs: int, warmup: int) -> list[LatencyFacts]:
    """Export each untrained network, then time them all, one after the other, in one fresh process."""
    import numpy as np

    from dse.deploy.latency import measure_many

    images = np.random.default_rng(0).standard_normal((IMAGES, *input_size)).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        paths = _export_all(specs, Path(d), input_size[-1])
        results = measure_many("onnx", paths, images, warmup=warmup, runs=runs, threads=1,
                               timeout=60.0 + 5.0 * len(paths),
                               on_result=progress_every(5.0, log, "latency facts: timed"))
    _warn_if_loaded(results)
    host = socket.gethostname()
    return [LatencyFacts(r.p50_ms, r.p99_ms, r.runtime, host) for r in results]


def _warn_if_loaded(results: list) -> None:
    """Say so when other processes loaded the host while it timed (as dse.deploy does): the facts are cached."""
    from dse.deploy.report import LOAD_WARN

    cores = os.cpu_count() or 1
    worst = max((v for r in results for v in (r.load_before, r.load_after) if v is not None), default=None)
    if worst is not None and worst - 1 > LOAD_WARN * cores:
        log.warning("latency facts measured under load (1-minute load average up to %.1f on %d cores): the "
                    "timings are inflated and cached; delete %s and plan again on a quiet host", worst, cores,
                    cache_path())


def latency_facts(specs: Iterable[ModelSpec], input_size: tuple[int, ...] = (3, 32, 32), *, runs: int = RUNS,
                  warmup: int = WARMUP) -> dict[ModelSpec, LatencyFacts]:
    """The batch-1 latency of each architecture in ``specs`` (cached; the rest measured at once, with a log line
    before and after: a cold paper plan takes about a minute)."""
    input_size = tuple(int(v) for v in input_size)
    wanted = {s: _key(s, input_size, runs, warmup) for s in dict.fromkeys(specs)}
    have = read_json_cache(cache_path())
    out = {s: LatencyFacts(**have[k]) for s, k in wanted.items() if k in have}
    todo = list(dict.fromkeys(s.replace(dropout=None) for s in wanted if s not in out))
    if todo:
        t0 = time.monotonic()
        log.info("measuring the batch-1 latency of %d untrained architecture%s (ONNX Runtime, 1 thread, this "
                 "host's CPU) ...", len(todo), "s" * (len(todo) != 1))
        measured = dict(zip(todo, _measure(todo, input_size, runs, warmup), strict=True))
        update_json_cache(cache_path(), {_key(s, input_size, runs, warmup): f.__dict__ for s, f in measured.items()})
        log.info("measured %d architecture%s in %.1f s", len(todo), "s" * (len(todo) != 1), time.monotonic() - t0)
        out.update({s: measured[s.replace(dropout=None)] for s in wanted if s not in out})
    return out


__all__ = ["LatencyFacts", "cache_path", "latency_facts"]
