"""`make gpu-check`: the CUDA path checked in one command on a GPU machine, one summary file (at most 8 minutes).

Sections, each in its own process with its own time limit (a crash or a hang is reported and the next one runs):
  tests      the tests marked `cuda` (pytest -m cuda)
  capture    every optimizer of Table 6: a fit whose step is captured in a CUDA graph against the same fit run
             uncaptured (per-epoch losses and accuracies within tolerance; fast_path recorded "graph", so the
             graph was not empty; Adagrad and AdaBound cannot be captured and must train eagerly, said once)
  nosync     no host sync during replays and learning-rate updates (torch.cuda.set_sync_debug_mode("error")
             around 20 graph replays, each followed by a one-cycle schedule step and its lr copy into the graph)
  fraction   trainer.gpu_memory_fraction with the device given as "cuda" and as "cuda:0"
  bench      bench/bench_gpu.py with its short defaults
  sweep      `python -m dse.sweep experiment=cpu budget=smoke workers=4 trainer=gpu`: every trial complete, all on
             the graph path (read back from the store)
The summary (`summary.md`) and one log per section go to --out (default: $OUT/gpu-check when $OUT is set, else
results/gpu-check). Exit code 0 when every section passed, 1 otherwise. Without CUDA: one line, exit 0.

    source .gpu-kit/setup.sh && make gpu-check          # on the GPU machine (`make gpu-kit` stages the kit)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: (section, seconds allowed): 8 minutes in all, the benchmark the largest share
SECTIONS = (("tests", 90), ("capture", 60), ("nosync", 30), ("fraction", 30), ("bench", 200), ("sweep", 60))
TABLE6 = ("sgd_nesterov", "adam", "adamax", "adagrad", "adadelta", "asgd", "rmsprop", "rprop", "adabound")
UNCAPTURABLE = ("adagrad", "adabound")  # dse.fastpath.graph_blocker says why


def synthetic_bundle(n: int = 512, classes: int = 10):
    """Random uint8 images: the checks compare two runs of the same step, so the pixels need no meaning."""
    import torch

    from dse.data import DataBundle

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n + 128, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(n + 128) % classes
    return DataBundle(train_x=x[:n], train_y=y[:n], val_x=x[n:], val_y=y[n:], test_x=x[:0], test_y=y[:0],
                      num_classes=classes, classes=[str(i) for i in range(classes)], source="gpu-check:random",
                      fingerprint="gpu-check")


def check_capture() -> list[str]:
    """Captured against uncaptured, every optimizer: problems found (empty: passed)."""
    from dse import fastpath
    from dse.models import spec_from_name
    from dse.train import OptimConfig, TrainConfig, fit

    spec, data = spec_from_name("shallow_sqnxt_06_0_4x"), synthetic_bundle()
    train = TrainConfig(epochs=2, batch_size=64, eval_batch_size=128, device="cuda", precision="fp32",
                        fast_path="graph", progress="none")
    real, problems = fastpath.TrainStep, []
    for name in TABLE6:
        optim = OptimConfig(name=name, schedule="cosine")
        captured = fit(spec, data, optim, train)
        fastpath.TrainStep = lambda *a, **kw: real(*a, **{**kw, "capture": False})  # the same step, not captured
        try:
            plain = fit(spec, data, optim, train)
        finally:
            fastpath.TrainStep = real
        want = "eager" if name in UNCAPTURABLE else "graph"
        if captured.fast_path != want:
            problems.append(f"{name}: ran {captured.fast_path}, expected {want}")
        for a, b in zip(captured.epochs, plain.epochs, strict=True):
            if abs(a.train_loss - b.train_loss) > 1e-3 * max(1.0, abs(b.train_loss)):
                problems.append(f"{name}: epoch {a.epoch} loss captured {a.train_loss:.6f} vs {b.train_loss:.6f}")
        print(f"{name}: {captured.fast_path}, losses {[round(m.train_loss, 5) for m in captured.epochs]} vs "
              f"{[round(m.train_loss, 5) for m in plain.epochs]}", flush=True)
    return problems


def check_nosync() -> list[str]:
    """20 replays + one-cycle lr updates under sync debug mode "error": any host sync raises."""
    import torch

    import dse.train as T
    from dse.data import batches, device_generator
    from dse.models import build_model, spec_from_name

    spec, device = spec_from_name("shallow_sqnxt_06_0_4x"), torch.device("cuda", 0)
    data = synthetic_bundle(n=128 * 24).to(device)
    optim = T.OptimConfig(name="sgd", momentum=0.0, schedule="onecycle", lr=0.1)  # momentum 0: graph-capturable
    train = T.TrainConfig(epochs=1, batch_size=128, device="cuda", precision="bf16", fast_path="graph")
    model = build_model(spec).to(device)
    tr = T._make_trainer(spec, model, optim, train, "graph", device, steps=24)
    it = batches(data, "train", 128, train=True, generator=device_generator(0, device))
    for _ in range(4):  # warm-up and capture (these may sync)
        tr.step(*next(it))
        tr.schedule_step()
    torch.cuda.synchronize()
    if tr.step.graph is None:
        return ["no graph was captured"]
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(20):
            tr.step(*next(it))
            tr.schedule_step()
    except RuntimeError as e:
        return [f"host sync during replay or lr update: {str(e).splitlines()[0]}"]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return []


def check_fraction() -> list[str]:
    from dse.models import spec_from_name
    from dse.train import OptimConfig, TrainConfig, fit

    problems = []
    for device in ("cuda", "cuda:0"):
        train = TrainConfig(epochs=1, batch_size=64, device=device, gpu_memory_fraction=0.5, progress="none")
        try:
            r = fit(spec_from_name("shallow_sqnxt_06_0_2x"), synthetic_bundle(), OptimConfig(), train)
            print(f"gpu_memory_fraction=0.5 with device={device}: ok on {r.device}", flush=True)
        except Exception as e:  # noqa: BLE001 - the check reports any failure
            problems.append(f"device={device}: {type(e).__name__}: {str(e).splitlines()[0]}")
    return problems


def run_tests(log: Path) -> list[str]:
    try:
        import pytest  # noqa: F401
    except ImportError:
        return ["pytest is not installed here (make gpu-kit stages its wheels into .gpu-kit/wheels)"]
    r = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"],
                       cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.write_text(r.stdout)
    tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "no output"
    return [] if r.returncode == 0 else [f"pytest -m cuda: {tail}"]


def run_bench(log: Path) -> list[str]:
    r = subprocess.run([sys.executable, str(REPO / "bench" / "bench_gpu.py")], cwd=REPO, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    log.write_text(r.stdout)
    return [] if r.returncode == 0 else [f"bench_gpu exit code {r.returncode}"]


def run_sweep(log: Path, folder: Path) -> list[str]:
    import sqlite3

    db = folder / "sweep.db"
    db.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "dse.sweep", "experiment=cpu", "budget=smoke", "workers=4", "trainer=gpu",
           f"storage.url=sqlite:///{db}", f"study.checkpoint_dir={folder / 'ckpt'}", "study.name=gpu-check"]
    r = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.write_text(r.stdout)
    if r.returncode != 0:
        return [f"the sweep exited {r.returncode}"]
    rows = sqlite3.connect(db).execute("SELECT model_name, status, fast_path, precision FROM dse_trials").fetchall()
    print(json.dumps(rows), flush=True)
    problems = [f"{m}: {s}" for m, s, _, _ in rows if s != "complete"]
    problems += [f"{m}: fast path {f}" for m, s, f, _ in rows if s == "complete" and f != "graph"]
    return problems if rows else ["the sweep stored no trials"]


def section(name: str, out: Path) -> list[str]:
    log = out / f"{name}.log"
    if name == "tests":
        return run_tests(log)
    if name == "bench":
        return run_bench(log)
    if name == "sweep":
        return run_sweep(log, out)
    return {"capture": check_capture, "nosync": check_nosync, "fraction": check_fraction}[name]()


def run_section(name: str, limit: int, out: Path) -> tuple[str, float, list[str]]:
    """One section in a child process (crash- and hang-proof): (status, seconds, problems)."""
    t0 = time.monotonic()
    cmd = [sys.executable, __file__, "--section", name, "--out", str(out)]
    try:
        r = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=limit)
    except subprocess.TimeoutExpired as e:
        (out / f"{name}.out").write_text((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes)
                                         else e.stdout or "")
        return "timeout", time.monotonic() - t0, [f"did not finish in {limit} s"]
    (out / f"{name}.out").write_text(r.stdout)
    problems = []
    for line in r.stdout.splitlines():
        if line.startswith("PROBLEM "):
            problems.append(line[len("PROBLEM "):])
    if r.returncode not in (0, 1):
        problems.append(f"the section's process died (exit code {r.returncode})")
    return ("passed" if not problems else "FAILED"), time.monotonic() - t0, problems


def summary(out: Path, results: list[tuple[str, str, float, list[str]]], header: str) -> str:
    lines = ["# gpu-check", "", header, "", "| section | result | seconds | problems |", "|---|---|---|---|"]
    for name, status, seconds, problems in results:
        lines.append(f"| {name} | {status} | {seconds:.0f} | {'; '.join(problems) or '-'} |")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(os.environ["OUT"]) / "gpu-check" if os.environ.get("OUT") else REPO / "results" / "gpu-check"
    ap.add_argument("--out", type=Path, default=default_out)
    ap.add_argument("--only", default="", help="comma-separated sections (default: all)")
    ap.add_argument("--section", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing checked")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.section:  # a child: print the problems for the parent to read
        problems = section(args.section, args.out)
        for p in problems:
            print(f"PROBLEM {p}", flush=True)
        return 1 if problems else 0
    only = {s for s in args.only.split(",") if s}
    header = (f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M %Z')}, "
              f"{os.cpu_count()} CPUs")
    results = []
    for name, limit in SECTIONS:
        if only and name not in only:
            continue
        status, seconds, problems = run_section(name, limit, args.out)
        results.append((name, status, seconds, problems))
        print(f"{name}: {status} in {seconds:.0f} s{': ' + '; '.join(problems) if problems else ''}", flush=True)
    print(summary(args.out, results, header))
    return 0 if all(r[1] == "passed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
