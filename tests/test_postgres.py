"""Scale-out on a real PostgreSQL server: parallel workers, SIGKILL mid-trial, a database restart mid-sweep.

Needs `DSE_TEST_PG_URL` (`.ci/run` starts a throwaway cluster on 127.0.0.1:55432 via `.ci/postgres.sh` and sets
it). The outage tests take their server down, so they use a second cluster of their own
(`DSE_TEST_PG_OUTAGE_URL`, 127.0.0.1:55433, with `DSE_TEST_PG_RESTART`/`STOP`/`START`, the shell commands that
restart, stop and start it): tests of other modules may use the shared one meanwhile. Every test uses its own
study name, so they do not see each other's trials.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from dse_testdata import real_cifar10, tiny_imagefolder  # noqa: F401  (fixtures)
from sqlalchemy import create_engine, text

from dse.store import Store

pytestmark = pytest.mark.postgres
PG_URL = os.environ.get("DSE_TEST_PG_URL")
OUTAGE_URL = os.environ.get("DSE_TEST_PG_OUTAGE_URL")  # a server only the outage tests stop and restart
if not PG_URL:
    pytest.skip("DSE_TEST_PG_URL not set (run .ci/postgres.sh to start a server)", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
WIDTHS = "[0.125, 0.15, 0.2]"
DROPOUTS = "[0.1, 0.2, 0.3, 0.4]"  # 3 x 4 = 12 grid trials


def cmd(study: str, ckpt: Path, data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dse.sweep", "experiment=custom", "budget=smoke", "storage=postgres",
            f"study.name={study}", f"study.checkpoint_dir={ckpt}", "data.dataset=imagefolder",
            f"data.root={data}", "data.val_size=50", "data.subset_size=null", "trainer.eval_batch_size=200",
            f"+search.blocks.single.grid={{model.width: {WIDTHS}, model.dropout: {DROPOUTS}}}",
            "storage.heartbeat_interval=1", "storage.grace_period=4", "study.poll_seconds=0.5", "pruner=none",
            "trainer.progress=log", "study.estimate=false", *extra]  # the estimate: tests/test_sweep.py


def env(url: str | None = None) -> dict[str, str]:
    return {**os.environ, "DSE_STORAGE_URL": url or PG_URL, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def rows(study: str, url: str | None = None) -> list[tuple]:
    eng = create_engine(url or PG_URL)
    with eng.connect() as c:
        out = c.execute(text("select identity, status, epochs_done, attempts from dse_trials where study=:s "
                             "order by id"), {"s": study}).fetchall()
    eng.dispose()
    return [tuple(r) for r in out]


def check_agreement(study: str, n: int) -> None:
    rs = rows(study)
    assert len(rs) == n and len({r[0] for r in rs}) == n, rs
    assert all(r[1] == "complete" for r in rs), rs
    st = optuna.load_study(study_name=study, storage=PG_URL)
    complete = [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE]
    ids = [t.user_attrs["identity"] for t in complete]
    assert len(ids) == len(set(ids)) == n  # no configuration completed twice
    assert set(ids) == {r[0] for r in rs}  # the store and Optuna agree row for row
    df = Store(PG_URL).trials(study)
    for t in complete:
        assert t.value == pytest.approx(float(df[df.identity == t.user_attrs["identity"]].best_val_acc.iloc[0]))


def test_three_workers_twelve_trials(tmp_path, tiny_imagefolder):
    study = f"pg3-{uuid.uuid4().hex[:8]}"
    c = cmd(study, tmp_path / "ckpt", tiny_imagefolder, "trainer.epochs=2")
    ps = [subprocess.Popen(c, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in ps]
    assert all(p.returncode == 0 for p in ps), [o[1][-2000:] for o in outs]
    check_agreement(study, 12)
    trained = [int(o[0].split("trained by this worker: ")[1].split()[0]) for o in outs]
    assert sum(trained) == 12 and all(t >= 1 for t in trained), trained  # the work was shared


def test_sigkill_one_worker_mid_trial(tmp_path, tiny_imagefolder):
    study = f"pgkill-{uuid.uuid4().hex[:8]}"
    c = cmd(study, tmp_path / "ckpt", tiny_imagefolder, "trainer.epochs=4")
    ps = [subprocess.Popen(c, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for _ in range(3)]
    by_pid = {p.pid: p for p in ps}
    victim = None
    deadline = time.time() + 300
    while time.time() < deadline and victim is None:
        time.sleep(0.2)
        eng = create_engine(PG_URL)
        try:
            with eng.connect() as conn:
                running = conn.execute(text("select worker from dse_trials where study=:s and status='running' "
                                            "and epochs_done >= 1"), {"s": study}).fetchall()
        except Exception:  # tables not created yet
            running = []
        finally:
            eng.dispose()
        for (worker,) in running:
            pid = int(worker.rsplit(":", 1)[1])
            if pid in by_pid:
                victim = by_pid[pid]
                victim.send_signal(signal.SIGKILL)  # mid-trial: it has written at least one epoch
                break
    assert victim is not None, "no trial got going"
    victim.wait(30)
    others = [p for p in ps if p is not victim]
    outs = [p.communicate(timeout=600) for p in others]
    assert all(p.returncode == 0 for p in others), [o[1][-2000:] for o in outs]
    check_agreement(study, 12)
    retried = [r for r in rows(study) if r[3] >= 2]
    assert retried, "the killed worker's trial was not retried"


needs_outage_server = pytest.mark.skipif(
    not (OUTAGE_URL and os.environ.get("DSE_TEST_PG_RESTART")),
    reason="DSE_TEST_PG_OUTAGE_URL and DSE_TEST_PG_RESTART/STOP/START not set (.ci/postgres.sh)")


@needs_outage_server
def test_database_restart_mid_sweep(tmp_path, tiny_imagefolder):
    study = f"pgrestart-{uuid.uuid4().hex[:8]}"
    c = cmd(study, tmp_path / "ckpt", tiny_imagefolder, "trainer.epochs=3", "storage.retries=8")
    with open(tmp_path / "sweep.err", "w") as log:  # a file, not a pipe read only at the end (it would fill)
        p = subprocess.Popen(c, cwd=REPO, env=env(OUTAGE_URL), stdout=subprocess.DEVNULL, stderr=log, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        time.sleep(0.3)
        try:
            if any(r[1] == "complete" for r in rows(study, OUTAGE_URL)):
                break
        except Exception:
            continue
    subprocess.run(os.environ["DSE_TEST_PG_RESTART"], shell=True, check=True, timeout=60)
    p.wait(timeout=600)
    assert p.returncode == 0, (tmp_path / "sweep.err").read_text()[-3000:]
    # every trial completed exactly once, possibly after a retry; no half-written rows
    rs = rows(study, OUTAGE_URL)
    log = (tmp_path / "sweep.err").read_text()
    assert len(rs) == 12 and all(r[1] == "complete" for r in rs), ([r[1:] for r in rs], log[-6000:])
    eng = create_engine(OUTAGE_URL)
    with eng.connect() as conn:
        orphans = conn.execute(text("select count(*) from dse_epochs e left join dse_trials t on t.id=e.trial_id "
                                    "where t.id is null")).scalar()
        gaps = conn.execute(text("select count(*) from dse_trials t where t.study=:s and (select count(*) from "
                                 "dse_epochs e where e.trial_id=t.id) != t.epochs_done"), {"s": study}).scalar()
    eng.dispose()
    assert orphans == 0 and gaps == 0


def test_unreachable_database_at_start_retries_then_fails(tmp_path, tiny_imagefolder):
    e = {**env(), "DSE_STORAGE_URL": "postgresql+psycopg://dse@127.0.0.1:1/dse", "DSE_DB_PASSWORD": "hunter2"}
    r = subprocess.run(cmd("x", tmp_path, tiny_imagefolder, "storage.retries=2", "storage.backoff=0.1"),
                       cwd=REPO, env=e, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "retry 1/2" in r.stderr and "retry 2/2" in r.stderr  # backoff, then a clear error
    assert r.stderr.strip().splitlines()[-1].startswith("error:")
    assert "hunter2" not in r.stdout + r.stderr


SPACES = {  # two trials each: a grid (joins Optuna when finished) and a sampled study (reports every epoch live)
    "grid": ["+search.blocks.single.grid={model.dropout: [0.1, 0.2]}"],
    "sample": ["search.mode=sample", "search.n_trials=2",
               "++search.params={model.dropout: {type: float, low: 0.1, high: 0.5, step: 0.1}}"],
}


@needs_outage_server
@pytest.mark.parametrize("mode", sorted(SPACES))
def test_epochs_trained_while_the_store_was_away_reach_the_store_and_optuna_once(tmp_path, tiny_imagefolder, mode):
    """The server stops mid-trial: the epoch that finishes meanwhile is in last.pt but not in the store, and the
    worker gives up (exit 2). Once the server is back the same command resumes the trial, writes that epoch from
    last.pt's history first, and every trial has epochs 1..4 in the store and in Optuna, once each, in order."""
    study = f"pgcatch-{mode}-{uuid.uuid4().hex[:8]}"
    c = [a for a in cmd(study, tmp_path / "ckpt", tiny_imagefolder, "trainer.epochs=4", "trainer.precision=fp32",
                        "storage.retries=1", "storage.backoff=0.2", "storage.grace_period=3", "study.estimate=false")
         if not a.startswith("+search.blocks.single.grid=")] + SPACES[mode]
    # its output goes to a file: a pipe nobody reads until the end fills up and blocks the sweep mid-trial
    with open(tmp_path / "first.err", "w") as log:
        p = subprocess.Popen(c, cwd=REPO, env=env(OUTAGE_URL), stdout=subprocess.DEVNULL, stderr=log, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None and not any(
                r[1] == "running" and r[2] >= 1 for r in _rows_or_none(study, OUTAGE_URL)):
            time.sleep(0.2)
        assert p.poll() is None, f"the sweep ended before the outage: {(tmp_path / 'first.err').read_text()[-3000:]}"
        subprocess.run(os.environ["DSE_TEST_PG_STOP"], shell=True, check=True, timeout=60)
        p.wait(timeout=300)
        err = (tmp_path / "first.err").read_text()
        assert p.returncode == 2, err[-3000:]
        assert "unreachable" in err.strip().splitlines()[-1]
    finally:
        if p.poll() is None:
            p.kill()
        subprocess.run(os.environ["DSE_TEST_PG_START"], shell=True, check=False, timeout=60)
    r = subprocess.run(c, cwd=REPO, env=env(OUTAGE_URL), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    if mode == "grid":  # an epoch's one write is the store's: the outage made a hole, and the resume filled it
        assert "written to the store from" in r.stderr
    eng = create_engine(OUTAGE_URL)
    with eng.connect() as conn:
        got = conn.execute(text("select t.id, t.status, t.epochs_done, e.epoch, e.val_acc from dse_trials t join "
                                "dse_epochs e on e.trial_id = t.id where t.study = :s order by t.id, e.epoch"),
                           {"s": study}).fetchall()
    eng.dispose()
    curves: dict[int, dict[int, float]] = {}
    for tid, status, done, epoch, acc in got:
        assert status == "complete" and done == 4
        curves.setdefault(tid, {})[epoch] = acc
    assert len(curves) == 2 and all(list(cv) == [1, 2, 3, 4] for cv in curves.values()), curves
    # sample mode: an outage between study.ask and the store's insert leaves that asked trial RUNNING in Optuna
    # (not in the store; a known gap, not this test's subject): only the trials the store knows are compared
    trials = [t for t in optuna.load_study(study_name=study, storage=OUTAGE_URL).trials
              if "store_trial_id" in t.user_attrs]
    assert len(trials) == 2 and {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    for t in trials:
        assert t.intermediate_values == pytest.approx(curves[t.user_attrs["store_trial_id"]])


def _rows_or_none(study: str, url: str | None = None) -> list[tuple]:
    try:
        return rows(study, url)
    except Exception:  # tables not created yet
        return []
