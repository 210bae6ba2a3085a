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
    # 5 trials of 1,000 epochs (~1 s each): none can finish between the check and the signal, however loaded the
    # machine (with 30, one worker's trial once completed while the other's reached its first epoch)
    p = subprocess.Popen(sweep(db, tmp_path / "ckpt", tiny_imagefolder, "workers=2", "trainer.epochs=1000"),
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
    # in Optuna every trial is still waiting (the two interrupted ones too, with why): nothing finished there
    trials = optuna.load_study(study_name="table4-smoke", storage=f"sqlite:///{db}").trials
    assert len(trials) == 5 and {t.state for t in trials} == {optuna.trial.TrialState.WAITING}
    assert sum("interrupted" in t.user_attrs.get("waiting_because", "") for t in trials) == 2


# -- 2. full disks -----------------------------------------------------------------------------------------------
class TinyFs:
    """A real file system of ``size`` (tmpfs, so root only), mounted at ``path``; ``grow`` resizes it."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); needs root")

    def grow(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def tiny_fs(tmp_path):
    fs = TinyFs(tmp_path / "small", "64k")
    try:
        yield fs
    finally:
        fs.unmount()


def test_full_checkpoint_disk_fails_nothing_and_the_same_command_carries_on(tmp_path, tiny_imagefolder, tiny_fs):
    """study.checkpoint_dir on a 64 KB file system: torch.save's short write (its RuntimeError "unexpected pos")
    is a full disk: one line with the path and the space left, exit 2, every trial still queued, nothing FAILED
    in the store or in Optuna. Once the disk is larger the same command trains all of them."""
    db = tmp_path / "c.db"
    cmd = sweep(db, tiny_fs.path, tiny_imagefolder)
    r = run(cmd)
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: disk full: {tiny_fs.path}/table4-smoke/") and " free there)" in last, last
    assert "Traceback" not in r.stderr and "retry" not in r.stderr
    assert {s for s, _, _ in rows(db)} == {"queued"}
    trials = optuna.load_study(study_name="table4-smoke", storage=f"sqlite:///{db}").trials
    assert {t.state for t in trials} == {optuna.trial.TrialState.WAITING}  # queued there too; no FAIL recorded
    tiny_fs.grow("20m")
    r = run(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {s for s, _, _ in rows(db)} == {"complete"}
    states = [t.state for t in optuna.load_study(study_name="table4-smoke", storage=f"sqlite:///{db}").trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 5


def fill(folder: Path) -> Path:
    """Write a file into ``folder`` until its file system has no room left; the file, to remove later."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_full_store_disk_is_not_an_outage_and_no_epoch_is_lost(tmp_path, tiny_imagefolder):
    """The SQLite store on a 4 MB file system that fills up mid-trial: "database or disk is full" is said once
    with the store's path, without a retry, exit 2; nothing FAILED. After space is freed the same command
    finishes every trial, and the epoch trained while the store could not write is in the store (from last.pt)."""
    fs = TinyFs(tmp_path / "store", "4m")
    try:
        db = fs.path / "s.db"
        cmd = sweep(db, tmp_path / "ckpt", tiny_imagefolder, "trainer.epochs=4", "storage.grace_period=3")
        p = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: db.exists() and any(s == "running" and e >= 1 for s, e, _ in rows(db)), 240,
                     "a trial to be mid-way")
            filler = fill(fs.path)
            out, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
        assert p.returncode == 2, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"error: disk full: {db} (") and "results store could not write" in last, last
        assert "database unavailable" not in err and "Traceback" not in err
        filler.unlink()
        statuses = [s for s, _, _ in rows(db)]
        assert "failed" not in statuses and "complete" not in statuses, statuses
        r = run(cmd)
        assert r.returncode == 0, r.stderr[-3000:]
        # the full disk stopped either the epoch's store row (it comes back from last.pt: "written to the store
        # from") or, just after it, Optuna's intermediate value (filled from the store on the resume): either way
        # no epoch is lost in the store or in Optuna's curves
        with sqlite3.connect(db) as c:
            got = c.execute("select t.status, t.epochs_done, (select group_concat(e.epoch) from dse_epochs e where "
                            "e.trial_id = t.id order by e.epoch) from dse_trials t order by t.id").fetchall()
        assert got == [("complete", 4, "1,2,3,4")] * 5, got
        trials = optuna.load_study(study_name="table4-smoke", storage=f"sqlite:///{db}").trials
        assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE} and len(trials) == 5
        assert all(sorted(t.intermediate_values) == [1, 2, 3, 4] for t in trials), trials
    finally:
        fs.unmount()


