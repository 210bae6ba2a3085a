"""Benchmark on one CUDA GPU: the authors'-style pipeline vs `fit` eager vs `fit` fast, concurrency, study hours.

Per model (Shallow SqueezeNext-06-0.4x, -21-0.2x, -14-1.5x, SqueezeNext-23-1x), side by side on the same images:
  authors   uint8 CIFAR arrays in memory, PIL RandomCrop(32, 4)/RandomHorizontalFlip/ToTensor/Normalize per image,
            DataLoader(batch 128, shuffle, num_workers=2), `.cuda()` per batch, fp32, `.item()` per step
            (bench/bench_train.py's reference loop);
  eager     dse.train.fit, fast_path=eager, fp32;
  fast      dse.train.fit with trainer=gpu's settings: precision, memory format and fast path `auto`, decided
            by dse.autotune's probe on this GPU (the line it logs says what it measured).
Printed: seconds per 45,000-image epoch beside the paper's (dse/experiments/paper_tables/*.csv), images/s, the ratio
to the authors' pipeline, warm-up seconds, and the fraction of the GPU's peak (3 x forward MACs x 2 FLOP per
image x images/s over the peak of the precision from PEAK_TFLOPS by device name). Then 1, 4, 8 and 16 concurrent
processes each training 06-0.4x with the fast path (gpu_memory_fraction = 1 / processes): aggregate images/s.
Last, the estimated hours of the paper study (`experiment=paper budget=paper`): --study-sample architectures
spread over the study's MACs are calibrated on this GPU (dse.calibrate, cached), seconds per training image are
fitted against MACs and layers (least squares) for the rest, and the trials are packed onto the best process
count (`--study-sample 0` calibrates every architecture: minutes).

`make bench-gpu`: by default 10,000 training images per epoch (seconds per epoch are scaled to 45,000), 1, 4
and 8 processes, 12 calibrated architectures: a few minutes on one GPU. `--long`: 45,000 images, 16 processes
too, every architecture calibrated. Without CUDA it prints one line saying so and exits 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

MODELS = ("shallow_sqnxt_06_0_4x", "shallow_sqnxt_21_0_2x", "sqnxt_23_1x", "shallow_sqnxt_14_1_5x")
CONCURRENCY = (1, 4, 8)
LONG_CONCURRENCY = (1, 4, 8, 16)
SHORT_IMAGES = 10_000  # training images per epoch by default (enough for a steady state on a GPU)
EPOCH_IMAGES = 45_000  # a training epoch of the search (50,000 minus 5,000 validation images)
BATCH = 128
#: Dense peak TFLOP/s by a substring of torch.cuda.get_device_name (vendor data sheets, SXM parts where both
#: exist): bf16/fp16 tensor cores without sparsity, and plain fp32 (no TF32).
PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "fp32": 30.3},
    "A10": {"bf16": 125.0, "fp32": 31.2},
    "RTX 4090": {"bf16": 165.2, "fp32": 82.6},
    "V100": {"bf16": 125.0, "fp32": 15.7},  # no bf16: its fp16 tensor-core peak
}


# ------------------------------------------------------------------------------------------- testable helpers
def peak_flops(device_name: str, precision: str) -> float | None:
    """FLOP/s peak of the named GPU for "bf16"/"amp" (tensor cores) or "fp32"; None when the GPU is not listed."""
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):  # "L40S" before "L4"
        if key.lower() in device_name.lower():
            return PEAK_TFLOPS[key]["fp32" if precision == "fp32" else "bf16"] * 1e12
    return None


def peak_fraction(macs: int, images_per_s: float, peak: float | None) -> float | None:
    """Training FLOP/s (forward + backward = 3 x forward MACs x 2 FLOP per image) as a fraction of `peak`."""
    return None if not peak else 3 * macs * 2 * images_per_s / peak


def paper_seconds(display_name: str, tables: Path = REPO / "dse" / "experiments" / "paper_tables") -> list[float]:
    """The paper's seconds per epoch for a model: every table row naming it, also with a -vN suffix or a
    parenthesised note ("SqueezeNext-23-1x (baseline)"); distinct values in table order."""
    out: list[float] = []
    for path in sorted(tables.glob("*.csv")):
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                name = re.sub(r"\s*\(.*\)$", "", (row.get("model") or "").strip())
                base = re.sub(r"-v\d+$", "", name)
                sec = (row.get("sec_per_epoch") or "").strip()
                if base == display_name and sec and float(sec) not in out:
                    out.append(float(sec))
    return out


def study_hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def fmt_row(label: str, ips: float, ref_ips: float | None, frac: float | None, warmup: float | None) -> str:
    ratio = f"{ips / ref_ips:6.2f}x" if ref_ips else "     - "
    pct = f"{100 * frac:8.3f}%" if frac is not None else "       - "
    warm = f"{warmup:7.1f}" if warmup is not None else "      -"
    return f"  {label:8s} {ips:9.0f} {EPOCH_IMAGES / ips:8.2f} {ratio} {pct} {warm}"


# ------------------------------------------------------------------------------------------------- runs (CUDA)
def authors_run(spec, bundle, epochs: int) -> float:
    """Images/s of the authors'-style pipeline (best epoch of `epochs`, the first pays worker start-up)."""
    import torchvision.transforms as T
    from bench_train import reference_epochs
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    from dse.data import CIFAR_MEAN, CIFAR_STD
    from dse.models import build_model

    class InMemory(Dataset):  # torchvision.datasets.CIFAR10's way: HWC uint8 arrays, a PIL image per item
        def __init__(self, x: torch.Tensor, y: torch.Tensor, transform) -> None:
            self.x, self.y, self.transform = x.permute(0, 2, 3, 1).contiguous().numpy(), y.tolist(), transform

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int):
            return self.transform(Image.fromarray(self.x[i])), self.y[i]

    tf = T.Compose(
        [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)]
    )
    loader = DataLoader(InMemory(bundle.train_x, bundle.train_y, tf), batch_size=BATCH, shuffle=True, num_workers=2)
    torch.manual_seed(0)
    seconds = reference_epochs(build_model(spec), loader, epochs, "cuda")
    return len(bundle.train_y) / min(seconds)


