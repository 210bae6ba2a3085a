"""Trial-scheduling overhead per trial: claim, lease, store writes (epoch row, finish), the Optuna record.

4 worker processes run one grid study each way (SQLite file, PostgreSQL when $DSE_TEST_PG_URL or --pg is set)
through the real `dse.sweep.worker.Worker`, with training replaced by a stub that writes one epoch row and returns
(so what is timed is everything but training). Printed: milliseconds of scheduling per trial and that as a
fraction of one real 1-epoch smoke trial (Shallow SqueezeNext-06-0.4x, 1,000 images) trained here.

    python bench/bench_sched.py [--trials 96] [--workers 4] [--pg postgresql+psycopg://dse@127.0.0.1:55432/dse]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class _StubResult:  # what fit returns, for a trial that "trained" in no time
    best_val_acc = final_val_acc = test_acc = final_test_acc = 50.0
    best_epoch, epochs, sec_per_epoch, device, precision, torch_version = 1, [None], 0.0, "stub", "fp32", "-"
    best_checkpoint = None


def _stub_train(self, row, tcfg, ckpt, lease):  # noqa: ANN001 - replaces Worker.train
    self.queue.record_epoch(row.id, {"epoch": 1, "train_loss": 1.0, "train_acc": 50.0, "val_loss": 1.0,
                                    "val_acc": 50.0, "test_acc": 50.0, "lr": 0.01, "train_seconds": 0.0,
                                    "eval_seconds": 0.0})
    return _StubResult()


def _worker(url: str, name: str, trials: int, out: mp.Queue) -> None:
    import logging

    logging.disable(logging.WARNING)
    from dse.config import compose
    from dse.sweep.plan import make_plan
    from dse.sweep.worker import Worker

    widths = [round(0.1 + 0.01 * i, 2) for i in range(trials)]
    cfg = compose(["experiment=custom", f"storage.url={url}", f"study.name={name}", "pruner=none",
                   f"+search.blocks.single.grid={{model.width: {widths}}}", "study.poll_seconds=0.05"])
    Worker.train = _stub_train
    t0 = time.perf_counter()
    w = Worker(cfg, make_plan(cfg, check_data=False), url)
    w.open()
    w.prepare()
    w.run()
    out.put((w.result.trained, time.perf_counter() - t0))


def measure(url: str, workers: int, trials: int) -> tuple[float, int]:
    name = f"bench-sched-{uuid.uuid4().hex[:8]}"
    # create the schema + study once so the workers time scheduling, not table creation
    from dse.store import Store

    Store(url).dispose()
    q: mp.Queue = mp.get_context("spawn").Queue()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(url, name, trials, q)) for _ in range(workers)]
    for p in procs:
        p.start()
    results = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    done = sum(r[0] for r in results)
    busy = sum(r[1] for r in results)  # worker-seconds spent in Worker.run (planning + scheduling)
    return busy / max(done, 1) * 1000.0, done


def smoke_trial_seconds() -> float:
    from dse.data import DataConfig, load_data
    from dse.models import spec_from_name
    from dse.train import OptimConfig, TrainConfig, fit

    data = load_data(DataConfig(dataset="cifar10", subset_size=1000, val_size=500))
    t0 = time.perf_counter()
    fit(spec_from_name("shallow_sqnxt_06_0_4x"), data, OptimConfig(), TrainConfig(epochs=1, progress="none"))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=96)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--pg", default=os.environ.get("DSE_TEST_PG_URL"))
    args = ap.parse_args()
    smoke = smoke_trial_seconds()
    print(f"one real 1-epoch smoke trial (06-0.4x, 1,000 images, this machine): {smoke:.2f} s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("sqlite", *measure(f"sqlite:///{tmp}/sched.db", args.workers, args.trials)))
    if args.pg:
        rows.append(("postgresql", *measure(args.pg, args.workers, args.trials)))
    else:
        print("PostgreSQL: skipped (set DSE_TEST_PG_URL or --pg)")
    print(f"{'storage':<11} {'workers':>7} {'trials':>6} {'ms/trial':>9} {'of a smoke trial':>17}")
    for name, ms, done in rows:
        print(f"{name:<11} {args.workers:>7} {done:>6} {ms:>9.1f} {ms / 1000.0 / smoke:>16.1%}")


if __name__ == "__main__":
    main()
