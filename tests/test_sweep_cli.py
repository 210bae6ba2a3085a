"""The sweep as users meet it: local parallel workers, failures that heal, the Hydra command line, one store URL.

Real `python -m dse.sweep` processes on the small ImageFolder the tests write (tests/dse_testdata.py).
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from conftest import write_cifar10
from dse_testdata import tiny_imagefolder, write_imagefolder  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
WIDTHS = "[0.125, 0.15, 0.2, 0.25, 0.3]"  # x 2 dropouts = 10 grid trials


def run(cmd: list[str], cwd: Path = REPO, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "DSE_STORAGE_URL"}  # the tests name their stores
    e.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **env)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), e.get("PYTHONPATH", "")])
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=e)


def sweep(db: Path, data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dse.sweep", "experiment=custom", "budget=smoke", f"storage.url=sqlite:///{db}",
            f"study.checkpoint_dir={db.parent / 'ckpt'}", "data.dataset=imagefolder", f"data.root={data}",
            "data.val_size=50", "data.subset_size=null", "trainer.eval_batch_size=200", "pruner=none",
            "storage.heartbeat_interval=1", "storage.grace_period=5", "study.poll_seconds=0.3",
            "trainer.progress=none", "study.estimate=false", *extra]  # the estimate: tests/test_sweep.py


def rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute("select identity, status, attempts, fail_reason from dse_trials order by id").fetchall()


def test_four_workers_on_a_fresh_sqlite_file(tmp_path, tiny_imagefolder):
    """workers=4, 10 grid trials: each configuration trained once, no FAIL in Optuna, exit 0."""
    db = tmp_path / "w4.db"
    r = run(sweep(db, tiny_imagefolder, "workers=4",
                  f"+search.blocks.single.grid={{model.width: {WIDTHS}, model.dropout: [0.1, 0.2]}}"))
    assert r.returncode == 0, r.stderr[-4000:]
    rs = rows(db)
    assert len(rs) == 10 and len({i for i, *_ in rs}) == 10
    assert all(s == "complete" and a == 1 for _, s, a, _ in rs), rs
    trials = optuna.load_study(study_name="custom-smoke", storage=f"sqlite:///{db}").trials
    assert len(trials) == 10 and {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    assert sorted(t.user_attrs["identity"] for t in trials) == sorted(i for i, *_ in rs)
    assert "started 4 workers (threads 1 each)" in r.stderr
    assert "study custom-smoke: 10 complete" in r.stdout


def test_missing_data_root_stops_then_heals(tmp_path):
    """No data: one line, exit 2, no failed row. The same command completes once the data is there."""
    db, data = tmp_path / "d.db", tmp_path / "cifar"
    cmd = [*sweep(db, data, "data.dataset=cifar10", "data.download=false"),
           "+search.blocks.single.grid={model.dropout: [0.1, 0.2]}"]
    r = run(cmd)
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: nothing to run") and "2 trials need CIFAR-10: not in" in last
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 2
    assert not db.exists() or all(s != "failed" for _, s, _, _ in rows(db))
    write_cifar10(data, per_batch=60, test=60)
    r = run([*cmd, "data.val_size=20"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert [s for _, s, _, _ in rows(db)] == ["complete", "complete"]


def test_data_missing_for_some_trials_is_reported_once_and_skipped(tmp_path):
    """CIFAR-100 absent (and no download): its trials are reported in one line and not run; the rest runs."""
    db, data = tmp_path / "p.db", tmp_path / "data"
    write_cifar10(data, per_batch=60, test=60)
    r = run([*sweep(db, data, "data.dataset=cifar10", "data.download=false", "data.val_size=20"),
             "+search.blocks.single.grid={data.dataset: [cifar10, cifar100], model.dropout: [0.1, 0.2]}"])
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if "CIFAR-100" in ln]
    assert len(lines) == 1 and "2 trials need CIFAR-100: not in" in lines[0], r.stderr[-3000:]
    rs = rows(db)
    assert [s for _, s, _, _ in rs] == ["complete", "complete"]  # no failed rows, no rows for CIFAR-100


def test_environment_failure_mid_run_leaves_the_trial_queued(tmp_path):
    """A corrupt dataset file is the machine's problem, not the trial's: exit 2, one line, trial still queued."""
    db, data = tmp_path / "c.db", tmp_path / "data"
    write_cifar10(data, per_batch=60, test=60)
    (data / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    cmd = sweep(db, data, "data.dataset=cifar10", "data.download=false", "data.val_size=20")
    r = run(cmd)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: data:") and "Traceback" not in r.stderr
    (status, reason), = [(s, why) for _, s, _, why in rows(db)]
    assert status == "queued" and reason.startswith("waiting: data:")
    write_cifar10(data, per_batch=60, test=60)
    assert run(cmd).returncode == 0
    assert [s for _, s, _, _ in rows(db)] == ["complete"]


@pytest.mark.parametrize(("override", "needle"), [
    ("storage=postgres storage.url=null", "storage backend postgresql needs a URL"),
    ("study.name=../../../x", "study.name='../../../x' is not allowed"),
    ("storage.url=mysql://u@h/db", "backend 'mysql' is not supported; allowed: sqlite, postgresql"),
    ("storage.heartbeat_interval=0", "storage.heartbeat_interval=0.0 is not allowed; allowed: seconds > 0"),
    ("storage.retries=-1", "storage.retries=-1 is not allowed"),
    ("trainer.epochs=abc", "trainer.epochs=abc: Value 'abc' of type 'str' could not be converted to Integer"),
    ("workers=0", "workers=0 is not allowed"),
])
def test_bad_values_are_one_line(tmp_path, tiny_imagefolder, override, needle):
    db = tmp_path / "b.db"
    r = run([*sweep(db, tiny_imagefolder), *override.split()])
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], r.stderr
    assert not (tmp_path / "x").exists() and not db.exists()


def test_tables_from_another_folder_find_the_sweeps_store(tmp_path, tiny_imagefolder):
    """A relative SQLite path names the same file for the sweep and dse.tables, whatever the working directory."""
    rel = f"results/test-{uuid.uuid4().hex[:8]}.db"
    try:
        r = run([*sweep(tmp_path / "unused.db", tiny_imagefolder), f"storage.url=sqlite:///{rel}"], cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        assert (REPO / rel).is_file() and not (tmp_path / rel).exists()
        t = run([sys.executable, "-m", "dse.tables", "--no-figures", "--out", str(tmp_path / "out")], cwd=tmp_path,
                DSE_STORAGE_URL=f"sqlite:///{rel}")
        assert t.returncode == 0, t.stderr
        assert "1 trials (1 complete)" in t.stdout
    finally:
        for suffix in ("", "-wal", "-shm", ".lock"):
            (REPO / (rel + suffix)).unlink(missing_ok=True)


def test_multirun_runs_both_studies_each_in_its_run_folder(tmp_path, tiny_imagefolder):
    db, runs = tmp_path / "m.db", tmp_path / "runs"
    cmd = sweep(db, tiny_imagefolder, "study.name=first,second")
    r = run([*cmd[:3], "-m", *cmd[3:]], DSE_RUNS_DIR=str(runs))
    assert r.returncode == 0, r.stderr[-3000:]
    with sqlite3.connect(db) as c:
        assert c.execute("select study, status from dse_trials order by id").fetchall() == [
            ("first", "complete"), ("second", "complete")]
    jobs = sorted(runs.glob("multirun-*/*/.hydra/config.yaml"))
    assert len(jobs) == 2 and all((j.parent.parent / "sweep.log").is_file() for j in jobs)


def test_multirun_over_two_experiments(tmp_path, tiny_imagefolder):
    db = tmp_path / "e.db"
    cmd = sweep(db, tiny_imagefolder, "experiment=custom,table4")
    r = run([*cmd[:3], "-m", *cmd[3:]])
    assert r.returncode == 0, r.stderr[-3000:]
    with sqlite3.connect(db) as c:
        got = dict(c.execute("select study, count(*) from dse_trials where status='complete' group by study"))
    assert got == {"custom-smoke": 1, "table4-smoke": 5}


def test_hydra_command_line(tmp_path):
    py = [sys.executable, "-m", "dse.sweep"]
    h = run([*py, "--help"])
    assert h.returncode == 0 and "== Config groups ==" in h.stdout
    assert "experiment: cpu, cpu_gpu, custom, dse, paper" in h.stdout and "storage: postgres, sqlite" in h.stdout
    cfg = run([*py, "--cfg", "job", "experiment=table3", "trainer.epochs=7"])
    assert cfg.returncode == 0 and "epochs: 7" in cfg.stdout and "experiment: table3" in cfg.stdout
    info = run([*py, "--info", "searchpath"])
    assert info.returncode == 0 and "conf" in info.stdout
    sc = run([*py, "--shell-completion", "install=bash"])
    assert sc.returncode == 0 and "complete" in sc.stdout
    # completion of the dse-sweep command (pyproject's script; Hydra cannot parse `python -m` lines)
    q = run([*py, "-sc", "query=bash"], COMP_LINE="dse-sweep experiment=tab", COMP_POINT="24")
    assert q.returncode == 0 and "experiment=table3" in q.stdout.split()


def test_run_folder_has_the_config_and_a_log(tmp_path, tiny_imagefolder):
    run_dir = tmp_path / "run"
    r = run([*sweep(tmp_path / "r.db", tiny_imagefolder), f"hydra.run.dir={run_dir}"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    log = (run_dir / "sweep.log").read_text()
    assert re.search(r"trial t\d+ complete", log), log[-2000:]  # the trial's name: its Optuna number


def test_slurm_recipe_runs_the_worker_command(tmp_path):
    """As far as a machine without SLURM allows: the array script composes a valid worker command (PostgreSQL
    storage, the GPU trainer, replica = the array index), and refuses to start without a shared store URL."""
    script = str(REPO / "slurm" / "sweep_array.sbatch")
    env = {"DSE_PYTHON": sys.executable, "SLURM_SUBMIT_DIR": str(REPO), "SLURM_ARRAY_TASK_ID": "3"}
    r = run(["bash", script, "experiment=table4", "--cfg", "job"], DSE_STORAGE_URL="postgresql+psycopg://u@h/db",
            **env)
    assert r.returncode == 0, r.stderr
    assert "backend: postgresql" in r.stdout and "replica: 3" in r.stdout and "precision:" in r.stdout
    r = run(["bash", script, "experiment=table4"], **env)
    assert r.returncode != 0 and "set DSE_STORAGE_URL" in r.stderr


def test_submitit_launcher_composes():  # installed with the project; tests/test_slurm.py runs it under SLURM
    r = run([sys.executable, "-m", "dse.sweep", "--cfg", "hydra", "hydra/launcher=submitit_slurm",
             "replica=0"])
    assert r.returncode == 0 and "submitit" in r.stdout
