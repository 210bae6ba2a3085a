"""SLURM for real: the array recipe and Hydra's submitit launcher on a running scheduler, one PostgreSQL store.

The tests marked `slurm` need a cluster (`.ci/slurm.sh` starts a one-node one on this host and writes
`DSE_TEST_SLURM` and `SLURM_CONF` into /tmp/dse-slurm.env), the CI PostgreSQL (`DSE_TEST_PG_URL`) and the real
CIFAR-10 copy; `.ci/run` provides all three. Each is a tiny study with its own name: Shallow SqueezeNext-06-0.125x,
fp32, one thread per task, a few hundred images. On a one-node cluster "another node" is another array task on
the same host; a node without the data is a task whose DSE_DATA_DIR is empty. The bad-input tests at the end
need no scheduler: they stop before anything is submitted.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from dse_testdata import real_cifar10  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "slurm" / "sweep_array.sbatch"
PG_URL = os.environ.get("DSE_TEST_PG_URL")
CLUSTER = bool(os.environ.get("DSE_TEST_SLURM")) and shutil.which("sbatch") is not None
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
        "DEADLINE"}
# a CPU task of this cluster: the recipe's GPU, 8 cores and 32 GB are for real nodes (command-line options win)
CPU_TASK = ["--gres=none", "--cpus-per-task=1", "--mem=2G"]
TINY = ["experiment=custom", "budget=smoke", "trainer=default", "trainer.precision=fp32", "trainer.threads=1",
        "model.name=shallow_sqnxt_06_0_125x", "data.subset_size=500", "data.val_size=200", "data.test_size=500",
        "data.download=false", "pruner=none", "trainer.progress=log", "study.estimate=false",
        "storage.heartbeat_interval=1", "storage.grace_period=4", "study.poll_seconds=0.5"]


def cluster_test(f):
    """A test on the scheduler: marked slurm (and e2e: real data, the machine's decoded-data cache)."""
    why = "no SLURM cluster (bash .ci/slurm.sh && source /tmp/dse-slurm.env)" if not CLUSTER else \
        "DSE_TEST_PG_URL not set (bash .ci/postgres.sh && source /tmp/dse-pg.env)"
    for mark in (pytest.mark.slurm, pytest.mark.e2e, pytest.mark.skipif(not (CLUSTER and PG_URL), reason=why)):
        f = mark(f)
    return f


def grid(dropouts: list[float]) -> str:
    return f"+search.blocks.single.grid={{model.dropout: {dropouts}}}"


def job_env(tmp: Path, data: Path, **extra: str) -> dict[str, str]:
    """What a task needs (sbatch passes the submitting environment on): the store, the interpreter, the data."""
    return {**os.environ, "DSE_STORAGE_URL": PG_URL or "", "DSE_PYTHON": sys.executable, "DSE_DATA_DIR": str(data),
            "DSE_CHECKPOINT_DIR": str(tmp / "ckpt"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def sbatch(tmp: Path, env: dict[str, str], array: str, *overrides: str) -> str:
    """Submit the array recipe as the README says; the job id."""
    r = subprocess.run(["sbatch", "--parsable", f"--array={array}", *CPU_TASK, f"--output={tmp}/slurm-%A_%a.out",
                        str(SCRIPT), *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def tasks(job: str) -> dict[str, dict[str, str]]:
    """Array task id -> JobState, ExitCode, JobId, StdOut, from `scontrol show job -o` (no accounting needed)."""
    r = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30)
    out = {}
    for line in r.stdout.splitlines():
        f = dict(re.findall(r"(\w+)=(\S*)", line))
        out[f.get("ArrayTaskId", "0")] = f
    return out


def wait_job(job: str, n: int, timeout: float = 150) -> dict[str, dict[str, str]]:
    """Every one of the job's n tasks in a final state; their fields (the job is cancelled on timeout)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        ts = tasks(job)
        if len(ts) == n and all(t["JobState"] in DONE for t in ts.values()):
            return ts
        time.sleep(0.5)
    subprocess.run(["scancel", job], timeout=30)
    raise AssertionError(f"job {job} not finished after {timeout} s: {tasks(job)}")


def output(t: dict[str, str]) -> str:
    return Path(t["StdOut"]).read_text()


@functools.cache
def engine():
    from sqlalchemy import create_engine

    return create_engine(PG_URL)


def pg(sql: str, **params) -> list[tuple]:
    from sqlalchemy import text

    with engine().connect() as c:
        return [tuple(r) for r in c.execute(text(sql), params).fetchall()]


def trials(study: str) -> list[tuple]:
    """(id, status, attempts, epochs_done, epoch rows) per trial of the study."""
    return pg("select t.id, t.status, t.attempts, t.epochs_done, (select count(*) from dse_epochs e where "
              "e.trial_id = t.id) from dse_trials t where t.study = :s order by t.id", s=study)


def victim_after_one_epoch(study: str, timeout: float = 120) -> tuple[int, str]:
    """(trial id, the array task training it) as soon as a trial has finished its first of two epochs."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            running = pg("select id, worker from dse_trials where study = :s and status = 'running' and "
                         "epochs_done = 1", s=study)
        except Exception:  # the first task has not created the tables yet
            running = []
        for trial_id, worker in running:
            job = slurm_job_of(int(worker.rsplit(":", 1)[1]))
            if job:
                return trial_id, job
        time.sleep(0.1)
    raise AssertionError(f"no trial of {study} finished an epoch within {timeout} s: {trials(study)}")


def slurm_job_of(pid: int) -> str | None:
    """The array task (``<array job>_<task>``) a process on this node belongs to. `scontrol listpids` gives the
    task's own job id, which for the last task equals the array's id: scancel must get the task's name."""
    r = subprocess.run(["scontrol", "listpids"], capture_output=True, text=True, timeout=30)
    own = next((cols[1] for cols in map(str.split, r.stdout.splitlines()[1:]) if cols and cols[0] == str(pid)), None)
    q = subprocess.run(["squeue", "-h", "-o", "%A %i"], capture_output=True, text=True, timeout=30)
    return next((name for raw, name in map(str.split, q.stdout.splitlines()) if raw == own), None)


def trained_by(out: str) -> int:
    return int(out.split("trained by this worker: ")[1].split()[0])


@cluster_test
def test_array_job_trains_every_trial_once(tmp_path, real_cifar10):
    """`sbatch --array=1-2 slurm/sweep_array.sbatch ...`: both tasks COMPLETED, each trial trained once, Optuna
    and dse_trials agree row for row."""
    from test_postgres import check_agreement

    study = f"slurm-array-{uuid.uuid4().hex[:8]}"
    job = sbatch(tmp_path, job_env(tmp_path, real_cifar10), "1-2", *TINY, f"study.name={study}",
                 grid([0.1, 0.2, 0.3, 0.4]))
    ts = wait_job(job, 2)
    assert [(t["JobState"], t["ExitCode"]) for t in ts.values()] == [("COMPLETED", "0:0")] * 2, ts
    check_agreement(study, 4)
    assert all(r[2] == 1 for r in trials(study)), trials(study)
    assert sum(trained_by(output(t)) for t in ts.values()) == 4
    assert {f"replica: {i}" for i in ("1", "2")} <= set(_replicas())


def _replicas() -> list[str]:
    """The replica of each task's run, from the run folders Hydra wrote (.hydra/config.yaml)."""
    runs = Path(os.environ["DSE_RUNS_DIR"])
    return [line for f in runs.rglob(".hydra/config.yaml") for line in f.read_text().splitlines()
            if line.startswith("replica:")]


def _two_tasks_one_victim(tmp_path: Path, data: Path, signal: str) -> tuple[str, int, str, dict]:
    """Two 2-epoch trials on two tasks; `scancel --batch --signal=<signal>` to the task of the first trial to
    finish an epoch. (study, its trial id, the victim as <array job>_<task>, every task's fields at the end)."""
    study = f"slurm-{signal.lower()}-{uuid.uuid4().hex[:8]}"
    # 1,000 images: epoch 2 lasts a second or two, time enough for the signal (polled every 0.1 s) to land mid-trial
    job = sbatch(tmp_path, job_env(tmp_path, data), "1-2", *TINY, "data.subset_size=1000", "trainer.epochs=2",
                 f"study.name={study}", grid([0.1, 0.2]))
    trial_id, victim = victim_after_one_epoch(study)
    subprocess.run(["scancel", "--batch", f"--signal={signal}", victim], check=True, timeout=30)
    return study, trial_id, victim, wait_job(job, 2)


def _resumed_by_the_other(study: str, trial_id: int, victim: str, ts: dict) -> str:
    """The victim's trial finished by the other task from its last epoch; nothing lost or doubled."""
    from test_postgres import check_agreement

    check_agreement(study, 2)
    rows = {r[0]: r for r in trials(study)}
    assert rows[trial_id][2] == 2 and rows[trial_id][3:] == (2, 2), rows  # attempt 2; 2 epochs, one row each
    other = next(t for i, t in ts.items() if i != victim.split("_")[1])
    assert (other["JobState"], other["ExitCode"]) == ("COMPLETED", "0:0"), ts
    out = output(other)
    number = pg("select optuna_trial_number from dse_trials where id = :i", i=trial_id)[0][0]
    assert re.search(rf"trial t{number} \(attempt 2\).*resuming after epoch 1", out), out[-3000:]
    return out


@cluster_test
def test_preempted_task_hands_its_trial_over(tmp_path, real_cifar10):
    """SIGTERM to a task mid-trial (what preemption and `#SBATCH --signal=B:TERM@120` deliver): its trial is
    marked interrupted, the task exits 130, the other task resumes the trial from epoch 1 and finishes it."""
    study, trial_id, victim, ts = _two_tasks_one_victim(tmp_path, real_cifar10, "TERM")
    v = ts[victim.split("_")[1]]
    assert (v["JobState"], v["ExitCode"]) == ("FAILED", "130:0"), ts
    assert "interrupted: 1 running trial marked 'interrupted'" in output(v)
    _resumed_by_the_other(study, trial_id, victim, ts)


@cluster_test
def test_killed_task_loses_its_trial_to_the_lease(tmp_path, real_cifar10):
    """SIGKILL to a task mid-trial (a lost node, the OOM killer): nothing marks the trial; its lease runs out
    (storage.grace_period=4 s), the other task re-queues it and resumes it from epoch 1."""
    study, trial_id, victim, ts = _two_tasks_one_victim(tmp_path, real_cifar10, "KILL")
    v = ts[victim.split("_")[1]]
    assert v["JobState"] == "FAILED" and v["ExitCode"] == "0:9", ts  # killed by signal 9
    out = _resumed_by_the_other(study, trial_id, victim, ts)
    assert "lost its worker (lease expired); re-queued" in out


def submitit_sweep(tmp_path: Path, study: str, replicas: int, *extra: str) -> list[str]:
    """The submitit command as the README gives it (one CPU and 2 GB per job on this cluster)."""
    return [sys.executable, "-m", "dse.sweep", "-m", "hydra/launcher=submitit_slurm", f"replica=range({replicas})",
            "storage=postgres", f"study.checkpoint_dir={tmp_path / 'ckpt'}", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10", *TINY, f"study.name={study}", *extra]


@cluster_test
def test_submitit_launcher_runs_the_workers_as_slurm_jobs(tmp_path, real_cifar10):
    """`python -m dse.sweep -m hydra/launcher=submitit_slurm replica='range(2)' ...`: two SLURM jobs of one
    study, each trial once, every result in the store and in Optuna; the command exits 0 like its jobs."""
    from test_postgres import check_agreement

    study = f"slurm-submitit-{uuid.uuid4().hex[:8]}"
    r = subprocess.run(submitit_sweep(tmp_path, study, 2, grid([0.1, 0.2, 0.3, 0.4])), cwd=REPO,
                       env=job_env(tmp_path, real_cifar10), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    check_agreement(study, 4)
    runs = Path(os.environ["DSE_RUNS_DIR"])
    logs = list(runs.rglob(".submitit/*_*/*_0_log.out"))
    assert len(logs) == 2 and sum(trained_by(f.read_text()) for f in logs) == 4, [f.read_text()[-500:] for f in logs]
    assert sorted(f.read_text() for f in runs.glob("multirun-*/*/exit_code")) == ["0\n", "0\n"]  # from each node


@cluster_test
def test_task_on_a_node_without_the_data_leaves_its_trials_queued(tmp_path, real_cifar10):
    """The study is queued (here by this process, which has the data). An array task and a submitit job whose
    node lacks it: the task says so in one line and exits 2, the submitting command exits 2 naming its job; the
    trials stay queued for a node that has the data, none failed."""
    from dse.config import compose
    from dse.sweep.plan import make_plan
    from dse.sweep.worker import Worker

    study = f"slurm-nodata-{uuid.uuid4().hex[:8]}"
    cfg = compose([*TINY, "storage=postgres", f"storage.url={PG_URL}", f"data.root={real_cifar10}",
                   f"study.name={study}", grid([0.1, 0.2])])
    w = Worker(cfg, make_plan(cfg), PG_URL)
    w.open()
    assert w.prepare() == 2
    empty = tmp_path / "no-data"
    empty.mkdir()
    env = job_env(tmp_path, empty)
    job = sbatch(tmp_path, env, "1", *TINY, f"study.name={study}", grid([0.1, 0.2]))
    r = subprocess.run(submitit_sweep(tmp_path, study, 1, grid([0.1, 0.2])), cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    (t,) = wait_job(job, 1).values()
    assert (t["JobState"], t["ExitCode"]) == ("FAILED", "2:0"), t
    last = output(t).strip().splitlines()[-1]
    assert last.startswith(f"error: nothing to run for study {study}: 2 trials need CIFAR-10: not in {empty}"), last
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: 1 of 1 SLURM jobs did not finish cleanly (job 0 "
                                                        "exited 2)"), r.stderr[-3000:]
    assert [row[1:3] for row in trials(study)] == [("queued", 0)] * 2


# -- bad input: one line each, before anything is submitted or trained (no scheduler needed) ----------------------
def run_recipe(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "DSE_STORAGE_URL"}
    e.update(DSE_PYTHON=sys.executable, SLURM_SUBMIT_DIR=str(REPO), SLURM_ARRAY_TASK_ID="1", **env)
    return subprocess.run(["bash", str(SCRIPT), *TINY], cwd=tmp_path, env=e, capture_output=True, text=True,
                          timeout=60)


def one_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (r.returncode, r.stderr[-2000:])
    return r.stderr.strip()


def test_recipe_without_a_store_url_says_so(tmp_path):
    assert one_line(run_recipe(tmp_path)).startswith("error: set DSE_STORAGE_URL to a PostgreSQL URL")


def test_recipe_refuses_a_sqlite_store(tmp_path):
    line = one_line(run_recipe(tmp_path, DSE_STORAGE_URL=f"sqlite:///{tmp_path}/x.db"))
    assert "SQLite" in line and "PostgreSQL" in line


def submitit(tmp_path: Path, *extra: str, **env: str) -> subprocess.CompletedProcess:
    """The submitit command with nothing about the store unless given: it must stop before submitting."""
    e = {k: v for k, v in os.environ.items() if k != "DSE_STORAGE_URL"}
    e.update(env)
    return subprocess.run([sys.executable, "-m", "dse.sweep", "-m", "hydra/launcher=submitit_slurm",
                           "replica=range(2)", *extra, *TINY], cwd=tmp_path, env=e, capture_output=True, text=True,
                          timeout=120)


def test_submitit_without_sbatch_says_so(tmp_path):
    venv_only = str(Path(sys.executable).parent)  # python is here; sbatch is not
    line = one_line(submitit(tmp_path, "storage=postgres", DSE_STORAGE_URL="postgresql+psycopg://u@h/db",
                             PATH=venv_only))
    assert line.startswith("error: hydra/launcher=submitit_slurm") and "sbatch" in line


def test_submitit_without_a_store_url_says_so(tmp_path):
    line = one_line(submitit(tmp_path, "storage=postgres"))
    assert "needs a URL" in line


def test_submitit_refuses_a_sqlite_store(tmp_path):
    line = one_line(submitit(tmp_path, f"storage.url=sqlite:///{tmp_path}/x.db"))
    assert "SQLite" in line and "PostgreSQL" in line
