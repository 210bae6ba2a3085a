"""Benchmark: dse's training core vs a reference pipeline written the way the paper authors' public code trains.

Reference (per model): torchvision.datasets.ImageFolder on the JPEG copy of CIFAR-10 + PIL transforms
RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize + DataLoader(batch 128, shuffle,
num_workers=2) + SGD (momentum 0.9, Nesterov, lr 0.01, weight decay 5e-4), float32, PyTorch's default threads,
a `.item()` per step for the running loss/accuracy.
Ours: dse.data (uint8 tensors in memory, batched crop/flip) + dse.train.fit, with the same model, initial weights,
batch size, optimizer and images; once in float32 (same precision as the reference: the pipeline's gain alone) and
once with "the best options" (precision, memory layout and threads picked by a short calibration on this machine).

Reported per model: seconds per epoch on the measured images and extrapolated to a full 50,000-image epoch,
images/s, the speed ratio, achieved training FLOP/s (3 x forward MACs x 2 FLOP per image) as a fraction of this
CPU's peak (estimated from /proc/cpuinfo; the assumption is printed), and, for the first model, the test accuracy of
both pipelines after the same epochs on the same images ("no accuracy loss at equal epochs").

This is a benchmark, not a test: `make bench` (or `python bench/bench_train.py --quick`). On a shared machine the
numbers move with other load; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dse.data import CIFAR_MEAN, CIFAR_STD, DataConfig, load_data, split_indices  # noqa: E402
from dse.models import build_model, model_facts, spec_from_name  # noqa: E402
from dse.train import OptimConfig, TrainConfig, fit  # noqa: E402

FULL_EPOCH = 50_000  # images in a full CIFAR-10 training epoch (the paper's "seconds per epoch")
BATCH = 128  # the authors' batch size


# ----------------------------------------------------------------------------------------------- machine peak
def cpu_peak() -> dict:
    """Peak FLOP/s estimate: cores x GHz x FLOP/cycle/core for fp32 FMA (AVX-512/AVX2) and bf16 (AMX/AVX512-BF16)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split()) if "flags" in text else set()
    name = (re.search(r"^model name\s*:\s*(.*)$", text, re.M) or [None, platform.processor()])[1]
    mhz = [float(v) for v in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)]
    ghz_in_name = re.search(r"@\s*([\d.]+)GHz", name or "")
    ghz = float(ghz_in_name.group(1)) if ghz_in_name else (max(mhz) / 1000 if mhz else 2.0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # fp32: 2 FMA ports x vector lanes x 2 FLOP (AVX-512: 16 lanes -> 64; AVX2: 8 lanes -> 32)
    fp32 = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    # bf16: AMX TDPBF16PS = 16x16x32 MACs per 16 cycles -> 1024 FLOP/cycle; AVX512-BF16 dot products -> 128
    bf16 = 1024 if "amx_bf16" in flags else 128 if "avx512_bf16" in flags else fp32
    return {
        "cpu": name,
        "cores": cores,
        "ghz": ghz,
        "fp32_flop_per_cycle": fp32,
        "bf16_flop_per_cycle": bf16,
        "fp32_peak": cores * ghz * 1e9 * fp32,
        "bf16_peak": cores * ghz * 1e9 * bf16,
        "flags": sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
    }


# ---------------------------------------------------------------------------------------- reference pipeline
def reference_run(spec, data_dir: Path, train_idx: list[int], epochs: int, evaluate: bool, threads: int) -> dict:
    """Train like the authors' public CIFAR code: PIL transforms in DataLoader workers, float32, .item() per step."""
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _reference_run(spec, data_dir, train_idx, epochs, evaluate)
    finally:
        torch.set_num_threads(prev_threads)


def _reference_run(spec, data_dir: Path, train_idx: list[int], epochs: int, evaluate: bool) -> dict:
    import torchvision
    import torchvision.transforms as T
    from torch.utils.data import DataLoader, Subset

    transform_train = T.Compose(
        [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)]
    )
    transform_test = T.Compose([T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    trainset = Subset(torchvision.datasets.ImageFolder(str(data_dir / "train"), transform=transform_train), train_idx)
    trainloader = DataLoader(trainset, batch_size=BATCH, shuffle=True, num_workers=2)
    torch.manual_seed(0)  # the same initial weights as fit(seed=0)
    net = build_model(spec)
    seconds = reference_epochs(net, trainloader, epochs)
    out = {"seconds": seconds, "images": len(train_idx)}
    if evaluate:
        testset = torchvision.datasets.ImageFolder(str(data_dir / "test"), transform=transform_test)
        testloader = DataLoader(testset, batch_size=100, shuffle=False, num_workers=2)
        net.eval()
        correct = total = 0
        with torch.no_grad():
            for inputs, targets in testloader:
                correct += net(inputs).argmax(1).eq(targets).sum().item()
                total += targets.size(0)
        out["test_acc"] = 100.0 * correct / total
    return out


def reference_epochs(net: torch.nn.Module, trainloader, epochs: int, device: str = "cpu") -> list[float]:
    """The authors' training loop: SGD (Nesterov, lr 0.01, weight decay 5e-4), fp32, a `.to(device)` of every
    batch and a `.item()` per step for the running loss and accuracy; seconds per epoch."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
    seconds = []
    for _ in range(epochs):
        net.train()
        train_loss, correct, total = 0.0, 0, 0
        t0 = time.perf_counter()
        for inputs, targets in trainloader:
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad()
            outputs = net(inputs)
            loss = criterion(outputs, targets)
            loss.backward()
            optimizer.step()
            train_loss += loss.item()
            _, predicted = outputs.max(1)
            total += targets.size(0)
            correct += predicted.eq(targets).sum().item()
        seconds.append(time.perf_counter() - t0)
        print(f"    reference epoch: {seconds[-1]:.1f} s, train acc {100 * correct / total:.2f} %", flush=True)
    return seconds


# --------------------------------------------------------------------------------------------------- ours
def fit_cpu(spec, data, epochs: int, precision: str, channels_last: bool, threads: int):
    """The training core on the CPU at batch BATCH, constant lr, seed 0, quiet."""
    cfg = TrainConfig(epochs=epochs, batch_size=BATCH, device="cpu", precision=precision,
                      channels_last=channels_last, threads=threads, progress="none", seed=0)
    return fit(spec, data, OptimConfig(schedule="none"), cfg)


def ours_run(spec, bundle, epochs: int, precision: str, channels_last: bool, threads: int, evaluate: bool) -> dict:
    data = bundle if evaluate else dataclasses.replace(bundle, test_x=bundle.test_x[:0], test_y=bundle.test_y[:0])
    r = fit_cpu(spec, data, epochs, precision, channels_last, threads)
    for m in r.epochs:
        print(f"    ours epoch: {m.train_seconds:.1f} s, train acc {m.train_acc:.2f} %", flush=True)
    return {
        "seconds": [m.train_seconds for m in r.epochs],
        "images": len(bundle.train_y),
        "test_acc": r.final_test_acc if evaluate else None,
    }


def calibrate(spec, bundle, batches: int, thread_options: list[int]) -> list[dict]:
    """Time `batches` training steps for each precision x layout x threads; fastest first."""
    n = batches * BATCH
    small = dataclasses.replace(
        bundle,
        train_x=bundle.train_x[:n],
        train_y=bundle.train_y[:n],
        test_x=bundle.test_x[:0],
        test_y=bundle.test_y[:0],
    )
    rows = []
    for threads in thread_options:
        for precision in ("fp32", "bf16"):
            for cl in (False, True):
                r = fit_cpu(spec, small, 2, precision, cl, threads)
                sec = min(m.train_seconds for m in r.epochs)  # epoch 1 includes one-time warm-up
                rows.append({"precision": precision, "channels_last": cl, "threads": threads, "images_per_s": n / sec})
                print(
                    f"    calibrate {precision:4s} {'channels_last' if cl else 'nchw':13s} threads={threads}: "
                    f"{n / sec:7.0f} images/s",
                    flush=True,
                )
    return sorted(rows, key=lambda r: -r["images_per_s"])


def _imagefolder_targets(folder: Path) -> list[int]:
    import torchvision

    return torchvision.datasets.ImageFolder(str(folder)).targets


# -------------------------------------------------------------------------------------------------- report
def rate(run: dict) -> float:
    # mean over epochs after the first when there are several (the first pays one-time warm-up)
    secs = run["seconds"][1:] or run["seconds"]
    return run["images"] / (sum(secs) / len(secs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000, help="training images per epoch (class-balanced subset)")
    ap.add_argument(
        "--large-images",
        type=int,
        default=1_024,
        help="training images for models over 20 M MACs (sqnxt_23_1x is ~20x slower per image)",
    )
    ap.add_argument("--epochs", type=int, default=2, help="epochs of each timed run (accuracy runs included)")
    ap.add_argument("--models", default="shallow_sqnxt_06_0_4x,sqnxt_23_1x")
    ap.add_argument(
        "--quick", action="store_true", help="--images 2048 --large-images 256 --epochs 1 --calib-batches 4"
    )
    ap.add_argument("--calib-batches", type=int, default=8, help="batches per option in the calibration")
    ap.add_argument("--threads", default="1,2", help="thread counts the calibration tries")
    ap.add_argument("--data", default=os.environ.get("DSE_DATA_DIR") or str(REPO.parent / "shared/data/cifar10-jpg"))
    ap.add_argument("--no-accuracy", action="store_true", help="skip the equal-epochs accuracy comparison")
    ap.add_argument("--out", default=str(REPO / "results" / "bench_train.json"))
    args = ap.parse_args()
    if args.quick:
        args.images, args.large_images, args.epochs, args.calib_batches = 2048, 256, 1, 4

    data_dir = Path(args.data)
    if not (data_dir / "train").is_dir():
        sys.exit(f"no ImageFolder CIFAR-10 at {data_dir} (set --data or DSE_DATA_DIR)")
    peak = cpu_peak()
    default_threads = torch.get_num_threads()
    print(f"machine: {peak['cpu']}, {peak['cores']} cores at {peak['ghz']:.2f} GHz, flags {' '.join(peak['flags'])}")
    print(
        f"peak assumption: fp32 {peak['cores']} x {peak['ghz']:.2f} GHz x {peak['fp32_flop_per_cycle']} FLOP/cycle "
        f"= {peak['fp32_peak'] / 1e9:.0f} GFLOP/s; bf16 {peak['bf16_flop_per_cycle']} FLOP/cycle "
        f"(AMX if listed) = {peak['bf16_peak'] / 1e9:.0f} GFLOP/s"
    )
    print(f"torch {torch.__version__}, default threads {default_threads}, load average {os.getloadavg()}")

    t0 = time.perf_counter()
    report = {"machine": peak, "torch": str(torch.__version__), "args": vars(args), "models": {}}
    for k, name in enumerate(args.models.split(",")):
        spec = spec_from_name(name)
        facts = model_facts(spec)
        n = args.images if facts.macs <= 20e6 else min(args.images, args.large_images)
        cfg = DataConfig(root=str(data_dir), val_size=0, subset_size=n)
        t1 = time.perf_counter()
        bundle = load_data(cfg)
        print(
            f"\n== {spec.display_name} ({name}): {facts.params:,} params, {facts.macs / 1e6:.2f} M MACs/image; "
            f"{n} training images; data ready in {time.perf_counter() - t1:.1f} s (decode once, then cache)"
        )
        # the same images for the reference: ImageFolder lists files in the same (sorted) order as dse.data
        targets = torch.tensor(_imagefolder_targets(data_dir / "train"))
        train_idx = split_indices(targets, cfg)[0].tolist()
        assert torch.equal(targets[train_idx], bundle.train_y), "reference and ours would train on different images"
        accuracy = k == 0 and not args.no_accuracy
        epochs = args.epochs

        print("  calibration (best options):")
        threads = [int(t) for t in args.threads.split(",")]
        calib = calibrate(spec, bundle, max(2, args.calib_batches if facts.macs <= 20e6 else 2), threads)
        best = calib[0]
        print(
            f"  best: {best['precision']}, {'channels_last' if best['channels_last'] else 'nchw'}, "
            f"threads={best['threads']}"
        )
        print(f"  ours, best options, load {os.getloadavg()[0]:.1f}:")
        ours_best = ours_run(spec, bundle, epochs, best["precision"], best["channels_last"], best["threads"], accuracy)
        print(
            f"  ours, fp32 nchw, threads={default_threads} (the reference's precision and threads), "
            f"load {os.getloadavg()[0]:.1f}:"
        )
        ours_fp32 = ours_run(spec, bundle, 1, "fp32", False, default_threads, False)
        print(
            f"  reference (ImageFolder + PIL + DataLoader(num_workers=2), fp32, threads={default_threads}), "
            f"load {os.getloadavg()[0]:.1f}:"
        )
        ref = reference_run(spec, data_dir, train_idx, epochs, accuracy, default_threads)
        rows = [
            ("reference", ref, "fp32"),
            ("ours fp32", ours_fp32, "fp32"),
            ("ours best", ours_best, best["precision"]),
        ]
        if best["threads"] != default_threads:  # the reference again at our thread count: like for like
            print(f"  reference again with threads={best['threads']} (as ours best), load {os.getloadavg()[0]:.1f}:")
            ref_t = reference_run(spec, data_dir, train_idx, 1, False, best["threads"])
            rows.insert(1, (f"ref thr={best['threads']}", ref_t, "fp32"))

        flop_per_image = 3 * facts.macs * 2
        print(
            f"  {'pipeline':10s} {'images/s':>9s} {'s/epoch':>8s} {'s/50k-epoch':>11s} {'GFLOP/s':>8s} "
            f"{'% fp32 peak':>11s} {'% bf16 peak':>11s} {'x ref':>6s}"
        )
        res = {}
        for label, run, prec in rows:
            ips = rate(run)
            gflops = ips * flop_per_image / 1e9
            res[label] = {
                "images_per_s": ips,
                "sec_per_epoch": run["images"] / ips,
                "sec_per_full_epoch": FULL_EPOCH / ips,
                "gflop_per_s": gflops,
                "fraction_fp32_peak": gflops * 1e9 / peak["fp32_peak"],
                "fraction_bf16_peak": gflops * 1e9 / peak["bf16_peak"],
                "precision": prec,
                "test_acc": run.get("test_acc"),
                "speedup": ips / rate(ref),
                "seconds": run["seconds"],
            }
            r = res[label]
            print(
                f"  {label:10s} {ips:9.0f} {r['sec_per_epoch']:8.1f} {r['sec_per_full_epoch']:11.0f} "
                f"{gflops:8.2f} {100 * r['fraction_fp32_peak']:10.2f}% {100 * r['fraction_bf16_peak']:10.3f}% "
                f"{r['speedup']:6.2f}"
            )
        print(
            f"  speed ratio ours best / reference: {res['ours best']['speedup']:.2f}x "
            f"(goal >= 3x for Shallow SqueezeNext-06-0.4x); ours fp32 / reference: "
            f"{res['ours fp32']['speedup']:.2f}x"
        )
        for label in res:
            if label.startswith("ref thr="):
                same = res["ours best"]["images_per_s"] / res[label]["images_per_s"]
                print(f"  speed ratio ours best / reference at the same threads ({label}): {same:.2f}x")
        if accuracy:
            print(
                f"  test accuracy after {epochs} epoch(s) on the same {n} images, constant lr 0.01: "
                f"reference {ref['test_acc']:.2f} %, ours ({best['precision']}) {ours_best['test_acc']:.2f} %"
            )
        report["models"][name] = {
            "images": n,
            "epochs": epochs,
            "calibration": calib,
            "best": best,
            "macs": facts.macs,
            "params": facts.params,
            "results": res,
        }
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
