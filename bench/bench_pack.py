"""Benchmark: the sweep's aggregate trial throughput with several workers per machine vs the reference pipeline.

Trials: `experiment=custom` with one seed per trial of Shallow SqueezeNext-06-0.4x, 1 epoch on --images
class-balanced CIFAR-10 training images (real JPEGs via DSE_DATA_DIR), 500 validation and 500 test images,
trainer=cpu_fast (bf16, channels_last). Each workers x threads setting runs the whole study through the real
sweep (`python -m dse.sweep`) on a fresh temporary SQLite store; its wall time covers everything a study pays
(process start, imports, data loading from the decoded cache, evaluation, the store). The reference is the
authors'-style pipeline of bench/bench_train.py (ImageFolder + PIL transforms + DataLoader(num_workers=2), fp32)
training the same trials' images one trial after another, counting only its training epochs (no evaluation, no
process start): a conservative baseline.

Several workers: `python -m dse.sweep workers=N trainer.threads=T`, the sweep's own local launcher (N worker
processes sharing the queue in one store). The study's wall-time estimate is off (`study.estimate=false`): its
calibration is paid once per machine and architecture, not per study.

`make bench-pack` (under 3 minutes on a 2-core CPU). Last line: `aggregate speed-up vs reference: N.NNx`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_train import _imagefolder_targets, reference_run  # noqa: E402

from dse.data import DataConfig, split_indices  # noqa: E402
from dse.models import spec_from_name  # noqa: E402

MODEL = "shallow_sqnxt_06_0_4x"


def parse_settings(text: str) -> list[tuple[int, int]]:
    """"1x2,2x1" -> [(1, 2), (2, 1)]: workers x threads per worker."""
    out = []
    for item in text.split(","):
        w, _, t = item.strip().partition("x")
        if not (w.isdigit() and t.isdigit() and int(w) >= 1 and int(t) >= 1):
            raise SystemExit(f"--settings item {item!r} must be WORKERSxTHREADS, e.g. 2x1")
        out.append((int(w), int(t)))
    return out


def study_overrides(trials: int, images: int, store: Path, name: str, threads: int) -> list[str]:
    """The sweep overrides of the benchmark's study: `trials` seeds of MODEL, 1 epoch on `images` images."""
    seeds = ",".join(str(s) for s in range(trials))
    return [
        "experiment=custom",
        "budget=smoke",
        f"model={MODEL}",
        "trainer=cpu_fast",
        "trainer.epochs=1",
        f"trainer.threads={threads}",
        "trainer.progress=none",
        f"data.subset_size={images}",
        "data.val_size=500",
        "data.test_size=500",
        "data.download=false",
        f"search.seeds=[{seeds}]",
        f"search.max_seeds={trials}",
        "pruner=none",
        f"storage.url=sqlite:///{store}",
        f"study.name={name}",
        f"study.checkpoint_dir={store.parent / 'ckpt'}",
        "study.wait_for_running=false",
        "study.estimate=false",
    ]


def sweep_command(workers: int, overrides: list[str]) -> list[list[str]]:
    """The processes of one study run with `workers` workers: the sweep's own local launcher (workers=N)."""
    return [[sys.executable, "-m", "dse.sweep", f"workers={workers}", *overrides]]


def run_sweep(workers: int, threads: int, trials: int, images: int, tmp: Path) -> float:
    """Wall seconds of the whole study through the real sweep with `workers` x `threads`."""
    store = tmp / f"pack-{workers}x{threads}" / "dse.db"
    store.parent.mkdir(parents=True)
    cmds = sweep_command(workers, study_overrides(trials, images, store, f"pack-{workers}x{threads}", threads))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for c in cmds
    ]
    errors = [p.communicate()[1] for p in procs]
    seconds = time.perf_counter() - t0
    failed = [(p.returncode, e) for p, e in zip(procs, errors, strict=True) if p.returncode != 0]
    if failed:
        code, err = failed[0]
        raise SystemExit(f"sweep {workers}x{threads} failed (exit {code}):\n{err[-2000:]}")
    finished = _finished_trials(store, f"pack-{workers}x{threads}")
    if finished != trials:
        raise SystemExit(f"sweep {workers}x{threads} finished {finished} of {trials} trials")
    return seconds


def _finished_trials(store: Path, name: str) -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{store}")
    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def run_reference(trials: int, images: int, data_dir: Path) -> float:
    """Seconds of the reference pipeline training every trial's epoch, one trial after another."""
    cfg = DataConfig(root=str(data_dir), val_size=500, subset_size=images)
    targets = torch.tensor(_imagefolder_targets(data_dir / "train"))
    train_idx = split_indices(targets, cfg)[0].tolist()
    spec = spec_from_name(MODEL)
    total = 0.0
    for _ in range(trials):
        total += sum(reference_run(spec, data_dir, train_idx, 1, False, torch.get_num_threads())["seconds"])
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--images", type=int, default=3000, help="training images per trial (1 epoch)")
    ap.add_argument("--settings", default="1x2,2x1", help="workers x threads per worker to try")
    ap.add_argument("--data", default=os.environ.get("DSE_DATA_DIR") or str(REPO.parent / "shared/data/cifar10-jpg"))
    args = ap.parse_args()
    data_dir = Path(args.data)
    if not (data_dir / "train").is_dir():
        raise SystemExit(f"no ImageFolder CIFAR-10 at {data_dir} (set --data or DSE_DATA_DIR)")
    os.environ["DSE_DATA_DIR"] = str(data_dir)
    settings = parse_settings(args.settings)
    print(f"{args.trials} trials of {MODEL}, 1 epoch on {args.images} images each; {os.cpu_count()} CPUs; "
          f"torch {torch.__version__}; load average {os.getloadavg()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_pack_") as tmp:
        for workers, threads in settings:
            sec = run_sweep(workers, threads, args.trials, args.images, Path(tmp))
            rows.append((f"sweep {workers}x{threads}", sec))
            print(f"  sweep {workers} worker(s) x {threads} thread(s): {sec:6.1f} s for the study "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    ref = run_reference(args.trials, args.images, data_dir)
    print(f"  reference, trials one after another (training epochs only): {ref:6.1f} s "
          f"(load {os.getloadavg()[0]:.1f})", flush=True)
    best_label, best = min(rows, key=lambda r: r[1])
    for label, sec in rows:
        print(f"  {label}: {args.trials * args.images / sec:6.0f} training images/s of the study, "
              f"{ref / sec:.2f}x the reference")
    print(f"best setting: {best_label} (workers x threads); measured with "
          "the sweep's workers=N")
    print(f"aggregate speed-up vs reference: {ref / best:.2f}x")


if __name__ == "__main__":
    main()
