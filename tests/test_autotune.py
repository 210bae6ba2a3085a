"""dse.autotune and dse.probe: the choice from given timings, the candidates a request leaves open, the cache key
and its hit (no probe), workers x threads, and real probe processes (a result, a process killed mid-probe)."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace

import pytest
import torch

from dse import autotune as A
from dse import calibrate as C
from dse.errors import ConfigError
from dse.models import ModelSpec, spec_from_name
from dse.probe import Job, ProbePool
from dse.train import OptimConfig, TrainConfig

FP32, FP32_CL = A.Setting("fp32", False, "eager"), A.Setting("fp32", True, "eager")
BF16, BF16_CL = A.Setting("bf16", False, "eager"), A.Setting("bf16", True, "eager")
AUTO = TrainConfig(device="cpu", precision="auto", channels_last="auto", threads=1, batch_size=16,
                   eval_batch_size=16, progress="none")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DSE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def ok(img_per_s: float) -> dict:
    return {"ok": True, "train_img_per_s": img_per_s, "warmup_epoch_seconds": 1.0}


def test_choice_from_given_timings() -> None:
    # bf16 must beat the best float32 setting by the margin; a tie or a small win goes to float32
    assert A.choose({FP32: ok(100), BF16: ok(100 * A.BF16_MARGIN - 1)}, set()) == FP32
    assert A.choose({FP32: ok(100), BF16: ok(100 * A.BF16_MARGIN + 1)}, set()) == BF16
    assert A.choose({FP32: ok(100), FP32_CL: ok(130), BF16: ok(140)}, set()) == FP32_CL  # 140 < 1.10 x 130
    # a setting that crashed here is never chosen, however fast it looked elsewhere; failures are skipped
    assert A.choose({FP32: ok(100), FP32_CL: ok(200)}, {FP32_CL.label()}) == FP32
    assert A.choose({FP32: {"ok": False, "crashed": True}, BF16: {"ok": False, "error": "abandoned"},
                     FP32_CL: ok(50)}, set()) == FP32_CL
    assert A.choose({FP32: {"ok": False, "error": "x"}}, set()) == A.Setting(*A.SAFE)  # nothing measured


def test_candidates_left_open_by_the_request() -> None:
    cpu = torch.device("cpu")
    assert A.candidates(AUTO, OptimConfig(), cpu) == [FP32, FP32_CL, BF16, BF16_CL]  # the safe baseline first
    assert A.candidates(replace(AUTO, precision="fp32"), OptimConfig(), cpu) == [FP32, FP32_CL]
    assert A.candidates(replace(AUTO, channels_last=False), OptimConfig(), cpu) == [FP32, BF16]
    # an explicit value wins: nothing left to measure
    assert not A.is_auto(replace(AUTO, precision="bf16", channels_last=True))
    assert A.finalize(A.Item(spec_from_name("shallow_sqnxt_06_0_4x"), OptimConfig(), replace(AUTO, precision="bf16")),
                      FP32_CL).precision == "bf16"


def test_cost_classes_are_factor_four_buckets() -> None:
    assert [A.cost_class(m) for m in (200_000, 430_000, 870_000, 1_680_000, 5_070_000, 12_400_000, 57e6)] == \
        [-2, -1, -1, 0, 1, 1, 2]
    assert A.class_label(-1) == "0.25-1 M MACs"


def test_decision_key_and_cache_hit_without_a_probe(monkeypatch, caplog) -> None:
    a = A.Item(spec_from_name("shallow_sqnxt_06_0_15x"), OptimConfig(), AUTO)
    b = A.Item(spec_from_name("shallow_sqnxt_06_0_2x"), OptimConfig(), AUTO)  # same class (0.25-1 M MACs)
    key = A.decision_key(a)
    assert key == A.decision_key(b)
    assert key["device"] == C.device_name(torch.device("cpu")) and key["torch"] == str(torch.__version__)
    assert key["threads"] == 1 and key["batch_size"] == 16 and key["cost_class"] == -1
    assert A.decision_key(replace(a, train=replace(AUTO, threads=2))) != key
    assert A.decision_key(A.Item(spec_from_name("shallow_sqnxt_06_0_9x"), OptimConfig(), AUTO)) != key

    A.save_decision(key, BF16, a.spec, "line")
    assert not A.is_checked(b, BF16)  # b never trained with it here: a worker would check it first
    C.save(C.from_measurement({"train_img_per_s": 1.0, "eval_img_per_s": 1.0, "warmup_seconds": 0.1},
                              C.calibration_key(b.spec, A.finalize(b, BF16), b.optim)))
    assert A.is_checked(b, BF16)
    monkeypatch.setattr(A, "Tuner", lambda *a, **k: pytest.fail("a cached, checked decision must not probe"))
    with caplog.at_level(logging.INFO, logger="dse.autotune"):
        t = A.resolve(b.spec, b.optim, b.train)
        A.resolve(b.spec, b.optim, b.train)
    assert (t.precision, t.channels_last, t.fast_path) == ("bf16", False, "eager")
    assert sum("cached for this machine" in r.message for r in caplog.records) == 1  # said once per process
    # a damaged decision file is no decision
    path = next(p for p in A.cache_root().glob("*.json") if "workers" not in p.name)
    path.write_text("{nope")
    assert A.load_decision(key) is None


def test_fit_refuses_auto_that_was_not_decided(tiny_bundle) -> None:
    from dse.train import fit

    with pytest.raises(ConfigError, match="precision='auto' must be decided before fit"):
        fit(spec_from_name("shallow_sqnxt_06_0_125x"), tiny_bundle, OptimConfig(), AUTO)


def test_worker_candidates_fill_the_cores() -> None:
    assert A.worker_candidates(1) == [(1, 1)]
    assert A.worker_candidates(2) == [(1, 2), (2, 1)]
    assert A.worker_candidates(16) == [(1, 16), (2, 8), (8, 2), (16, 1)]


def test_choose_workers_picks_the_most_images_per_second(monkeypatch) -> None:
    rates = {1: 300.0, 2: 200.0}  # per process: 1 x 2 threads = 300 img/s, 2 x 1 thread = 400 img/s in all

    class FakePool:
        def __init__(self, processes, threads):
            self.processes = processes

        def run(self, jobs, on_result=None):
            return {j.key: {**ok(rates[self.processes]), "eval_img_per_s": 1.0, "warmup_seconds": 0.0}
                    for j in jobs}

        def close(self):
            pass

    monkeypatch.setattr(A, "ProbePool", FakePool)
    items = [A.Item(spec_from_name(n), OptimConfig(), AUTO) for n in ("shallow_sqnxt_06_0_2x", "shallow_sqnxt_06_0_9x")]
    lines = []
    w, t, tuner = A.choose_workers(items, 2, lines.append)
    assert (w, t) == (2, 1) and tuner is not None and tuner.processes == 2
    assert "2 workers x 1 thread" in lines[0] and "400 img/s" in lines[0] and "300 img/s" in lines[0]
    # cached: the next study on this machine decides without probing
    monkeypatch.setattr(A, "ProbePool", lambda *a: pytest.fail("cached"))
    assert A.choose_workers(items, 2, lines.append)[:2] == (2, 1)


# ------------------------------------------------------------------------------------------ real probe processes
def small_job(key: str, name: str = "shallow_sqnxt_06_0_125x", **train) -> Job:
    t = replace(AUTO, **{"precision": "fp32", "channels_last": False, **train})
    return Job(key=key, spec=spec_from_name(name).to_dict(), train=A._train_dict(t), optim=OptimConfig().to_dict())


def test_probe_process_measures_and_survives_a_killed_server() -> None:
    with ProbePool(1, 1) as pool:
        first = pool.run([small_job("a")])["a"]
        assert first["ok"] and first["train_img_per_s"] > 0 and first["eval_img_per_s"] > 0
        victim = pool.servers[0].proc

        def kill_when_busy() -> None:  # a real death mid-probe, as a crashing kernel would cause
            while pool.servers[0].job is None:
                time.sleep(0.01)
            victim.kill()

        killer = threading.Thread(target=kill_when_busy)
        killer.start()
        died = pool.run([small_job("b", "shallow_sqnxt_06_0_9x", batch_size=64)])["b"]
        killer.join()
        assert died["ok"] is False and died["crashed"] and "signal 9" in died["error"]
        assert pool.servers[0].proc is not victim  # replaced: the next probe runs
        assert pool.run([small_job("c")])["c"]["ok"]


def test_probe_reports_a_setting_this_machine_cannot_run() -> None:
    with ProbePool(1, 1) as pool:
        r = pool.run([small_job("amp", precision="amp")])["amp"]
    assert r["ok"] is False and "amp" in r["error"] and not r.get("crashed")


class FakePool:
    """ProbePool's interface, no processes: float32 channels_last is the fastest setting and crashes one
    architecture (as it crashed the narrowest Shallow SqueezeNexts on an AMD Zen 3), so the test is exact."""

    RATES = {FP32: 100.0, FP32_CL: 150.0, BF16: 50.0, BF16_CL: 40.0}
    crashing = "shallow_sqnxt_06_0_2x"
    jobs: list = []

    def __init__(self, processes: int, threads: int) -> None:
        pass

    def run(self, jobs, on_result=None):
        source = jobs if callable(jobs) else iter(list(jobs)).__next__
        out = {}
        while True:
            try:
                job = source()
            except StopIteration:
                job = None
            if job is None:
                return out
            FakePool.jobs.append(job)
            t = job.train
            s = A.Setting(t["precision"], t["channels_last"], t["fast_path"])
            name = ModelSpec.from_dict(job.spec).name
            if name == self.crashing and s == FP32_CL:
                out[job.key] = {"ok": False, "crashed": True, "signal": 11,
                                "error": "the probe process died (signal 11)"}
            else:
                out[job.key] = {"ok": True, "train_img_per_s": self.rate(name, s), "eval_img_per_s": 500.0,
                                "warmup_seconds": 0.1, "warmup_epoch_seconds": 1.0}
            if on_result is not None:
                on_result(job, out[job.key])

    def rate(self, name: str, s: A.Setting) -> float:
        return self.RATES[s]

    def close(self) -> None:
        pass


class ClosePool(FakePool):
    """float32 channels_last 1.1x float32 NCHW for the class's cheapest architecture (a close call), while a
    wider member of the class trains NCHW faster; nothing crashes."""

    crashing = None
    wider = "shallow_sqnxt_06_0_2x"

    def rate(self, name: str, s: A.Setting) -> float:
        if name == self.wider and s in (FP32, FP32_CL):
            return 120.0 if s == FP32 else 100.0
        return {FP32: 100.0, FP32_CL: 110.0, BF16: 50.0, BF16_CL: 40.0}[s]


def test_a_close_class_is_decided_per_architecture_side_by_side(monkeypatch) -> None:
    monkeypatch.setattr(A, "ProbePool", ClosePool)
    FakePool.jobs = []
    lines: list[str] = []
    names = ("shallow_sqnxt_06_0_15x", "shallow_sqnxt_06_0_2x", "shallow_sqnxt_06_0_3x")  # classes -1, -1, 0
    cheapest, wider, other = items = [A.Item(spec_from_name(n), OptimConfig(), AUTO) for n in names]
    resolved = A.Tuner(2, 1, say=lines.append).resolve_all(items)
    assert A.setting_of(resolved[cheapest]) == FP32_CL and A.setting_of(resolved[wider]) == FP32
    assert A.setting_of(resolved[other]) == FP32_CL  # a class of its own, checked the same way
    pairs = [(ModelSpec.from_dict(j.spec).name, A.setting_of(j.train)) for j in FakePool.jobs[-6:]]
    assert pairs[:2] == [(names[0], FP32_CL), (names[0], FP32)]  # a pair runs one right after the other
    assert any(ln.startswith("auto settings for Shallow SqueezeNext-06-0.2x alone (0.25-1 M MACs") and
               "fp32 nchw eager; measured side by side" in ln for ln in lines), lines
    assert A.decided(wider) == FP32 and A.close_pair(wider) is None  # decided for good (cached)
    assert not A.unchecked(resolved)  # the pairs were the calibrations
    FakePool.jobs = []
    assert A.Tuner(2, 1).resolve_all(items) == resolved and FakePool.jobs == []
    # an architecture of a close class that no study checked yet is checked before it trains
    newcomer = A.Item(spec_from_name("shallow_sqnxt_06_0_125x"), OptimConfig(), AUTO)
    assert A.close_pair(newcomer) == (FP32_CL, FP32)
    assert A.setting_of(A.resolve(newcomer.spec, newcomer.optim, AUTO)) == FP32_CL
    assert len(FakePool.jobs) == 2 and A.close_pair(newcomer) is None


def test_a_clear_class_is_not_checked_per_architecture(monkeypatch) -> None:
    monkeypatch.setattr(A, "ProbePool", FakePool)
    FakePool.jobs = []
    names = ("shallow_sqnxt_06_0_15x", "shallow_sqnxt_06_0_3x")
    items = [A.Item(spec_from_name(n), OptimConfig(), AUTO) for n in names]
    A.Tuner(1, 1).resolve_all(items)
    assert all(A.close_pair(it) is None for it in items)  # 150 against 100 img/s: not a close call
    timed = [(ModelSpec.from_dict(j.spec).name, A.setting_of(j.train)) for j in FakePool.jobs]
    assert len(timed) == len(set(timed)) == 8  # each class's chain of four, nothing timed twice


def test_a_crash_is_unsafe_for_that_architecture_alone(monkeypatch) -> None:
    monkeypatch.setattr(A, "ProbePool", FakePool)
    FakePool.jobs = []
    lines: list[str] = []
    names = ("shallow_sqnxt_06_0_15x", "shallow_sqnxt_06_0_2x", "shallow_sqnxt_06_0_3x")  # classes -1, -1, 0
    items = [A.Item(spec_from_name(n), OptimConfig(), AUTO) for n in names]
    narrow, crashing, wide = items
    tuner = A.Tuner(2, 1, say=lines.append)
    resolved = tuner.resolve_all(items)
    assert {A.setting_of(t) for t in resolved.values()} == {FP32_CL}  # each class's fastest, from its cheapest
    assert set(A.unchecked(resolved)) == {crashing}  # the representatives trained with it in their probes
    cals = tuner.calibrate_all(resolved)
    # the crash is that architecture's alone: it falls back to its class's next fastest (bf16 is slower)
    assert A.setting_of(resolved[crashing]) == FP32 and A.setting_of(resolved[narrow]) == FP32_CL
    assert A.unsafe_settings(crashing) == {FP32_CL.label()} and not A.unsafe_settings(narrow)
    assert A.decided(crashing) == FP32 and A.decided(wide) == FP32_CL
    assert cals[crashing].train_img_per_s == 100.0 and set(cals) == set(items)
    assert any("fp32 channels_last eager crashed its probe" in ln and "fp32 nchw eager here instead" in ln
               for ln in lines), lines
    assert any(ln.startswith("calibrated 1/1: Shallow SqueezeNext-06-0.2x") for ln in lines), lines
    assert not A.unchecked(resolved)
    # a second tuner (the next command, a worker) decides and calibrates from the caches alone
    FakePool.jobs = []
    again = A.Tuner(2, 1, say=lines.append)
    assert again.resolve_all(items) == resolved and set(again.calibrate_all(resolved)) == set(items)
    assert FakePool.jobs == []
    assert A.resolve(crashing.spec, crashing.optim, AUTO) == resolved[crashing] and FakePool.jobs == []


def test_resolve_checks_an_unprobed_architecture_before_it_trains(monkeypatch) -> None:
    monkeypatch.setattr(A, "ProbePool", FakePool)
    FakePool.jobs = []
    crashing = A.Item(spec_from_name("shallow_sqnxt_06_0_2x"), OptimConfig(), AUTO)
    A.Tuner(1, 1).resolve_all([A.Item(spec_from_name("shallow_sqnxt_06_0_15x"), OptimConfig(), AUTO)])
    assert A.decided(crashing) == FP32_CL  # its class says so; it never ran with it
    train = A.resolve(crashing.spec, crashing.optim, AUTO)  # a worker about to train it
    assert A.setting_of(train) == FP32 and A.unsafe_settings(crashing) == {FP32_CL.label()}
