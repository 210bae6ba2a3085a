"""Benchmark ``dse.tables`` on a large store: 10,000 complete trials x 200 epochs (2,000,000 epoch rows).

Builds a seeded SQLite store of plausible trials over the paper's models (bulk inserts: one executemany per
table), then times generating every table (md, csv, tex), both figures and the report, in-process (imports
done first) and, separately, the whole CLI as a subprocess. Goal: generation < 5 s.

    python bench/bench_tables.py [--trials 10000] [--epochs 200] [--keep PATH] [--reps 2]

``--keep PATH`` reuses (or creates) the store at PATH instead of a temporary one (creation takes ~1 minute).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dse.models import PAPER_ROWS, model_facts, spec_from_name  # noqa: E402
from dse.store import DeploymentRow, EpochRow, Store, TrialRow  # noqa: E402

#: Models of the synthetic store: every paper architecture plus the baselines, with a plausible accuracy.
BASELINES = ("squeezenet_1_0", "squeezenet_1_1", "sqnxt_23_1x", "sqnxt_23_2x")
OPTIMIZERS = ("sgd_nesterov", "adabound", "adam", "adamax", "adagrad", "adadelta", "asgd", "rmsprop", "rprop")


def _models():
    """(spec, dataset, paper accuracy) for each distinct paper architecture (Table 6 at 100 classes)."""
    seen, out = set(), []
    for r in PAPER_ROWS:
        c100 = r.table == "table6"
        spec = r.spec.replace(num_classes=100) if c100 else r.spec
        key = (spec.name, c100)
        if key not in seen:
            seen.add(key)
            out.append((spec, "cifar100" if c100 else "cifar10", 60.0 if c100 else 85.0))
    for name in BASELINES:
        out.append((spec_from_name(name), "cifar10", 85.0))
    return out


def build_store(url: str, n_trials: int, n_epochs: int, seed: int = 0) -> None:
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    store = Store(url)
    models = _models()
    facts = [model_facts(s) for s, _, _ in models]
    studies = ("paper-paper", "tables-quick", "table3-smoke")
    trials = []
    for i in range(n_trials):
        k = int(rng.integers(len(models)))
        spec, ds, base = models[k]
        f = facts[k]
        study = studies[int(rng.choice(3, p=[0.8, 0.15, 0.05]))]
        frac = {"paper-paper": 1.0, "tables-quick": 0.2, "table3-smoke": 0.02}[study]
        opt = "sgd_nesterov" if rng.random() < 0.6 else OPTIMIZERS[int(rng.integers(len(OPTIMIZERS)))]
        dropout = (float(rng.choice([0.1, 0.2, 0.3, 0.4, 0.5])) if spec.arch == "shallow_sqnxt"
                   else spec.dropout)
        acc = base + 4 * np.log10(f.params / 1e5) - 10 * (1 - frac) + rng.normal(0, 1.0)
        acc = float(np.clip(acc, 10, 96))
        trials.append(dict(
            study=study, identity=f"{i:064x}", attempts=1, model_name=spec.name, arch=spec.arch,
            stage_depths="-".join(map(str, spec.stage_depths)) if spec.stage_depths else None,
            width=spec.width,
            dropout=dropout, activation=spec.activation, num_classes=spec.num_classes, optimizer=opt,
            lr=0.01 if opt == "sgd_nesterov" else 0.001, schedule="step", dataset=ds,
            data_source=f"imagefolder:/data/{ds}-jpg", data_fraction=frac,
            train_images=int(45_000 * frac), epochs=n_epochs, batch_size=128, seed=int(rng.integers(5)),
            status="complete", epochs_done=n_epochs, best_epoch=int(n_epochs * 0.9), best_val_acc=acc + 0.3,
            final_val_acc=acc, test_acc=acc, final_test_acc=acc - 0.1, params=f.params, macs=f.macs,
            checkpoint_bytes=f.checkpoint_bytes, int8_bytes=f.checkpoint_bytes // 4,
            sec_per_epoch=float(2 + f.macs / 2e7 * frac + rng.normal(0, 0.1)), device="NVIDIA H100 80GB HBM3",
            precision="bf16", torch_version="2.14.1", git_commit="0123456789ab", host="bench",
            config_json=json.dumps({"model": spec.name, "opt": opt}), checkpoint_path=None))
    with store.engine.begin() as conn:
        conn.execute(TrialRow.__table__.insert(), trials)
    ids = [r[0] for r in store.engine.connect().exec_driver_sql("SELECT id FROM dse_trials ORDER BY id")]
    ep = np.arange(1, n_epochs + 1, dtype=float)
    raw = store.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("PRAGMA synchronous=OFF")
        cols = ("trial_id", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "lr",
                "train_seconds", "eval_seconds")
        marks = ", ".join("?" * len(cols))
        sql = f"INSERT INTO {EpochRow.__tablename__} ({', '.join(cols)}) VALUES ({marks})"
        chunk = []
        for tid, t in zip(ids, trials, strict=True):
            final = t["test_acc"]
            curve = final * (1 - np.exp(-ep / (n_epochs / 8)))
            train = np.minimum(99.5, curve * 1.08)
            noise = rng.normal(0, 0.4, n_epochs)
            for e in range(n_epochs):
                chunk.append((tid, e + 1, 2.3 * (1 - train[e] / 100), float(train[e]),
                              2.3 * (1 - curve[e] / 100), float(curve[e] + noise[e]), float(curve[e]), 0.01,
                              t["sec_per_epoch"], 0.5))
            if len(chunk) >= 200_000:
                cur.executemany(sql, chunk)
                chunk.clear()
        if chunk:
            cur.executemany(sql, chunk)
        raw.commit()
    finally:
        raw.close()
    deps = []
    for tid, t in list(zip(ids, trials, strict=True))[:: max(1, n_trials // 300)]:
        for fmt, scale in (("onnx", 1.0), ("onnx_int8", 0.6)):
            p50 = 0.2 + t["macs"] / 5e7 * scale
            deps.append(dict(trial_id=tid, model_name=t["model_name"], format=fmt,
                             file_bytes=int(t["checkpoint_bytes"] * (0.27 if fmt == "onnx_int8" else 0.98)),
                             test_acc=t["test_acc"] - (0.3 if fmt == "onnx_int8" else 0), test_images=10_000,
                             max_abs_diff=1e-5, p50_ms=p50, p99_ms=p50 * 1.4, threads=1, host="bench",
                             machine="bench CPU", runtime="onnxruntime 1.31.1"))
    with store.engine.begin() as conn:
        conn.execute(DeploymentRow.__table__.insert(), deps)
    store.dispose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--keep", type=Path, default=None, help="store path to reuse/create (default: temporary)")
    ap.add_argument("--reps", type=int, default=2, help="timed generations (the first includes cold caches)")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="bench_tables_")
    db = args.keep or Path(tmp.name) / "bench.db"
    url = f"sqlite:///{db}"
    if not db.exists():
        t0 = time.perf_counter()
        build_store(url, args.trials, args.epochs)
        print(f"store: {args.trials:,} trials x {args.epochs} epochs built in "
              f"{time.perf_counter() - t0:.1f} s "
              f"({db.stat().st_size / 1e6:.0f} MB at {db})")
    else:
        print(f"store: reusing {db}")

    import dse.figures  # noqa: F401  (imports are not part of the generation time)
    from dse.tables import Options, build_tables, generate, load_paper_tables, read_store

    out = Path(tmp.name) / "out"
    opts = Options(db_url=url, out_dir=out, formats=("md", "csv", "tex"))
    times = []
    for rep in range(args.reps):
        t0 = time.perf_counter()
        res = generate(opts)
        times.append(time.perf_counter() - t0)
        print(f"generation {rep + 1}: {times[-1]:.2f} s ({len(res.files)} files; "
              f"{sum(len(t.rows) for t in res.tables.values())} rows, "
              f"{sum(int((t.rows['status'] == 'ok').sum()) for t in res.tables.values())} with results)")
    # where the time goes (one more pass, phase by phase)
    t0 = time.perf_counter()
    data = read_store(url)
    t1 = time.perf_counter()
    paper = load_paper_tables()
    tables = build_tables(paper, data.trials, data.deployments)
    t2 = time.perf_counter()
    print(f"phases: read store {t1 - t0:.2f} s ({len(data.trials):,} trials), build tables {t2 - t1:.2f} s")
    from dse.tables import write_epochs_csv

    t0 = time.perf_counter()
    n_epochs = write_epochs_csv(data, out / "epochs.csv")
    print(f"epochs CSV (--epochs-csv): {n_epochs:,} epoch rows in {time.perf_counter() - t0:.2f} s "
          f"({(out / 'epochs.csv').stat().st_size / 1e6:.0f} MB)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    cli = subprocess.run([sys.executable, "-m", "dse.tables", "--db", url, "--out", str(out / "cli"),
                          "--format", "md,csv,tex"], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if cli.returncode != 0:
        print(cli.stderr, file=sys.stderr)
        return 1
    best = min(times)
    verdict = "met" if best < 5 else "NOT met"
    print(f"tables+figures+report generation: best {best:.2f} s (goal < 5 s: {verdict}); "
          f"whole CLI incl. interpreter start and imports: {wall:.2f} s")
    del tables
    return 0


if __name__ == "__main__":
    sys.exit(main())
