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


class _Row:
    def __init__(self, identity: str, status: str = st.QUEUED) -> None:
        self.identity, self.status = identity, status


def test_eta_from_calibrated_estimates_corrects_itself(caplog):
    q = _Queue()
    left = [_Row("a"), _Row("b"), _Row("c", st.RUNNING)]
    q.unfinished_rows = lambda: left
    estimates = {"done": 100.0, "a": 300.0, "b": 200.0, "c": 400.0}
    p = StudyProgress(q, total=10, workers=2, mode="log", estimate_of=lambda r: estimates[r.identity])
    # before any trial finished: the estimates as calibrated, packed on 2 workers (c running: half of it left)
    assert p.eta(2) == 400.0  # 300 | 200 + 200
    with caplog.at_level(logging.INFO, logger="dse.sweep"):
        p.trial_done(_Row("done"), 150.0)  # it took 1.5x its estimate: the rest is scaled by 1.5
    assert p.eta(2) == 600.0
    assert "ETA 10 min 00 s" in caplog.text
    estimates["a"] = None  # a trial without a calibration: back to this run's pace per trial
    assert p.eta(2) is not None and p.eta(2) != 600.0
    p.close()


class _RunningRow(_Row):
    def __init__(self, identity: str, epochs: int, epochs_done: int) -> None:
        super().__init__(identity, st.RUNNING)
        self.id, self.epochs, self.epochs_done, self.optuna_trial_number = 7, epochs, epochs_done, 3


def test_each_epoch_corrects_the_eta_and_a_host_off_its_calibration_is_said_once(caplog):
    """A host that slowed down after the calibration (measured: 1.6x within a minute on a shared VM) shows in the
    first epoch: the ETA scales by it then, not only when a trial finishes, and one line says so."""
    q = _Queue()
    running = _RunningRow("r", epochs=4, epochs_done=1)
    q.unfinished_rows = lambda: [running, _Row("a")]
    estimates = {"r": 400.0, "a": 400.0}
    p = StudyProgress(q, total=10, workers=2, mode="log", estimate_of=lambda r: estimates[r.identity])
    assert p.eta(2) == 400.0  # r: 3 of 4 epochs left (300) | a: 400
    with caplog.at_level(logging.INFO, logger="dse.sweep"):
        p.epoch_done(running, 100.0)  # as calibrated: nothing to say
        assert "pace" not in caplog.text
        p.epoch_done(running, 220.0)  # 320 s for 200 s estimated: 1.6x
        p.epoch_done(running, 220.0)
    assert caplog.text.count("pace: epochs take") == 1  # said once, at 320 s for 200 s estimated
    assert "epochs take 1.60x their calibrated time" in caplog.text and "host is slower" in caplog.text
    assert abs(p.eta(2) - 1.8 * 400.0) < 1e-6  # 540 s for 300 s estimated now: a's 400 s becomes 720 s
    p.trial_done(running, 540.0)  # its epochs counted already: not twice
    assert p.spent == 540.0 and p.expected == 300.0
    p.close()
