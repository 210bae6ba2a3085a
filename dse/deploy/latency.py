"""Batch-1, one-thread latency and peak memory, as an embedded CPU would see them (paper Table 7's setting).

Each measurement runs in a fresh Python process (``python -m dse.deploy.latency``), so that

- the thread settings hold from the start: ``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)`` and
  ``set_num_interop_threads(1)``; onnxruntime ``intra_op_num_threads=1``, ``inter_op_num_threads=1``,
  sequential execution;
- an onnxruntime measurement never imports torch, as a deployed onnxruntime program would not;
- peak memory is the process's own: after the imports, the kernel's high-water mark is reset (``5`` written
  to ``/proc/self/clear_refs``), the resident set is read (VmRSS), the model is loaded and run, and the
  high-water mark is read (VmHWM). ``peak_mem_bytes`` = VmHWM - that VmRSS: the memory the model, its runtime
  session and its inference add on top of the imported runtime. ``hwm_bytes`` is the whole process's peak
  (interpreter + libraries + model). ``tracemalloc`` would miss native allocations (weights, arenas), hence
  /proc. Without /proc (not Linux) both are None.

Timing: ``warmup`` untimed runs, then ``runs`` timed runs of the model call alone (input already normalised
and in the runtime's format; preprocessing excluded), cycling through a few real test images; p50 / p99 in ms.
The machine's 1-minute load average before and after is recorded: on a shared host, other processes inflate
p99 - compare timings only like for like (same host, same load).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dse.common import PACKAGE

FORMATS = ("torch", "torchscript", "onnx", "onnx_int8")
DEFAULT_WARMUP = 50  # untimed runs before timing (lazy init, caches, TorchScript profiling executor)
DEFAULT_RUNS = 500  # timed runs
_MARK = "DSE_LATENCY_RESULT "


@dataclass(frozen=True)
class LatencyResult:
    format: str
    p50_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    runs: int
    warmup: int
    threads: int
    peak_mem_bytes: int | None  # VmHWM - VmRSS before loading the model (see module docstring)
    hwm_bytes: int | None  # the process's peak resident set
    baseline_rss_bytes: int | None
    hwm_reset: bool  # False: /proc/self/clear_refs not writable, peak includes import-time transients
    runtime: str  # "onnxruntime 1.31.1", "torch 2.14.1"
    load_before: float | None  # 1-minute load average of the host
    load_after: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine() -> str:
    """The CPU model (``/proc/cpuinfo`` "model name", else platform), with the logical CPU count."""
    import platform

    name = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    return f"{name} ({os.cpu_count()} logical CPUs, {platform.machine()})"


def save_eager(model: Any, spec: Any, path: str | os.PathLike) -> Path:
    """Save what the "torch" measurement rebuilds the eager model from: spec dict + state_dict."""
    import torch

    torch.save({"spec": spec.to_dict(), "state_dict": model.state_dict()}, str(path))
    return Path(path)


def measure(fmt: str, path: str | os.PathLike, images: Any, *, warmup: int = DEFAULT_WARMUP,
            runs: int = DEFAULT_RUNS, threads: int = 1, timeout: float = 600.0) -> LatencyResult:
    """Measure one model file in a fresh process.

    fmt: "torch" (``path`` from ``save_eager``), "torchscript", "onnx" or "onnx_int8". images: normalised
    float32 array (K, 3, H, W); run i feeds image i mod K as a batch of one. DeployError if the child fails.
    """
    return measure_many(fmt, [path], images, warmup=warmup, runs=runs, threads=threads, timeout=timeout)[0]


def measure_many(fmt: str, paths: list[str | os.PathLike], images: Any, *, warmup: int = DEFAULT_WARMUP,
                 runs: int = DEFAULT_RUNS, threads: int = 1, timeout: float = 600.0,
                 on_result: Callable[[int, int], None] | None = None) -> list[LatencyResult]:
    """Measure several model files of one format, one after the other, in one fresh process (the runtime is
    imported once: what the search's facts need for many architectures). Each model's peak memory is counted
    from its own baseline (the high-water mark is reset before each). ``timeout``: seconds for them all;
    ``on_result(done, total)`` after each model (progress)."""
    import numpy as np

    from dse.deploy import DeployError

    if fmt not in FORMATS:
        raise DeployError(f"latency format {fmt!r} is unknown; allowed: {', '.join(FORMATS)}")
    if int(runs) < 1 or int(warmup) < 0 or int(threads) < 1:
        raise DeployError(f"need runs >= 1, warmup >= 0, threads >= 1; got {runs}, {warmup}, {threads}")
    images = np.ascontiguousarray(np.asarray(images, dtype=np.float32))
    if images.ndim != 4 or len(images) == 0:
        raise DeployError(f"latency images must be (K, 3, H, W) float32, got shape {images.shape}")
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(int(threads))
    pkg_root = str(PACKAGE.parent)  # the folder holding dse/: the child imports the same dse
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory() as d:
        inputs = Path(d) / "inputs.npy"
        np.save(inputs, images)
        req = {"format": fmt, "paths": [str(Path(p).resolve()) for p in paths], "inputs": str(inputs),
               "warmup": int(warmup), "runs": int(runs), "threads": int(threads)}
        results, returncode, tail, timed_out = _run_child(req, env, timeout, len(paths), on_result)
    if timed_out:
        raise DeployError(f"latency measurement of {len(paths)} {fmt} model(s) ({paths[0]}, ...) took over "
                          f"{timeout:.0f} s")
    if len(results) == len(paths):
        return results
    failed = paths[len(results)] if len(results) < len(paths) else paths[-1]
    raise DeployError(f"latency measurement of {fmt} {failed} failed (exit {returncode}): {tail}")


def _run_child(req: dict[str, Any], env: dict[str, str], timeout: float, n: int,
               on_result: Callable[[int, int], None] | None) -> tuple[list[LatencyResult], int, str, bool]:
    """Run the child, reading each result as it prints it (``on_result(done, n)``: progress); killed after
    ``timeout`` seconds. Returns (results, exit code, last stderr line, whether it timed out)."""
    results: list[LatencyResult] = []
    killed = threading.Event()
    with tempfile.TemporaryFile("w+") as err, subprocess.Popen(
            [sys.executable, "-m", "dse.deploy.latency", json.dumps(req)], env=env, stdout=subprocess.PIPE,
            stderr=err, text=True) as proc:
        timer = threading.Timer(timeout, lambda: (killed.set(), proc.kill()))
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(_MARK):
                    results.append(LatencyResult(**json.loads(line[len(_MARK):])))
                    if on_result is not None:
                        on_result(len(results), n)
            proc.wait()
        finally:
            timer.cancel()
        err.seek(0)
        tail = (err.read().strip().splitlines() or ["no output"])[-1]
    return results, proc.returncode, tail, killed.is_set()


# ---------------------------------------------------------------------------------------- child side
def _proc_status(key: str) -> int | None:
    """A /proc/self/status field in bytes (VmRSS, VmHWM), None without /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    value, unit = line.split(":", 1)[1].split()
                    return int(value) * (1024 if unit.lower() == "kb" else 1)
    except (OSError, ValueError):
        pass
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux >= 4.0: reset VmHWM to the current RSS
        return True
    except OSError:
        return False


def _loadavg() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


def _child(req: dict[str, Any]) -> None:
    """In a fresh process: import the runtime once, then measure each of `req["paths"]` (``_measure_one``),
    printing each result as soon as it is known."""
    import numpy as np

    runtime = _import_runtime(req["format"], int(req["threads"]))  # before any baseline: not a model's memory
    images = np.load(req["inputs"])
    for path in req["paths"]:
        print(_MARK + json.dumps(_measure_one(req, path, runtime, images)), flush=True)


def _measure_one(req: dict[str, Any], path: str, runtime: str, images: Any) -> dict[str, Any]:
    """Load the model at `path`, run it `req["warmup"]` times, then time `req["runs"]` single-image runs; the
    peak memory counted above the process's RSS before loading it (the model's and its session's working
    memory, not the interpreter's or the runtime's code)."""
    import numpy as np

    fmt, threads = req["format"], int(req["threads"])
    gc.collect()
    load_before = _loadavg()
    hwm_reset = _reset_hwm()
    baseline = _proc_status("VmRSS")
    run = _torch_runner(fmt, path, images) if fmt in ("torch", "torchscript") else _ort_runner(path, threads, images)
    for i in range(int(req["warmup"])):
        run(i)
    gc.collect()
    times = np.empty(int(req["runs"]), dtype=np.float64)
    clock = time.perf_counter_ns
    for i in range(len(times)):
        t0 = clock()
        run(i)
        times[i] = clock() - t0
    hwm = _proc_status("VmHWM")
    ms = times / 1e6
    return {
        "format": fmt, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "max_ms": float(ms.max()),
        "runs": len(ms), "warmup": int(req["warmup"]), "threads": threads,
        "peak_mem_bytes": None if hwm is None or baseline is None else max(0, hwm - baseline),
        "hwm_bytes": hwm, "baseline_rss_bytes": baseline, "hwm_reset": hwm_reset, "runtime": runtime,
        "load_before": load_before, "load_after": _loadavg(),
    }


def _import_runtime(fmt: str, threads: int) -> str:
    """Import the runtime `fmt` runs on (with `threads` intra-op threads for torch) and name its version."""
    if fmt in ("torch", "torchscript"):
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        if fmt == "torch":
            import dse.models  # noqa: F401 - the model code is the runtime's, not the model's memory
        return f"torch {torch.__version__.split('+')[0]}"
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__}"


def _torch_runner(fmt: str, path: str, images: Any) -> Callable[[int], None]:
    """Run i: the PyTorch checkpoint (or TorchScript file) at `path` on image i (mod the images), batch 1."""
    import warnings

    import torch

    from dse.models import ModelSpec, build_model

    if fmt == "torch":
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model = build_model(ModelSpec.from_dict(blob["spec"]))
        model.load_state_dict(blob["state_dict"])
        del blob
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torch.jit.load(path, map_location="cpu")
    model.eval()
    feeds = [torch.from_numpy(images[i:i + 1]) for i in range(len(images))]

    def run(i: int) -> None:
        with torch.inference_mode():
            model(feeds[i % len(feeds)])

    return run


def _ort_runner(path: str, threads: int, images: Any) -> Callable[[int], None]:
    """Run i: the ONNX file at `path` in onnxruntime (sequential, `threads` intra-op threads) on image i."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    feeds = [{name: images[i:i + 1]} for i in range(len(images))]

    def run(i: int) -> None:
        sess.run(None, feeds[i % len(feeds)])

    return run


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
