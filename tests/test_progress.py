"""The study's progress line and ETA (no training: a stand-in queue with the counts a store would give)."""

import logging

from dse import store as st
from dse.sweep.progress import StudyProgress, fmt_duration


class _Queue:
    def __init__(self) -> None:
        self.done = 2

    def counts(self) -> dict[str, int]:
        return {st.COMPLETE: self.done, st.QUEUED: 10 - self.done}


def test_durations_read_naturally():
    assert fmt_duration(45.4) == "45 s"
    assert fmt_duration(750) == "12 min 30 s"
    assert fmt_duration(3 * 3600 + 5 * 60) == "3 h 05 min"


def test_log_mode_counts_every_workers_trials_and_gives_an_eta(caplog):
    q = _Queue()
    p = StudyProgress(q, total=10, workers=2, mode="log")
    assert p.done_before == 2 and p.bar is None
    p.start -= 100.0  # this worker has been running for 100 s
    q.done = 4  # it finished one trial, another worker one more
    with caplog.at_level(logging.INFO, logger="dse.sweep"):
        p.trial_done()
    # 100 s per trial of this worker, 2 workers: 50 s per trial, 6 left
    assert "study: 4 of 10 trials finished; ETA 5 min 00 s" in caplog.text
    p.close()
