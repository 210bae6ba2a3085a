"""Faults that cost nothing (issue 16): signals, full disks, broken store files, bad data, secrets.

Real `python -m dse.sweep`, `dse.tables` and `dse.deploy` processes on the small ImageFolder the tests write
(tests/dse_testdata.py), real signals, real full file systems (a tiny tmpfs; skipped where mounting is not
permitted).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from dse_testdata import tiny_imagefolder, write_imagefolder  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "DSE_STORAGE_URL"}  # the tests name their stores
    e.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), e.get("PYTHONPATH", "")])
    return e


def run(cmd: list[str], timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env(**extra))


def sweep(db: Path | str, ckpt: Path, data: Path, *extra: str) -> list[str]:
    url = db if isinstance(db, str) else f"sqlite:///{db}"
    return [sys.executable, "-m", "dse.sweep", "experiment=table4", "budget=smoke", f"storage.url={url}",
            f"study.checkpoint_dir={ckpt}", "data.dataset=imagefolder", f"data.root={data}", "data.val_size=50",
            "data.subset_size=null", "trainer.eval_batch_size=200", "trainer.precision=fp32", "pruner=none",
            "storage.heartbeat_interval=1", "storage.grace_period=5", "study.poll_seconds=0.3",
            "study.estimate=false", "trainer.progress=none", *extra]


def rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute("select status, epochs_done, fail_reason from dse_trials order by id").fetchall()


def wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if pred():
                return
        except sqlite3.OperationalError:  # the store is being created
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# -- 1. signals ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_the_main_process_stops_every_worker(tmp_path, tiny_imagefolder, sig):
    """`kill -INT` / `kill -TERM` of the sweep's main process only (what a script or a process manager sends; a
    terminal's Ctrl-C signals the whole group instead): both workers stop within seconds, each marks its trial
    interrupted, the rest stays queued, and the message counts the trials it marked."""
    db = tmp_path / "s.db"
    # 5 trials of 30 epochs (~1 s each): the queue takes minutes, a stop takes seconds
    p = subprocess.Popen(sweep(db, tmp_path / "ckpt", tiny_imagefolder, "workers=2", "trainer.epochs=30"),
                         cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: db.exists() and sum(s == "running" and e >= 1 for s, e, _ in rows(db)) == 2, 240,
                 "both workers to be mid-trial")
        t0 = time.time()
        os.kill(p.pid, sig)
        out, err = p.communicate(timeout=120)
        stopped_in = time.time() - t0
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err[-3000:]
    assert stopped_in < 60, f"the workers took {stopped_in:.0f} s to stop"
    statuses = [s for s, _, _ in rows(db)]
    assert sorted(statuses) == ["interrupted", "interrupted", "queued", "queued", "queued"], statuses
    assert "interrupted: 2 running trials marked 'interrupted'" in err.strip().splitlines()[-1], err[-2000:]
    assert "Traceback" not in err and "died" not in err
    trials = optuna.load_study(study_name="table4-smoke", storage=f"sqlite:///{db}").trials
    assert trials == []  # grid trials reach Optuna when finished: nothing was
