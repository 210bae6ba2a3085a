"""Timed probes in child processes: the measurements behind `auto` settings and the study's estimate.

A probe trains one architecture for two tiny epochs on random pixels through the real `fit`
(`dse.calibrate.measure`) and reports images per second. It runs in a separate Python process, never in the
caller's, for two reasons:

* a setting can crash the process: float32 channels_last training of Shallow SqueezeNext-06-0.125x with one
  thread corrupted the heap (`free(): invalid next size`) on an AMD EPYC (Zen 3, PyTorch 2.14.1). The pool
  notices the dead process, reports that probe as crashed (so `dse.autotune` never picks the setting) and
  starts a fresh process for the remaining probes;
* several processes measured side by side see the contention that `workers=N` trials will see (shared cores,
  caches and memory bandwidth), which one process cannot show.

`ProbePool(processes, threads)` keeps that many servers alive (`python -m dse.probe --serve`), each with
`threads` intra-op threads, and hands out jobs as they become free. The protocol is one JSON object per line:
"ready" once the imports are done (read before any job is sent), then a job on stdin, its result on stdout
(nothing else is written there, and each server has one job at a time, so a line is always whole and never waits
in a buffer).
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dse.common import PACKAGE, ROOT
from dse.errors import first_line

JOB_TIMEOUT_S = 600  # one probe of the largest paper model on a slow CPU takes well under this


@dataclass
class Job:
    """One measurement: `spec`, `train`, `optim` as dicts (dse.models.ModelSpec / dse.train.TrainConfig /
    OptimConfig fields), `steps` batches per epoch, `abandon_after_s`: stop after the warm-up epoch when it took
    longer than this (a candidate already clearly slower than the best), or None."""

    key: str
    spec: dict[str, Any]
    train: dict[str, Any]
    optim: dict[str, Any]
    steps: int = 2
    abandon_after_s: float | None = None

    def line(self) -> str:
        return json.dumps(self.__dict__) + "\n"


@dataclass
class _Server:
    proc: subprocess.Popen
    job: Job | None = None
    started: float = field(default_factory=time.monotonic)


class ProbePool:
    """`processes` probe servers with `threads` threads each. `run(jobs, on_result)` returns {job key: result},
    where a result is the server's dict ({"ok": True, "train_img_per_s": ..., ...}, {"ok": False, "error": ...},
    or {"ok": False, "crashed": True, "error": "the probe process died (signal 11)"})."""

    def __init__(self, processes: int, threads: int) -> None:
        self.threads = threads
        self.servers = [self._start() for _ in range(max(1, processes))]
        self._ready = False

    def wait_ready(self) -> None:
        """Block until every server has imported PyTorch (they start in parallel): a probe timed while other
        servers are still importing would measure their start-up too."""
        for s in self.servers:
            s.proc.stdout.readline()  # "ready" (or end-of-file: the first job then reports the crash)
        self._ready = True

    def _start(self) -> _Server:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "PYTHONPATH": _pythonpath()}
        cmd = [sys.executable, "-m", "dse.probe", "--serve", "--threads", str(self.threads)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, bufsize=1, env=env, cwd=str(ROOT))
        return _Server(proc)

    def run(self, jobs: Iterable[Job] | Callable[[], Job | None],
            on_result: Callable[[Job, dict[str, Any]], None] | None = None) -> dict[str, dict[str, Any]]:
        """Run `jobs` (a list, or a function returning the next job that is ready, None when none is: it is
        asked again after each result, so `on_result` can make new jobs ready) on the free servers."""
        if not self._ready:
            self.wait_ready()
        if callable(jobs):
            next_job = jobs
        else:
            queue = list(jobs)

            def next_job() -> Job | None:
                return queue.pop(0) if queue else None

        results: dict[str, dict[str, Any]] = {}
        sel = selectors.DefaultSelector()
        try:
            while True:
                for s in self.servers:
                    job = next_job() if s.job is None else None
                    if job is not None:
                        self._send(s, job, sel)
                if not any(s.job for s in self.servers):
                    break
                events = sel.select(timeout=5)
                for ev, _ in events:
                    self._receive(ev.data, sel, results, on_result)
                self._reap_hung(sel, results, on_result)
        finally:
            sel.close()
        return results

    def _send(self, s: _Server, job: Job, sel: selectors.BaseSelector) -> None:
        s.job, s.started = job, time.monotonic()
        try:
            s.proc.stdin.write(job.line())
            s.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died since its last job: the read below sees end-of-file and reports the crash
        sel.register(s.proc.stdout, selectors.EVENT_READ, s)

    def _receive(self, s: _Server, sel: selectors.BaseSelector, results: dict, on_result: Callable | None) -> None:
        line = s.proc.stdout.readline()  # a server writes one line per job and has one job at a time
        sel.unregister(s.proc.stdout)
        job, s.job = s.job, None
        result = json.loads(line) if line else self._crashed(s)
        if not line:
            self._replace(s)
        results[job.key] = result
        if on_result is not None:
            on_result(job, result)

    def _crashed(self, s: _Server) -> dict[str, Any]:
        code = s.proc.wait(timeout=30)
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        return {"ok": False, "crashed": True, "signal": -code if code < 0 else None,
                "error": f"the probe process died ({how})"}

    def _replace(self, s: _Server) -> None:
        fresh = self._start()
        fresh.proc.stdout.readline()  # "ready": its imports are not timed as part of the next probe
        s.proc, s.started = fresh.proc, fresh.started

    def _reap_hung(self, sel: selectors.BaseSelector, results: dict, on_result: Callable | None) -> None:
        for s in self.servers:
            if s.job is not None and time.monotonic() - s.started > JOB_TIMEOUT_S:
                s.proc.kill()  # its stdout reaches end-of-file: _receive reports it as crashed next round
                s.proc.wait()
                self._receive(s, sel, results, on_result)

    def close(self) -> None:
        for s in self.servers:
            if s.job is not None and s.proc.poll() is None:  # interrupted mid-probe (Ctrl-C): no need to wait
                s.proc.kill()
            if s.proc.poll() is None:
                s.proc.stdin.close()
                try:
                    s.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    s.proc.kill()

    def __enter__(self) -> ProbePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pythonpath() -> str:
    """This source tree first, so the servers import the same dse as the caller (editable or not)."""
    rest = os.environ.get("PYTHONPATH", "")
    return str(PACKAGE.parent) + (os.pathsep + rest if rest else "")


def serve(threads: int) -> None:
    """The server loop: one job per stdin line, one result per stdout line, until stdin closes."""
    import signal

    import torch

    from dse.calibrate import Abandoned, measure

    # Ctrl-C reaches the whole process group: the pool's owner handles it and ends the servers; a server that died
    # of SIGINT mid-probe would look like a crash of the setting it was timing
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from dse.models import ModelSpec
    from dse.train import OptimConfig, TrainConfig

    torch.set_num_threads(threads)
    print("ready", flush=True)  # read once by the pool before it sends the first job
    for line in sys.stdin:
        job = json.loads(line)
        try:
            train = TrainConfig(**{**job["train"], "threads": threads})
            optim = OptimConfig(**{**job["optim"], "betas": tuple(job["optim"]["betas"]),
                                   "step_epochs": tuple(job["optim"]["step_epochs"])})
            m = measure(ModelSpec.from_dict(job["spec"]), train, optim, job["steps"], job["abandon_after_s"])
            out = {"ok": True, **m}
        except Abandoned as e:
            out = {"ok": False, "abandoned": True, "warmup_epoch_seconds": e.seconds,
                   "error": f"abandoned: warm-up epoch {e.seconds:.2f} s"}
        except Exception as e:  # noqa: BLE001 - a setting this machine cannot run is a result, not a crash
            first = first_line(e)
            out = {"ok": False, "error": first[:300]}
        print(json.dumps(out), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="dse probe server (used by dse.autotune; not a user command)")
    ap.add_argument("--serve", action="store_true", required=True)
    ap.add_argument("--threads", type=int, required=True)
    args = ap.parse_args(argv)
    serve(args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
