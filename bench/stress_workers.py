"""Stress test (not in CI): `workers=4` on a fresh SQLite file, 10 grid trials, repeated; counts clean runs.

A clean run: exit 0, each of the 10 configurations trained exactly once (attempts 1, one row each), and Optuna
holding exactly 10 COMPLETE trials (no FAIL, no duplicates). Uses the smallest budget (1 epoch) on a tiny
ImageFolder written here (10 classes of coloured 32x32 images, as tests/dse_testdata.py writes them), so it
measures the scheduling, not the training.

    python bench/stress_workers.py [--repeats 20] [--workers 4]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def one_run(tmp: Path, data: Path, workers: int, index: int) -> tuple[bool, str, float]:
    """(clean?, what was wrong, seconds) for one fresh study."""
    import optuna

    db = tmp / f"stress-{index}.db"
    cmd = [sys.executable, "-m", "dse.sweep", "experiment=custom", "budget=smoke", f"workers={workers}",
           f"storage.url=sqlite:///{db}", f"study.checkpoint_dir={tmp / 'ckpt'}", "data.dataset=imagefolder",
           f"data.root={data}", "data.val_size=50", "data.subset_size=null", "trainer.eval_batch_size=200",
           "pruner=none", "trainer.progress=none", "study.poll_seconds=0.3",
           "+search.blocks.single.grid={model.width: [0.125, 0.15, 0.2, 0.25, 0.3], model.dropout: [0.1, 0.2]}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "DSE_RUNS_DIR": str(tmp / "runs"), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        return False, f"exit {r.returncode}: {r.stderr.strip().splitlines()[-1:]}", took
    with sqlite3.connect(db) as c:
        rows = c.execute("select identity, status, attempts from dse_trials").fetchall()
    trials = optuna.load_study(study_name="custom-smoke", storage=f"sqlite:///{db}").trials
    problems = []
    if len(rows) != 10 or len({i for i, _, _ in rows}) != 10:
        problems.append(f"{len(rows)} rows")
    if any(s != "complete" or a != 1 for _, s, a in rows):
        problems.append(f"statuses/attempts {sorted({(s, a) for _, s, a in rows})}")
    states = [t.state.name for t in trials]
    if states.count("COMPLETE") != 10 or len(states) != 10:
        problems.append(f"Optuna states {sorted(states)}")
    return not problems, "; ".join(problems), took


def main() -> None:
    from dse_testdata import write_imagefolder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    clean = 0
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = write_imagefolder(tmp / "tiny")
        for i in range(args.repeats):
            ok, why, took = one_run(tmp, data, args.workers, i)
            clean += ok
            print(f"run {i + 1:>2}/{args.repeats}: {'clean' if ok else 'NOT CLEAN: ' + why} ({took:.0f} s)", flush=True)
    print(f"{clean}/{args.repeats} clean runs of workers={args.workers}, 10 trials each, fresh SQLite file")
    sys.exit(0 if clean == args.repeats else 1)


if __name__ == "__main__":
    main()
