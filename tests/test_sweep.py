"""The sweep: studies in the store, restarts, SIGKILL mid-trial, Ctrl-C, two workers on one study, failures.

These run real `python -m dse.sweep` processes on a small ImageFolder the tests write (10 classes of
coloured 32x32 images), so they exercise the whole path (Hydra -> Optuna -> training core -> store) in seconds.
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
from dse_testdata import real_cifar10, tiny_imagefolder  # noqa: F401  (fixtures)

from dse.store import SCHEMA_VERSION, Store

REPO = Path(__file__).resolve().parents[1]


def sweep_cmd(db: Path, ckpt: Path, data: Path, *extra: str, estimate: bool = False) -> list[str]:
    """The sweep on the tiny data; the estimate's calibration (a probe process per run) only where a test
    looks at it, so the suite does not pay it in every sweep."""
    return [sys.executable, "-m", "dse.sweep", "experiment=table4", "budget=smoke", f"study.estimate={estimate}",
            f"storage.url=sqlite:///{db}", f"study.checkpoint_dir={ckpt}", "data.dataset=imagefolder",
            f"data.root={data}", "data.val_size=50", "data.subset_size=null", "trainer.eval_batch_size=200",
            "storage.heartbeat_interval=1", "storage.grace_period=3", "study.poll_seconds=0.5",
            "pruner=none", "trainer.progress=log", *extra]


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def optuna_trials(db: Path, name: str = "table4-smoke") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}").trials


def store_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute("select identity, status, epochs_done, attempts from dse_trials order by id").fetchall()


def test_smoke_study_fills_store_and_restart_trains_nothing(tmp_path, tiny_imagefolder):
    db, ckpt = tmp_path / "s.db", tmp_path / "ckpt"
    r = run(sweep_cmd(db, ckpt, tiny_imagefolder, estimate=True))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = store_rows(db)
    assert len(rows) == 5 and {s for _, s, _, _ in rows} == {"complete"}
    assert "study table4-smoke: 5 complete" in r.stdout
    # the Optuna study agrees row for row, and a second run trains nothing new
    r2 = run(sweep_cmd(db, ckpt, tiny_imagefolder))
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "trained by this worker: 0" in r2.stdout
    study = optuna.load_study(study_name="table4-smoke", storage=f"sqlite:///{db}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.user_attrs["identity"] for t in done) == sorted(i for i, *_ in rows)
    df = Store(f"sqlite:///{db}").trials("table4-smoke")
    for t in done:
        row = df[df.identity == t.user_attrs["identity"]].iloc[0]
        assert t.value == pytest.approx(row.best_val_acc)
        assert t.params["dropout"] == pytest.approx(row.dropout)
    for t in done:  # one trial number: the store keeps the number the dashboard shows
        assert df[df.identity == t.user_attrs["identity"]].iloc[0].optuna_trial_number == t.number
    # what ran is stored with every trial: compare speeds only like for like
    for _, row in df.iterrows():
        assert (row.precision, row.memory_format, row.fast_path) == ("fp32", "nchw", "eager")
        assert row.threads >= 1 and row.warmup_seconds >= 0
    # before training: the estimate from the calibration; after each trial: the study's progress
    assert "estimated wall time:" in r.stderr and "for 5 trials on 1 worker" in r.stderr
    assert "study: 5 of 5 trials finished" in r.stderr
    epochs = Store(f"sqlite:///{db}").epochs(study="table4-smoke")
    assert len(epochs) == 5  # smoke budget: 1 epoch each
    assert len(study.trials) == 5  # the rerun added nothing
    study_attrs = study.user_attrs
    assert study_attrs["constant model"] == "shallow_sqnxt_06_0_2x" and study_attrs["constant seed"] == 0
    check_dashboard(f"sqlite:///{db}", "table4-smoke")
    # a completed trial keeps best.pt (the model) but not last.pt (its resume state); files readable by others
    folders = sorted((ckpt / "table4-smoke").iterdir())
    assert {f.name.split("-", 1)[1] for f in folders} == {"shallow_sqnxt_06_0_2x"}
    assert all((f / "best.pt").is_file() and not (f / "last.pt").exists() for f in folders)
    # one name per trial: Optuna's number names the checkpoint folder and the log's lines
    names = sorted(f"t{t.number}" for t in done)
    assert sorted(f.name.split("-", 1)[0] for f in folders) == names
    assert all(f"trial {n} complete" in r.stderr for n in names)
    # the dashboard's timeline: every trial ran from its claim to its end, on Optuna's clock
    assert all(t.datetime_start < t.datetime_complete for t in done)


def check_dashboard(url: str, name: str) -> None:
    """optuna-dashboard (its WSGI app, as `optuna-dashboard URL` serves it) opens the study with its params."""
    import io
    import json
    from wsgiref.util import setup_testing_defaults

    import optuna_dashboard

    app = optuna_dashboard.wsgi(url)

    def get(path: str) -> dict:
        env: dict = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
        setup_testing_defaults(env)
        status: list[str] = []
        body = b"".join(app(env, lambda s, h, *a: status.append(s)))
        assert status[0].startswith("200"), (path, status, body[:300])
        return json.loads(body)

    studies = get("/api/studies")["study_summaries"]
    sid = [s["study_id"] for s in studies if s["study_name"] == name][0]
    detail = get(f"/api/studies/{sid}")
    assert len(detail["trials"]) >= 5
    trial = detail["trials"][0]
    # only what varies within Table 4 (the dropout) is a parameter; the constants are study attributes
    assert {p["name"] for p in trial["params"]} == {"dropout"}
    assert {a["key"] for a in trial["user_attrs"]} >= {"identity", "model", "checkpoint_bytes", "test_acc"}
    assert [v["step"] for v in trial["intermediate_values"]] == [1]  # the curve, without a pruner
    assert detail["objective_names"] == ["val accuracy %"]


def test_sigkill_mid_trial_then_rerun_completes_every_trial_once(tmp_path, tiny_imagefolder):
    db, ckpt = tmp_path / "k.db", tmp_path / "ckpt"
    cmd = sweep_cmd(db, ckpt, tiny_imagefolder, "trainer.epochs=4")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        killed_identity = None
        while time.time() < deadline:  # wait until a trial is mid-way (>= 1 epoch stored, not finished)
            time.sleep(0.2)
            if db.exists():
                try:
                    running = [r for r in store_rows(db) if r[1] == "running" and r[2] >= 1]
                except sqlite3.OperationalError:
                    continue
                if running:
                    killed_identity = running[0][0]
                    break
        assert killed_identity, "no trial reached its first epoch"
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
    r = run(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = store_rows(db)
    assert len(rows) == 5 and len({i for i, *_ in rows}) == 5
    assert all(s == "complete" and e == 4 for _, s, e, _ in rows), rows
    killed = [r for r in rows if r[0] == killed_identity][0]
    assert killed[3] == 2  # trained twice: the killed attempt and the retry (which resumed)
    assert "resum" in r.stderr.lower() and "lost its worker" in r.stderr
    study = optuna.load_study(study_name="table4-smoke", storage=f"sqlite:///{db}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.user_attrs["identity"] for t in complete) == sorted(i for i, *_ in rows)


def test_ctrl_c_marks_the_trial_and_the_rerun_finishes(tmp_path, tiny_imagefolder):
    db, ckpt = tmp_path / "c.db", tmp_path / "ckpt"
    # 10 epochs of ~1 s: a trial runs long enough that a loaded machine's polling still catches it mid-way
    cmd = sweep_cmd(db, ckpt, tiny_imagefolder, "trainer.epochs=10")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        time.sleep(0.1)
        try:
            if db.exists() and any(r[1] == "running" and r[2] >= 1 for r in store_rows(db)):
                break
        except sqlite3.OperationalError:
            continue
    assert p.poll() is None, "the study finished before a trial could be interrupted"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    statuses = [r[1] for r in store_rows(db)]
    assert statuses.count("interrupted") == 1 and "running" not in statuses, statuses
    # optuna-dashboard shows the queue: every trial not finished is WAITING, the interrupted one says why
    trials = optuna_trials(db)
    waiting = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]
    assert len(trials) == 5 and len(waiting) == statuses.count("interrupted") + statuses.count("queued")
    assert sum("interrupted" in t.user_attrs.get("waiting_because", "") for t in waiting) == 1
    assert all(t.params for t in waiting)
    r = run(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {s for _, s, _, _ in store_rows(db)} == {"complete"} and len(store_rows(db)) == 5
    assert {t.state for t in optuna_trials(db)} == {optuna.trial.TrialState.COMPLETE}


def test_two_workers_train_disjoint_trials(tmp_path, tiny_imagefolder):
    db, ckpt = tmp_path / "w.db", tmp_path / "ckpt"
    cmd = sweep_cmd(db, ckpt, tiny_imagefolder, "trainer.epochs=2")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    rows = store_rows(db)
    assert len(rows) == 5 and len({i for i, *_ in rows}) == 5
    assert all(s == "complete" and a == 1 for _, s, _, a in rows), rows  # nothing trained twice
    trained = [int(o[0].split("trained by this worker: ")[1].split()[0]) for o in outs]
    assert sum(trained) == 5
    study = optuna.load_study(study_name="table4-smoke", storage=f"sqlite:///{db}")
    complete = [t.user_attrs["identity"] for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == len(set(complete)) == 5


def test_failing_trial_fails_alone_and_retry_failed_requeues_it(tmp_path, tiny_imagefolder):
    """A diverging optimizer (lr 1e6) fails its trial with the reason stored; the sweep goes on, says so in one
    line and exits 1. retry_failed=true runs the failed trial again (it diverges again: a real failure)."""
    db, ckpt = tmp_path / "f.db", tmp_path / "ckpt"
    cmd = [*sweep_cmd(db, ckpt, tiny_imagefolder), "experiment=custom",
           "search.blocks.single.points=[{optimizer.lr: 1.0e+6}, {optimizer.lr: 0.01}]"]
    r = run(cmd)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "1 complete, 1 failed" in r.stdout and "failed in this run: 1" in r.stdout
    assert "Traceback" not in r.stderr and r.stderr.count("diverged") == 1  # Optuna does not repeat it
    with sqlite3.connect(db) as c:
        rows = c.execute("select status, fail_reason, attempts from dse_trials order by lr").fetchall()
    assert [s for s, _, _ in rows] == ["complete", "failed"]
    assert "diverged" in rows[1][1]
    failed = [t for t in optuna_trials(db, "custom-smoke") if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and "diverged" in failed[0].user_attrs["fail_reason"]
    assert run(cmd).returncode == 0  # nothing to do: a failed trial stays failed
    r = run([*cmd, "retry_failed=true"])
    assert r.returncode == 1 and "retry_failed=true: 1 failed trial re-queued" in r.stderr
    with sqlite3.connect(db) as c:
        assert c.execute("select status, attempts from dse_trials order by lr").fetchall() == [
            ("complete", 1), ("failed", 2)]
    states = [t.state for t in optuna_trials(db, "custom-smoke")]
    assert states.count(optuna.trial.TrialState.FAIL) == 2 and len(states) == 3


def test_study_reused_with_other_space_is_refused_and_store_untouched(tmp_path, tiny_imagefolder):
    db, ckpt = tmp_path / "m.db", tmp_path / "ckpt"
    assert run(sweep_cmd(db, ckpt, tiny_imagefolder)).returncode == 0
    before = store_rows(db)
    r = run([*sweep_cmd(db, ckpt, tiny_imagefolder), "experiment=table3", "study.name=table4-smoke"])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: study 'table4-smoke'")
    assert "Traceback" not in r.stderr
    assert "different search space" in r.stderr
    assert store_rows(db) == before


def test_unreachable_storage_is_a_clear_error(tmp_path, tiny_imagefolder, monkeypatch):
    monkeypatch.setenv("DSE_DB_PASSWORD", "s3cret")  # inside the URL it is refused (tests/test_faults.py)
    r = run([*sweep_cmd(tmp_path / "x.db", tmp_path, tiny_imagefolder),
             "storage.url=postgresql+psycopg://nobody@127.0.0.1:1/nowhere", "storage.retries=1",
             "storage.backoff=0.1"])
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "unreachable" in last
    assert "s3cret" not in r.stderr + r.stdout  # the password is never printed


def test_newer_schema_is_refused(tmp_path):
    db = tmp_path / "new.db"
    Store(f"sqlite:///{db}")
    with sqlite3.connect(db) as c:
        c.execute("update dse_meta set value='99' where key='schema_version'")
    from dse.store import StoreError

    with pytest.raises(StoreError, match="schema version 99, newer"):
        Store(f"sqlite:///{db}")


@pytest.mark.e2e
def test_real_smoke_study_on_cifar10_jpg(tmp_path, real_cifar10):
    """Table 3 widths on a subset of the real CIFAR-10 copy (2 epochs of 5,000 images): a minute on 2 cores."""
    db, ckpt = tmp_path / "t3.db", tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "dse.sweep", "experiment=table3", "budget=smoke", f"storage.url=sqlite:///{db}",
           f"study.checkpoint_dir={ckpt}", f"data.root={real_cifar10}", "trainer=cpu_fast", "trainer.epochs=2",
           "trainer.progress=log", "data.subset_size=5000", "data.val_size=500", "optimizer.lr=0.05",
           "search.blocks.table3.points=[{model.name: shallow_sqnxt_06_0_125x}, {model.name: shallow_sqnxt_06_0_4x}]"]
    r = run(cmd, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = store_rows(db)
    assert len(rows) == 2 and all(s == "complete" and e == 2 for _, s, e, _ in rows)
    df = Store(f"sqlite:///{db}").trials()
    assert (df.data_source.str.contains("cifar10-jpg")).all()
    assert (df.test_images == 2000).all() and (df.train_images == 5000).all()
    assert (df.best_val_acc > 20).all(), df.best_val_acc.tolist()  # clearly above chance (10 %) in 2 epochs
    # trainer=cpu_fast leaves precision and memory format to the probe: decided here, logged, stored as they ran
    assert "auto settings for" in r.stderr and "estimated wall time:" in r.stderr
    assert set(df.precision) <= {"fp32", "bf16"} and set(df.memory_format) <= {"nchw", "channels_last"}


def test_expired_lease_is_requeued_and_resumed(tmp_path, tiny_imagefolder):
    """A worker that stops renewing its lease (killed, host lost) loses the trial once the lease runs out on the
    database's clock; the next worker re-queues it and its retry is attempt 2."""
    from dse.config import compose
    from dse.sweep.plan import make_plan
    from dse.sweep.queue import Queue
    from dse.sweep.worker import Worker

    db = tmp_path / "l.db"
    cfg = compose(["experiment=custom", "budget=smoke", f"storage.url=sqlite:///{db}",
                   f"study.checkpoint_dir={tmp_path / 'ckpt'}", "data.dataset=imagefolder",
                   f"data.root={tiny_imagefolder}", "data.val_size=50", "data.subset_size=null",
                   "trainer.eval_batch_size=200", "+search.blocks.single.grid={model.dropout: [0.1, 0.2]}",
                   "storage.heartbeat_interval=0.5", "storage.grace_period=2", "study.poll_seconds=0.2",
                   "pruner=none", "trainer.progress=none", "trainer.threads=1"])
    plan = make_plan(cfg)
    w = Worker(cfg, plan, f"sqlite:///{db}")
    w.open()
    assert w.prepare() == 2
    ghost = Queue(w.store, plan.name, lease_seconds=1.0)
    ghost.worker = "gone-host:1"  # a worker that claims and then vanishes: it never renews
    taken = ghost.claim()
    assert taken is not None and taken.attempts == 1
    assert w.queue.requeue_expired() == 0  # the lease is still good
    time.sleep(1.5)
    result = w.run()
    assert result.trained == 2 and result.failed == 0
    rows = {r.id: r for r in w.store.rows(plan.name)}
    assert rows[taken.id].status == "complete" and rows[taken.id].attempts == 2
    trials = optuna_trials(db, plan.name)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2