def test_a_trial_failed_for_a_full_disk_by_an_older_version_is_requeued_without_a_fail_record(tmp_path,
                                                                                              tiny_imagefolder):
    """What older versions stored for a full checkpoint disk (torch.save's RuntimeError text as the trial's own
    failure) goes back to the queue at planning, before it reaches Optuna: no FAIL record for it; a real failure
    stays failed."""
    db = tmp_path / "m.db"
    cmd = sweep(db, tmp_path / "ckpt", tiny_imagefolder)
    assert run([*cmd, "max_trials=1"]).returncode == 0
    misread = "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 60480 vs 60376"
    real = "DivergedError: training diverged in epoch 1: training loss is nan"
    with sqlite3.connect(db) as c:
        for row_id, why in ((2, misread), (3, real)):
            c.execute("update dse_trials set status='failed', fail_reason=?, attempts=1 where id=?", (why, row_id))
    r = run(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 trial that failed for a full disk re-queued" in r.stderr
    assert [s for s, _, _ in rows(db)] == ["complete", "complete", "failed", "complete", "complete"]
    trials = optuna.load_study(study_name="table4-smoke", storage=f"sqlite:///{db}").trials
    fails = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.user_attrs["store_trial_id"] for t in fails] == [3] and len(trials) == 5


def _pg_disk_full() -> BaseException:
    import psycopg.errors

    return psycopg.errors.DiskFull('could not extend file "base/16384/2619": wrote only 4096 of 8192 bytes')


def _sqlalchemy_wrapped(orig: BaseException) -> BaseException:
    from sqlalchemy.exc import OperationalError

    return OperationalError("INSERT INTO dse_epochs ...", {}, orig)