def fit_run(spec, bundle, epochs: int, fast: bool, memory_fraction: float | None = None) -> dict:
    from dse.autotune import resolve
    from dse.train import OptimConfig, TrainConfig, fit

    if fast:  # trainer=gpu: every speed setting measured by dse.autotune on this GPU
        train = TrainConfig(epochs=epochs, batch_size=BATCH, device="cuda", precision="auto", channels_last="auto",
                            fast_path="auto", progress="none", gpu_memory_fraction=memory_fraction)
        train = resolve(spec, OptimConfig(), train)
    else:
        train = TrainConfig(epochs=epochs, batch_size=BATCH, device="cuda", precision="fp32", fast_path="eager",
                            progress="none")
    r = fit(spec, bundle, OptimConfig(), train)
    steady = min(m.train_seconds for m in r.epochs[1:] or r.epochs)
    return {"images_per_s": len(bundle.train_y) / steady, "warmup": r.warmup_seconds, "mode": r.fast_path,
            "precision": r.precision, "channels_last": r.channels_last}


def child(args) -> None:
    """One of the concurrent processes: prints its training images/s as JSON."""
    from dse.data import DataConfig, load_data
    from dse.models import spec_from_name

    bundle = load_data(DataConfig(val_size=0, subset_size=args.images, test_size=1000), "cuda")
    r = fit_run(spec_from_name(MODELS[0]), bundle, args.epochs, fast=True, memory_fraction=args.memory_fraction)
    print(json.dumps(r))


def concurrent_run(n: int, images: int, epochs: int) -> float:
    """Aggregate training images/s of `n` processes each fitting MODELS[0] with the fast path."""
    cmd = [sys.executable, __file__, "--child", "--images", str(images), "--epochs", str(epochs),
           "--memory-fraction", str(round(1.0 / n, 4))]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(n)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a concurrent process failed ({[p.returncode for p in procs]})")
    return sum(json.loads(o.strip().splitlines()[-1])["images_per_s"] for o in outs)


def paper_study_seconds(workers: int, slowdown: float, sample: int) -> tuple[int, int, float]:
    """(trials, architectures calibrated, seconds) of experiment=paper budget=paper with trainer=gpu on `workers`
    concurrent processes, each `slowdown` times slower than alone (workers x one process's rate / the aggregate
    rate). `sample` architectures spread over the MACs are calibrated (0: all); the others' seconds per training
    and per evaluation image come from a least-squares fit on MACs and layers of the calibrated ones."""
    from dse.autotune import resolve
    from dse.calibrate import calibrate, lpt_makespan, trial_images
    from dse.config import compose
    from dse.models import model_facts
    from dse.space import plan_grid

    plan = [p.trial for p in plan_grid(compose(["experiment=paper", "budget=paper", "trainer=gpu"])) if not p.rejected]
    specs = sorted({t.model for t in plan}, key=lambda s: model_facts(s).macs)
    chosen = specs if sample <= 0 or sample >= len(specs) else [specs[round(i * (len(specs) - 1) / (sample - 1))]
                                                                for i in range(sample)]
    optim0 = plan[0].optim_config()
    measured = {}
    for spec in chosen:
        train = resolve(spec, optim0, plan[0].train_config(None))
        c = calibrate(spec, train, optim0)
        measured[spec] = (1 / c.train_img_per_s, 1 / c.eval_img_per_s, c.warmup_seconds)
    predict = per_image_model(measured)
    durations = []
    for t in plan:
        per_train, per_eval, warm = measured.get(t.model) or predict(t.model)
        n_train, n_eval = trial_images(t.data)
        durations.append(warm + int(t.trainer["epochs"]) * (n_train * per_train + n_eval * per_eval))
    return len(plan), len(chosen), lpt_makespan(durations, workers) * slowdown


