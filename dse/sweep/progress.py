"""How far the study is and how long it will take: the estimate before training, the study bar during it.

Before training, each architecture still queued is calibrated once (a few timed batches through the same `fit`,
cached on disk by dse.calibrate), and the queued trials are packed onto the workers: that is the estimated wall
time printed before the first trial. During the run, a study bar (trial k of N, ETA from the trials finished so
far) sits above the trial's own batch bar on a terminal; elsewhere (a log file, a SLURM job, workers=N children)
it is one plain line per finished trial.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from omegaconf import DictConfig

from dse import store as st

log = logging.getLogger("dse.sweep")


def fmt_duration(seconds: float) -> str:
    """3 h 05 min / 12 min 30 s / 45 s."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def print_estimate(cfg: DictConfig, queue: Any, base: dict[str, Any], workers: int,
                   only: set[str] | None = None) -> float | None:
    """Log the estimated wall time of the waiting trials on this machine (None when off or nothing waits).
    ``base``: the resolved config as a dict (this machine's data root, device, threads); ``only``: the identities
    this machine can run (None: all)."""
    if not cfg.study.estimate:
        return None
    from dse.calibrate import estimate_study
    from dse.space import TrialConfig

    rows = [r for r in queue.waiting() if only is None or r.identity in only]
    if not rows:
        return None
    configs = [TrialConfig.from_dict(json.loads(r.config_json)).on_this_machine(base["data"], base["trainer"])
               for r in rows]
    t0 = time.perf_counter()
    try:
        seconds = estimate_study(configs, workers)
    except Exception as e:  # noqa: BLE001 - an estimate is a courtesy: the trials say the real error themselves
        log.warning("no wall-time estimate: %s", str(e).strip().splitlines()[0] if str(e).strip() else type(e))
        return None
    log.info("estimated wall time: %s for %d trials on %d worker%s (calibration %.0f s, cached per architecture "
             "and device)", fmt_duration(seconds), len(rows), workers, "s" * (workers != 1), time.perf_counter() - t0)
    return seconds


class StudyProgress:
    """Trial k of N for the whole study (every worker's trials count), with an ETA from this run's pace."""

    def __init__(self, queue: Any, total: int, workers: int, mode: str = "auto") -> None:
        """mode: trainer.progress (auto = a bar on a terminal, bar, log, none = log lines for the study)."""
        self.queue, self.total, self.workers = queue, total, max(1, workers)
        self.start, self.done_here = time.monotonic(), 0
        self.done_before = self.finished()
        self.bar = None
        if mode == "bar" or (mode == "auto" and sys.stderr.isatty() and workers == 1):
            from tqdm import tqdm

            # created before any trial's bar, so tqdm stacks the trial bars below this one
            self.bar = tqdm(total=total, initial=self.done_before, desc="study", unit="trial", position=0,
                            dynamic_ncols=True, file=sys.stderr)

    def finished(self) -> int:
        counts = self.queue.counts()
        return sum(counts.get(s, 0) for s in st.TERMINAL)

    def eta(self, done: int) -> float | None:
        """Seconds left at this run's pace (this worker's trials per second, times the workers), or None."""
        if self.done_here == 0:
            return None
        per_trial = (time.monotonic() - self.start) / self.done_here / self.workers
        return max(0, self.total - done) * per_trial

    def trial_done(self) -> None:
        self.done_here += 1
        done = self.finished()
        eta = self.eta(done)
        if self.bar is not None:
            self.bar.n = done
            self.bar.set_postfix_str(f"ETA {fmt_duration(eta)}" if eta is not None else "", refresh=True)
        else:
            log.info("study: %d of %d trials finished%s", done, self.total,
                     f"; ETA {fmt_duration(eta)}" if eta is not None else "")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
