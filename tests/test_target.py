"""The embedded target in the search: budgets on peak RAM, int8 flash and latency reject before training; latency
facts are measured once per architecture and host and cached; latency can be an Optuna objective."""

from __future__ import annotations

import sqlite3

import optuna
import pytest
from dse_testdata import tiny_imagefolder  # noqa: F401  (fixture)
from test_sweep import run, sweep_cmd

from dse.config import compose
from dse.errors import ConfigError
from dse.models import model_facts, spec_from_name
from dse.space import plan_grid


def test_a_ram_budget_rejects_before_training_with_the_value():
    plan = plan_grid(compose(["experiment=table3", "target=mcu", "search.constraints.max_ram_bytes=40000"]))
    assert len(plan) == 13
    for p in plan:
        ram = p.facts.ram_bytes_int8
        assert (p.rejected is not None) == (ram > 40_000 or p.facts.flash_bytes > 1_048_576), p.trial.model.name
        if ram > 40_000:
            assert p.rejected == f"peak int8 activation bytes {ram:,} > max_ram_bytes 40,000"
    assert any(p.rejected is None for p in plan) and any(p.rejected for p in plan)
    fp32 = plan_grid(compose(["experiment=table3", "target=mcu", "target.precision=fp32",
                              "search.constraints.max_ram_bytes=40000"]))
    assert sum(p.rejected is not None for p in fp32) > sum(p.rejected is not None for p in plan)  # 4 bytes each


def test_the_mcu_flash_budget_counts_int8_weights():
    plan = plan_grid(compose(["experiment=table3", "target=mcu"]))
    big = [p for p in plan if p.facts.flash_bytes > 1_048_576]
    assert big and all(p.rejected.startswith("int8 weight bytes") or p.rejected.startswith("peak") for p in big)
    assert all(p.latency is None for p in plan)  # no latency budget, no latency objective: not measured


def test_a_latency_budget_is_checked_on_the_measured_untrained_network():
    plan = plan_grid(compose(["experiment=table4", "target=arm_board", "search.constraints.max_latency_ms=0.001"]))
    assert plan and all(p.latency is not None and p.latency.p99_ms > 0.001 for p in plan)
    p = plan[0]
    assert p.rejected == (f"p99 latency {p.latency.p99_ms:.2f} ms (untrained, this host) > max_latency_ms 0.001")
    relaxed = plan_grid(compose(["experiment=table4", "target=arm_board"]))  # 33.3 ms: a 0.9 M-MAC net fits
    assert all(q.rejected is None for q in relaxed)


@pytest.mark.parametrize("overrides, needle", [
    (["target.latency=never", "target=arm_board"], "target.latency='never'"),
    (["target.precision=int4"], "target.precision='int4'"),
    (["search.constraints.max_ram_bytes=0"], "search.constraints.max_ram_bytes=0"),
])
def test_bad_target_settings_are_one_line(overrides, needle):
    from dse.config import check

    with pytest.raises(ConfigError, match="not allowed") as e:
        check(compose(["experiment=table4", *overrides]))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_latency_is_measured_once_per_architecture_and_host(monkeypatch):
    from dse.deploy import facts

    specs = [spec_from_name("shallow_sqnxt_06_0_2x"), spec_from_name("shallow_sqnxt_06_0_2x", dropout=0.4)]
    first = facts.latency_facts(specs)
    assert first[specs[0]] == first[specs[1]]  # dropout does nothing at inference: one measurement
    assert 0 < first[specs[0]].p50_ms <= first[specs[0]].p99_ms

    def no_measuring(*a, **k):
        raise AssertionError("measured again although cached")

    monkeypatch.setattr(facts, "_measure", no_measuring)
    assert facts.latency_facts(specs) == first  # the cache hit
    monkeypatch.setattr(facts.socket, "gethostname", lambda: "another-host")
    with pytest.raises(AssertionError, match="measured again"):
        facts.latency_facts(specs)  # another host: its own measurement


