"""``workers=N``: N worker processes on this host against one store (SQLite is fine on one host).

The parent plans the study, creates the tables and the Optuna study once, then starts N spawned processes. Each
gets one of the visible GPUs in turn (``trainer.device=cuda:i`` when the device is ``auto`` or ``cuda``) and an
equal share of the CPU cores (``trainer.threads`` = cores // N unless set: an OpenMP thread that loses its core
makes every operation wait). Each child logs to the run folder as ``worker-<i>.log`` and to stderr.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dse.sweep.plan import StudyPlan
from dse.sweep.runner import run_worker, setup_child_logging

log = logging.getLogger("dse.sweep")


def worker_overrides(cfg: DictConfig, index: int, n: int, gpus: int) -> dict[str, Any]:
    """The trainer settings of child ``index`` of ``n``: its GPU and its share of the CPU threads."""
    out: dict[str, Any] = {}
    if gpus and str(cfg.trainer.device) in ("auto", "cuda"):
        out["device"] = f"cuda:{index % gpus}"
    if cfg.trainer.threads is None:
        out["threads"] = max(1, len(os.sched_getaffinity(0)) // n)
    if cfg.trainer.progress == "auto":  # N processes drawing bars on one terminal garble it: plain lines
        out["progress"] = "log"
    return out


def mps_line() -> str:
    """Whether CUDA MPS (several processes sharing one GPU concurrently) is on, as one log line."""
    import shutil

    pipe = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"))
    if (pipe / "control").exists() or pipe.is_dir() and any(pipe.glob("*")):
        return f"CUDA MPS is on (pipe directory {pipe}): workers sharing a GPU run their kernels concurrently"
    hint = "start it with `nvidia-cuda-mps-control -d`" if shutil.which("nvidia-cuda-mps-control") else \
        "nvidia-cuda-mps-control is not installed"
    return f"CUDA MPS is off ({pipe} absent): workers sharing a GPU take turns; {hint}"


def launch(cfg: DictConfig, plan: StudyPlan, url: str, run_dir: str | None
           ) -> tuple[int, int, int, list[str], int]:
    """Run ``cfg.workers`` worker processes to the end: (trained, failed, worst exit code, their distinct error
    lines, trials marked interrupted) over all of them. SIGINT or SIGTERM to this process reaches every worker
    (a process manager or ``kill -INT`` signals this process only, unlike a terminal's Ctrl-C)."""
    import torch

    n = int(cfg.workers)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        log.info("%d workers over %d GPU%s; %s", n, gpus, "s" * (gpus > 1), mps_line())
    ctx = mp.get_context("spawn")  # a fresh interpreter per worker: no CUDA or thread state inherited
    results = ctx.SimpleQueue()
    procs = []
    for i in range(n):
        # workers stays n: the children's study progress packs the trials left onto all of them
        child = OmegaConf.merge(cfg, {"trainer": worker_overrides(cfg, i, n, gpus)})
        # the config, the slim plan (no trial list: the rows carry their configs) and the store's URL
        args = (OmegaConf.to_container(child, resolve=True), plan.slim(), url, i, run_dir, results)
        procs.append(ctx.Process(target=_child, args=args, name=f"dse-worker-{i}"))
    interrupted = _join_all(procs, log_started=lambda: log.info(
        "started %d workers (threads %s each)", n, worker_overrides(cfg, 0, n, gpus).get(
            "threads", cfg.trainer.threads)))
    trained = failed = rc = marked = 0
    errors: list[str] = []
    while not results.empty():
        t, f, code, errs, m = results.get()
        trained, failed, rc, marked = trained + t, failed + f, max(rc, code), marked + m
        errors += [e for e in errs if e not in errors]
    # a worker still starting up when the stop came ends by SIGTERM's default action: it had claimed nothing
    missing = [p for p in procs if p.exitcode not in (0, 1, 2, 130) and not (interrupted and
                                                                             p.exitcode == -signal.SIGTERM)]
    if missing:
        log.error("%d worker process%s died (exit codes %s); their trials are re-queued when their lease runs out",
                  len(missing), "es" * (len(missing) > 1), [p.exitcode for p in missing])
        rc = max(rc, 2)
    return trained, failed, 130 if interrupted else rc, errors, marked


def _join_all(procs: list[Any], log_started: Any) -> bool:
    """Start the processes and wait for all of them; True when a signal stopped them. The first SIGINT or
    SIGTERM is passed on to every worker as SIGTERM; each stops at its next safe point and marks its trial
    interrupted (dse/sweep/stop.py), and this process waits for them all, whatever else it receives."""
    stopping: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        if not stopping:
            stopping.append(signum)
            raise KeyboardInterrupt

    saved = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            for p in procs:
                p.start()
            log_started()
            for p in procs:
                p.join()
        except KeyboardInterrupt:
            for p in procs:
                if p.pid is not None:
                    p.join()
    finally:  # once stopping, later signals are ignored: the summary and the store's last writes run to the end
        for s, h in saved.items():
            signal.signal(s, signal.SIG_IGN if stopping else h)
    return bool(stopping)


def _child(cfg_dict: dict, plan: StudyPlan, url: str, index: int, run_dir: str | None, results: Any) -> None:
    try:
        cfg = OmegaConf.create(cfg_dict)
        setup_child_logging(cfg, index, run_dir)
        result = run_worker(cfg, plan, url, prepared=True)
    except KeyboardInterrupt:  # before its loop started: nothing to put back
        result = (0, 0, 130, [], 0)
    results.put(result)
    sys.exit(result[2])