def test_a_version_1_store_gets_the_queue_columns(tmp_path):
    """Stores written before the queue columns existed open as they are: the nullable columns are added."""
    db = tmp_path / "v1.db"
    Store(f"sqlite:///{db}").dispose()
    with sqlite3.connect(db) as c:
        for col in ("lease_until", "heartbeat_at", "recorded_at"):
            c.execute(f"alter table dse_trials drop column {col}")
        c.execute("update dse_meta set value='1' where key='schema_version'")
    Store(f"sqlite:///{db}", create=False).trials()  # what dse.tables does: reads work
    assert Store(f"sqlite:///{db}").schema_version() == SCHEMA_VERSION  # what the sweep does: the version moves on
    with sqlite3.connect(db) as c:
        cols = {r[1] for r in c.execute("pragma table_info(dse_trials)")}
    assert {"lease_until", "heartbeat_at", "recorded_at"} <= cols


def test_planned_rows_of_an_older_version_open_as_queued(tmp_path):
    """Older versions wrote "planned" for trials waiting to be claimed; opening such a store makes them "queued",
    the one state workers claim, and leaves every other row as it was."""
    db = tmp_path / "old.db"
    store = Store(f"sqlite:///{db}")
    base = dict(study="s", model_name="m", arch="shallow_sqnxt", width=0.2, dropout=0.3, activation="elu",
                num_classes=10, optimizer="sgd_nesterov", schedule="step", dataset="cifar10", data_fraction=1.0,
                epochs=1, batch_size=8, seed=0, params=1, macs=1, checkpoint_bytes=1, config_json="{}")
    store.insert_missing([{**base, "identity": "a", "status": "planned"},
                          {**base, "identity": "b", "status": "complete"}])
    store.dispose()
    assert {r.identity: r.status for r in Store(f"sqlite:///{db}", create=False).rows("s")} == {
        "a": "queued", "b": "complete"}