def features(spec) -> list[float]:
    """What a step's time on a GPU grows with: a fixed cost, the arithmetic (MACs) and the layers (launches)."""
    from dse.models import build_model, model_facts

    layers = sum(1 for m in build_model(spec).modules() if not list(m.children()))
    return [1.0, model_facts(spec).macs / 1e6, float(layers)]


def per_image_model(measured: dict):
    """Least squares of (train s/image, eval s/image, warm-up s) on `features` over the calibrated specs."""
    import numpy as np

    specs = list(measured)
    a = np.array([features(s) for s in specs])
    coef = np.linalg.lstsq(a, np.array([measured[s] for s in specs]), rcond=None)[0]  # (3 features, 3 outputs)
    floor = np.array([min(v[i] for v in measured.values()) for i in range(3)])

    def predict(spec) -> tuple[float, float, float]:
        return tuple(np.maximum(np.array(features(spec)) @ coef, floor))

    return predict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=SHORT_IMAGES, help="training images per epoch")
    ap.add_argument("--long", action="store_true", help="45,000 images, 16 processes too, every architecture")
    ap.add_argument("--study-sample", type=int, default=12, help="architectures calibrated for the study (0: all)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per run (the fastest one is reported)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument(
        "--no-study",
        action="store_true",
        help="skip the paper-study estimate",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--memory-fraction", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here (torch.cuda.is_available() is False); nothing measured")
        return
    if args.child:
        child(args)
        return
    concurrency = CONCURRENCY
    if args.long:
        args.images, args.study_sample, concurrency = EPOCH_IMAGES, 0, LONG_CONCURRENCY
    from dse.data import DataConfig, load_data
    from dse.models import model_facts, spec_from_name

    name = torch.cuda.get_device_name()
    print(f"{name}; torch {torch.__version__}; {os.cpu_count()} CPUs; load average {os.getloadavg()}", flush=True)
    subset = args.images if args.images < EPOCH_IMAGES else None
    bundle = load_data(DataConfig(val_size=5000, subset_size=subset, test_size=1000), "cpu")
    print(f"  {'pipeline':8s} {'images/s':>9s} {'s/epoch':>8s} {'x auth':>7s} {'of peak':>9s} {'warm-up':>7s}")
    for model in args.models.split(","):
        spec, facts = spec_from_name(model), model_facts(spec_from_name(model))
        paper = paper_seconds(spec.display_name)
        print(f"== {spec.display_name}: {facts.macs / 1e6:.1f} M MACs; paper s/epoch "
              f"{', '.join(f'{s:g}' for s in paper) or 'not listed'} (the authors' GPU)", flush=True)
        ref = authors_run(spec, bundle, args.epochs)
        print(fmt_row("authors", ref, ref, peak_fraction(facts.macs, ref, peak_flops(name, "fp32")), None))
        for label, fast in (("eager", False), ("fast", True)):
            r = fit_run(spec, bundle.to("cuda"), args.epochs, fast)
            frac = peak_fraction(facts.macs, r["images_per_s"], peak_flops(name, r["precision"]))
            layout = "channels_last" if r["channels_last"] else "nchw"
            print(fmt_row(label, r["images_per_s"], ref, frac, r["warmup"]) +
                  f"  ({r['mode']}, {r['precision']}, {layout})", flush=True)
    rates = {}
    for n in concurrency:
        rates[n] = concurrent_run(n, min(args.images, 10_000), args.epochs)
        print(f"  {n:2d} concurrent 06-0.4x processes: {rates[n]:8.0f} images/s in all "
              f"({rates[n] / rates[concurrency[0]]:.2f}x one process)", flush=True)
    if not args.no_study:
        best = max(rates, key=rates.get)
        trials, calibrated, seconds = paper_study_seconds(best, best * rates[1] / rates[best], args.study_sample)
        print(f"paper study (experiment=paper budget=paper, {trials} trials, trainer=gpu) on {best} process(es): "
              f"{study_hours(seconds)} estimated ({calibrated} architectures calibrated on this GPU, the rest "
              "fitted on MACs and layers)")


if __name__ == "__main__":
    main()
