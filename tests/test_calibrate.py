"""dse.calibrate: a real (small) calibration on the CPU, its disk cache (hit, miss on a changed key, damaged file)
and the study estimate with longest-first packing."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

import dse.calibrate as C
from dse.errors import ConfigError
from dse.models import spec_from_name
from dse.space import TrialConfig
from dse.train import OptimConfig, TrainConfig

SPEC = spec_from_name("shallow_sqnxt_06_0_4x")
TRAIN = TrainConfig(batch_size=16, eval_batch_size=32, device="cpu", threads=1, progress="none")


def test_calibration_measures_then_hits_the_cache(tmp_path: Path, monkeypatch) -> None:
    calls = []
    real = C._measure
    monkeypatch.setattr(C, "_measure", lambda *a: calls.append(a) or real(*a))
    first = C.calibrate(SPEC, TRAIN, steps=2, cache_dir=tmp_path)
    assert not first.cached and len(calls) == 1
    assert first.train_img_per_s > 0 and first.eval_img_per_s > 0 and first.warmup_seconds >= 0
    assert first.key["fast_path"] == "eager" and first.key["batch_size"] == 16 and first.key["threads"] == 1
    second = C.calibrate(SPEC, TRAIN, steps=2, cache_dir=tmp_path)
    assert second.cached and len(calls) == 1
    assert second.train_img_per_s == first.train_img_per_s and second.measured_unix == first.measured_unix > 0
    # another batch size is another key: measured again, in its own file
    C.calibrate(SPEC, replace(TRAIN, batch_size=8), steps=2, cache_dir=tmp_path)
    assert len(calls) == 2 and len(list(tmp_path.glob("*.json"))) == 2
    # a damaged file is measured again and rewritten
    path = next(p for p in tmp_path.glob("*.json") if json.loads(p.read_text())["key"]["batch_size"] == 16)
    path.write_text("{not json")
    again = C.calibrate(SPEC, TRAIN, steps=2, cache_dir=tmp_path)
    assert not again.cached and len(calls) == 3 and json.loads(path.read_text())["key"] == again.key


def test_bad_steps_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="steps=1"):
        C.calibrate(SPEC, TRAIN, steps=1, cache_dir=tmp_path)


def test_lpt_makespan() -> None:
    assert C.lpt_makespan([5, 4, 3, 3, 3], 2) == 10  # 5+3 | 4+3+3
    assert C.lpt_makespan([5, 4, 3, 3, 3], 1) == 18
    assert C.lpt_makespan([5, 4, 3], 8) == 5
    with pytest.raises(ConfigError, match="workers=0"):
        C.lpt_makespan([1.0], 0)


def _trial(name: str, epochs: int, **data) -> TrialConfig:
    optimizer = OptimConfig().to_dict()
    trainer = {"epochs": epochs, "batch_size": 128, "device": "cpu", "progress": "none"}
    return TrialConfig(spec_from_name(name), {"val_size": 5000, **data}, optimizer, trainer, seed=0)


def test_estimate_study_packs_calibrated_trials() -> None:
    speeds = {"shallow_sqnxt_06_0_4x": 1000.0, "sqnxt_23_1x": 250.0}
    seen = []

    def fake_calibrate(spec, train, optim):
        seen.append((spec.name, train.epochs, optim.name))
        return C.Calibration(speeds[spec.name], 5000.0, 2.0, {})

    trials = [
        _trial("shallow_sqnxt_06_0_4x", 2, subset_size=10_000, test_size=1000),  # 2 + 2 x (10 + 1.2) = 24.4 s
        _trial("sqnxt_23_1x", 1),  # 2 + 1 x (45,000 / 250 + 15,000 / 5,000) = 185 s
        _trial("shallow_sqnxt_06_0_4x", 1, subset=0.5),  # 2 + (22,500 / 1,000 + 3) = 27.5 s
    ]
    assert C.estimate_study(trials, 1, calibrate_fn=fake_calibrate) == pytest.approx(24.4 + 185 + 27.5)
    assert C.estimate_study(trials, 2, calibrate_fn=fake_calibrate) == pytest.approx(185)
    assert seen[0] == ("shallow_sqnxt_06_0_4x", 2, "sgd_nesterov")
    assert C.estimate_study([], 4, calibrate_fn=fake_calibrate) == 0.0


class _Pool:
    """A probe pool whose every job trains at `rate` img/s; it records the jobs it ran."""

    def __init__(self, rate: float) -> None:
        self.rate, self.jobs = rate, []

    def run(self, jobs):
        self.jobs += list(jobs)
        return {j.key: {"ok": True, "train_img_per_s": self.rate} for j in self.jobs}


def test_old_calibrations_follow_the_host_speed_now(monkeypatch) -> None:
    import time
    from types import SimpleNamespace

    from dse import autotune
    from dse.sweep import tune

    items = [autotune.Item(spec_from_name(n), OptimConfig(), TRAIN) for n in ("shallow_sqnxt_06_0_2x",
                                                                               "shallow_sqnxt_06_0_6x")]
    old, new = time.time() - 2 * tune.STALE_AFTER_S, time.time()
    cals = {items[0]: C.Calibration(100.0, 400.0, 2.0, {}, measured_unix=old),
            items[1]: C.Calibration(50.0, 200.0, 3.0, {}, measured_unix=new)}
    resolved = {it: it.train for it in items}
    slow = SimpleNamespace(processes=2, pool=_Pool(55.0))  # the host trains at 0.55x its old speed
    out = tune.host_speed(slow, items, resolved, cals)
    assert len(slow.pool.jobs) == 2  # the stale architecture, once per process, side by side
    assert out[items[0]].train_img_per_s == pytest.approx(55.0) and out[items[0]].warmup_seconds == pytest.approx(
        2.0 / 0.55) and out[items[0]].eval_img_per_s == pytest.approx(220.0)
    assert out[items[1]] == cals[items[1]]  # measured in this command: already the host's speed now
    steady = SimpleNamespace(processes=2, pool=_Pool(108.0))  # within DRIFT: noise, not drift
    assert tune.host_speed(steady, items, resolved, cals) == cals
    fresh = SimpleNamespace(processes=2, pool=_Pool(1.0))
    assert tune.host_speed(fresh, items, resolved, {items[1]: cals[items[1]]}) == {items[1]: cals[items[1]]}
    assert fresh.pool.jobs == []  # nothing old: nothing measured