def test_the_rows_are_derived_from_the_result_dataclasses():
    """A field added to TrialResult reaches dse_trials by its name (or is named in RESULT_RENAMED), and every
    column of dse_epochs is a field of EpochMetrics: nothing a fit reports is dropped on the way to the store."""
    import dataclasses

    from dse.common import RESULTS
    from dse.store import TrialRow
    from dse.sweep.trial import EPOCH_COLUMNS, RESULT_RENAMED, result_columns
    from dse.train import EpochMetrics, TrialResult

    columns = set(TrialRow.__table__.columns.keys())
    for f in dataclasses.fields(TrialResult):
        target = RESULT_RENAMED.get(f.name, f.name)
        assert target is None or target in columns, f"TrialResult.{f.name} has no dse_trials column"
    assert set(EPOCH_COLUMNS) <= {f.name for f in dataclasses.fields(EpochMetrics)}
    r = TrialResult(best_val_acc=50.0, best_epoch=2, final_val_acc=49.0, test_acc=48.0, final_test_acc=47.0,
                    sec_per_epoch=3.0, params=1, macs=2, checkpoint_bytes=3, device="cpu", precision="bf16",
                    torch_version="2", epochs=[None, None], best_checkpoint=str(RESULTS / "checkpoints/s/t1-m/best.pt"),
                    threads=1, fast_path="eager",
                    warmup_seconds=0.5, channels_last=True)
    cols = result_columns(r)
    assert cols["memory_format"] == "channels_last" and cols["epochs_done"] == 2
    assert cols["checkpoint_path"] == "checkpoints/s/t1-m/best.pt"  # relative to results/: the folder can move
    assert set(cols) <= columns and "params" not in cols


def test_sampled_floats_on_a_step_are_the_grid_s_decimals():
    """Optuna computes a stepped float in binary (0.1 + 20 * 0.025 = 0.6000000000000001); the config, the model
    name and the store get the grid's own decimals."""
    import optuna

    from dse.space import on_grid, suggest

    assert on_grid(0.6000000000000001, 0.1, 0.025) == 0.6 and on_grid(1.1250000000000002, 0.1, 0.025) == 1.125
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = {"params": {"model.width": {"type": "float", "low": 0.1, "high": 2.0, "step": 0.025}}}
    for _ in range(50):
        w = suggest(study.ask(), space)["model.width"]
        assert 0.1 <= w <= 2.0 and len(repr(w)) <= 5 and abs(w * 40 - round(w * 40)) < 1e-9, w