@pytest.mark.parametrize(("make", "full"), [
    (lambda: OSError(28, "No space left on device", "/x/last.pt"), True),
    (lambda: OSError(122, "Disk quota exceeded", "/x/last.pt"), True),  # EDQUOT
    (lambda: RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 60480 vs 60376"), True),
    (lambda: RuntimeError("basic_ios::clear: iostream error"), True),
    (lambda: _sqlalchemy_wrapped(sqlite3.OperationalError("database or disk is full")), True),
    (_pg_disk_full, True),
    (lambda: _sqlalchemy_wrapped(sqlite3.OperationalError("database is locked")), False),
    (lambda: OSError(13, "Permission denied", "/x"), False),
    (lambda: RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
])
def test_every_shape_of_a_full_disk_is_one_fault(make, full):
    from dse.faults import disk_full

    assert disk_full(make()) is full


# -- 5. store files ----------------------------------------------------------------------------------------------
def _random_bytes(tmp: Path) -> Path:
    p = tmp / "junk.db"
    p.write_bytes(os.urandom(8192))
    return p


def _under_a_file(tmp: Path) -> Path:
    (tmp / "afile").write_text("not a folder")
    return tmp / "afile" / "dse.db"


def _typo_folder(tmp: Path) -> Path:
    return tmp / "no-such-dir" / "sub" / "dse.db"


@pytest.mark.parametrize(("where", "needle"), [
    (_random_bytes, "is not a SQLite database"),
    (_under_a_file, "which is a file, not a folder"),
    (_typo_folder, "does not exist"),
])
def test_a_store_path_that_cannot_be_a_store_is_one_line_for_every_command(tmp_path, tiny_imagefolder, where,
                                                                           needle):
    """The sweep, dse.tables and dse.deploy each say in one line what is wrong with the path and what to do; no
    command creates a file or folder there (the reading ones never create a store at all)."""
    db = where(tmp_path)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    url = f"sqlite:///{db}"
    cmds = {"sweep": (sweep(url, tmp_path / "ckpt", tiny_imagefolder), 2),
            "tables": ([sys.executable, "-m", "dse.tables", "--db", url, "--no-figures", "--out",
                        str(tmp_path / "out")], 1),
            "deploy": ([sys.executable, "-m", "dse.deploy", "--db", url, "--study", "table4-smoke", "--no-latency"],
                       2)}
    for name, (cmd, code) in cmds.items():
        r = run(cmd)
        err = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        expect = needle if name == "sweep" or where is not _typo_folder else "no results store at"
        assert r.returncode == code and len(err) == 1 and str(db) in err[0] and expect in err[0], (name, r.stderr)
        assert "Traceback" not in r.stderr
    # nothing created (beside an existing file, the sweep's schema lock file is the one trace it leaves)
    assert sorted(str(p) for p in tmp_path.rglob("*") if str(p) != f"{db}.lock" or not db.is_file()) == before


# -- 6. secrets --------------------------------------------------------------------------------------------------
LEAKY = "postgresql+psycopg://dse:hunter2@127.0.0.1:1/dse"


def _from_command_line(tmp: Path) -> list[str]:
    return [f"storage.url={LEAKY}"]


def _from_a_config_file(tmp: Path) -> list[str]:
    conf = tmp / "conf" / "storage"
    conf.mkdir(parents=True)
    text = (REPO / "dse" / "conf" / "storage" / "postgres.yaml").read_text().replace("url: null", f"url: {LEAKY}")
    (conf / "leaky.yaml").write_text(text)
    return ["--config-dir", str(tmp / "conf"), "storage=leaky"]


@pytest.mark.parametrize("given", [_from_command_line, _from_a_config_file])
def test_a_password_inside_the_url_is_refused_and_kept_nowhere(tmp_path, tiny_imagefolder, given):
    """Refused in one line that says how to pass it (DSE_DB_PASSWORD, storage.password_file), exit 2; nothing the
    run writes (.hydra/config.yaml, hydra.yaml, overrides.yaml, sweep.log) holds it, nor its output."""
    run_dir = tmp_path / "run"
    cmd = sweep(tmp_path / "x.db", tmp_path / "ckpt", tiny_imagefolder, f"hydra.run.dir={run_dir}")
    r = run([*cmd[:3], *given(tmp_path), *[a for a in cmd[3:] if not a.startswith("storage.url=")]])
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "has a password in it" in err[0], r.stderr
    assert "DSE_DB_PASSWORD" in err[0] and "storage.password_file" in err[0]
    assert "hunter2" not in r.stdout + r.stderr
    written = [p for p in run_dir.rglob("*") if p.is_file()] if run_dir.exists() else []
    assert all("hunter2" not in p.read_text() for p in written), written
    if given is _from_a_config_file:  # Hydra wrote the run folder before the job ran: it was scrubbed
        assert "***" in (run_dir / ".hydra" / "config.yaml").read_text()


# -- 4. data checks at planning ----------------------------------------------------------------------------------
def _empty_train_class(root: Path) -> str:
    for f in (root / "train" / "class03").iterdir():
        f.unlink()
    return f"class folder {root / 'train' / 'class03'} has 0 images"


def _missing_test_class(root: Path) -> str:
    for f in (root / "test" / "class07").iterdir():
        f.unlink()
    (root / "test" / "class07").rmdir()
    return f"class folder {root / 'test' / 'class07'} has 0 images"


@pytest.mark.parametrize("damage", [_empty_train_class, _missing_test_class])
def test_a_class_without_images_stops_the_run_before_training(tmp_path, damage):
    """A class folder emptied (or absent from test/) is one line naming it, exit 2; nothing trains or fails."""
    data = write_imagefolder(tmp_path / "data")
    needle = damage(data)
    db = tmp_path / "d.db"
    r = run(sweep(db, tmp_path / "ckpt", data))
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: nothing to run") and needle in last and "restore its images" in last, last
    assert "Traceback" not in r.stderr
    assert not db.exists() or {s for s, _, _ in rows(db)} <= {"queued"}


@pytest.mark.parametrize(("extra", "needle"), [
    (["data.subset_size=5"], "data.subset_size=5 is 5 training images for 10 classes: every class needs one"),
    (["data.subset_size=280", "data.val_size=50"], "need 330 training images; the source has 300"),
    (["data.subset_size=null", "data.val_size=300"], "data.val_size=300 leaves no training images"),
])
def test_a_split_that_cannot_fit_is_one_line_at_planning(tmp_path, tiny_imagefolder, extra, needle):
    db = tmp_path / "s.db"
    r = run([*sweep(db, tmp_path / "ckpt", tiny_imagefolder), *extra])
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], r.stderr
    assert not db.exists()  # refused before the store was opened


def test_changed_data_is_visible_per_trial_and_refused(tmp_path):
    """Each trial records its data's fingerprint (file names and sizes); after files are added the study refuses
    to go on in one line (exit 2, nothing changed); with the data restored, the same command carries on."""
    data = write_imagefolder(tmp_path / "data")
    db = tmp_path / "f.db"
    cmd = sweep(db, tmp_path / "ckpt", data)
    assert run([*cmd, "max_trials=1"]).returncode == 0
    with sqlite3.connect(db) as c:
        (fp,), = c.execute("select data_fingerprint from dse_trials where status='complete'").fetchall()
    assert fp and len(fp) == 64
    extra = data / "train" / "class00" / "extra.png"
    extra.write_bytes((data / "train" / "class00" / "0000.png").read_bytes())
    before = rows(db)
    r = run(cmd)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "is not the data 1 trial of study table4-smoke were trained on" in last and "study.name=" in last, last
    assert rows(db) == before
    extra.unlink()
    assert run(cmd).returncode == 0
    with sqlite3.connect(db) as c:
        assert set(c.execute("select status, data_fingerprint from dse_trials")) == {("complete", fp)}