MODES = {"grid": ["max_trials=2"],
         "sample": ["search.mode=sample", "search.n_trials=2", "sampler=nsga2",
                    "++search.params={model.dropout: {type: float, low: 0.1, high: 0.5, step: 0.1}}"]}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_facts_reach_the_store_and_latency_is_an_objective(tmp_path, tiny_imagefolder, mode):
    """A study with objectives [val_acc, latency_ms] (a grid, and points an NSGA-II sampler draws): Optuna gets
    two directions and each trial's second value is the latency the store recorded before training."""
    db, ckpt = tmp_path / "s.db", tmp_path / "ckpt"
    r = run(sweep_cmd(db, ckpt, tiny_imagefolder, "search.objectives=[val_acc,latency_ms]", *MODES[mode]))
    assert r.returncode == 0, r.stderr[-3000:]
    study = optuna.load_study(study_name="table4-smoke", storage=f"sqlite:///{db}")
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    with sqlite3.connect(db) as c:
        rows = c.execute("select optuna_trial_number, latency_p50_ms, ram_bytes_int8, flash_bytes, status, "
                         "model_name from dse_trials").fetchall()
    for _, lat, ram, flash, _, name in rows:
        facts = model_facts(spec_from_name(name))
        assert (ram, flash) == (facts.ram_bytes_int8, facts.flash_bytes) and lat > 0
    done = {n: lat for n, lat, _, _, s, _ in rows if s == "complete"}
    assert len(done) == 2
    for t in study.trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.values[1] == pytest.approx(done[t.number])
            assert t.user_attrs["latency_p50_ms"] == pytest.approx(done[t.number])  # the dashboard shows the facts
            assert t.user_attrs["ram_bytes_int8"] > 0 and t.user_attrs["flash_bytes"] > 0


def test_many_architectures_are_exported_over_the_cores_and_timed_alike(monkeypatch):
    """Past PARALLEL_FROM architectures the exports run in spawned processes; the timings are the same kind."""
    from dse.deploy import facts

    monkeypatch.setattr(facts, "PARALLEL_FROM", 2)
    specs = [spec_from_name(n) for n in ("shallow_sqnxt_06_0_2x", "shallow_sqnxt_07_0_2x", "shallow_sqnxt_08_0_2x")]
    out = facts.latency_facts(specs)
    assert set(out) == set(specs) and all(0 < f.p50_ms <= f.p99_ms for f in out.values())


def test_progress_is_said_only_for_slow_work():
    import logging

    from dse.common import progress_every

    said: list[str] = []

    class Log(logging.Logger):
        def info(self, msg, *args, **kw):  # noqa: D102 - a recorder
            said.append(msg % args)

    quick, slow = progress_every(3600, Log("q"), "quick"), progress_every(0, Log("s"), "slow")
    for i in range(1, 4):
        quick(i, 3)
        slow(i, 3)
    assert said == ["slow: 1 of 3", "slow: 2 of 3", "slow: 3 of 3"]


def test_a_sweep_stores_rejected_configurations_untrained(tmp_path, tiny_imagefolder):
    """target=mcu with a RAM budget below every point: the sweep trains nothing, each row is rejected with the
    value in its reason, and the exit code says the study ran (0)."""
    db, ckpt = tmp_path / "s.db", tmp_path / "ckpt"
    r = run(sweep_cmd(db, ckpt, tiny_imagefolder, "target=mcu", "search.constraints.max_ram_bytes=1000"))
    assert r.returncode == 0, r.stderr[-3000:]
    with sqlite3.connect(db) as c:
        rows = c.execute("select status, epochs_done, fail_reason from dse_trials").fetchall()
    ram = model_facts(spec_from_name("shallow_sqnxt_06_0_2x")).ram_bytes_int8
    assert len(rows) == 5 and all(s == "rejected" and e == 0 for s, e, _ in rows)
    assert {why for _, _, why in rows} == {
        f"rejected by constraint: peak int8 activation bytes {ram:,} > max_ram_bytes 1,000"}
    assert not ckpt.exists() or not any(ckpt.rglob("*.pt"))
