"""How far the study is and how long it will take: the estimate before training, the study bar during it.

Before training, dse.sweep.tune calibrates each architecture still queued (cached on disk by dse.calibrate) and
prints the estimated wall time. During the run, a study bar (trial k of N, ETA) sits above the trial's own batch
bar on a terminal; elsewhere (a log file, a SLURM job, workers=N children) it is one plain line per finished
trial. The ETA packs the calibrated times of the trials left onto the workers (a running trial by the epochs it
has left), scaled by how far this run's epochs were from their estimates, so it corrects itself from the first
epoch on; without calibrations it is this run's pace per trial. A host whose speed changed since the calibration
(a shared machine's neighbours, a burst that ended: measured 1.6x within a minute) is said in one line when the
epochs run more than ``PACE_WARN`` off their estimate.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from dse import store as st

log = logging.getLogger("dse.sweep")

PACE_WARN = 1.25  # epochs this much slower (or faster) than calibrated: say so once, with the corrected ETA


def fmt_duration(seconds: float) -> str:
    """3 h 05 min / 12 min 30 s / 45 s."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


class StudyProgress:
    """Trial k of N for the whole study (every worker's trials count), with a self-correcting ETA."""

    def __init__(self, queue: Any, total: int, workers: int, mode: str = "auto",
                 estimate_of: Callable[[Any], float | None] | None = None) -> None:
        """mode: trainer.progress (auto = a bar on a terminal, bar, log, none = log lines for the study);
        estimate_of(row): the calibrated seconds of a trial row, or None (dse.sweep.tune.cached_estimate)."""
        self.queue, self.total, self.workers = queue, total, max(1, workers)
        self.estimate_of = estimate_of
        self.start, self.done_here = time.monotonic(), 0
        self.spent = self.expected = 0.0  # seconds of this run's epochs, and what they were estimated
        self.pace_said = False
        self.paced: set[str] = set()  # identities of the trials whose epochs have counted already
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
        """Seconds left: the calibrated times of the trials left (running ones by the share of their epochs still to
        train), scaled by this run's actual / estimated ratio, packed onto the workers; else this run's pace per
        trial; None before any."""
        left = self._left_estimates()
        if left is not None:
            from dse.calibrate import lpt_makespan

            ratio = self.spent / self.expected if self.expected > 0 else 1.0
            return lpt_makespan([ratio * s for s in left], self.workers) if left else 0.0
        if self.done_here == 0:
            return None
        per_trial = (time.monotonic() - self.start) / self.done_here / self.workers
        return max(0, self.total - done) * per_trial

    def _left_estimates(self) -> list[float] | None:
        if self.estimate_of is None:
            return None
        out = []
        for row in self.queue.unfinished_rows():
            s = self.estimate_of(row)
            if s is None:
                return None
            out.append(s * self._share_left(row))
        return out

    @staticmethod
    def _share_left(row: Any) -> float:
        """How much of a trial is still to train: all of a queued one, a running one by its epochs (half when
        the row does not say)."""
        if row.status != st.RUNNING:
            return 1.0
        epochs = getattr(row, "epochs", None)
        return 1 - (getattr(row, "epochs_done", 0) or 0) / epochs if epochs else 0.5

    def epoch_done(self, row: Any, seconds: float) -> None:
        """One epoch of this worker's trial `row` took `seconds` (training, evaluation and warm-up): the pace
        against the calibration, which the ETA scales by; one line when it is PACE_WARN off."""
        est = self.estimate_of(row) if self.estimate_of is not None else None
        if not est:
            return
        self.paced.add(row.identity)
        self.spent, self.expected = self.spent + seconds, self.expected + est / max(1, row.epochs)
        ratio = self.spent / self.expected
        if not self.pace_said and not 1 / PACE_WARN <= ratio <= PACE_WARN:
            self.pace_said = True
            eta = self.eta(self.finished())
            name = st.trial_name(row.optuna_trial_number, row.id)
            log.warning("pace: epochs take %.2fx their calibrated time (trial %s: %.1f s against %.1f s); the host "
                        "is %s than when it was calibrated%s", ratio, name, seconds, est / max(1, row.epochs),
                        "slower" if ratio > 1 else "faster", f"; ETA now {fmt_duration(eta)}" if eta else "")

    def trial_done(self, row: Any = None, seconds: float | None = None) -> None:
        """One trial of this worker finished (`row`, after `seconds` of wall time: they correct the ETA unless its
        epochs did already)."""
        self.done_here += 1
        if row is not None and seconds is not None and self.estimate_of is not None and row.identity not in self.paced:
            est = self.estimate_of(row)
            if est:
                self.spent, self.expected = self.spent + seconds, self.expected + est
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
