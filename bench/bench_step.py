"""Where one training step's time goes: milliseconds per step for each precision x layout x threads x compile
option, then an operator breakdown (convolution, BatchNorm, activation, layout copies, optimizer, other) of the
fastest option, all measured in one run.

It explains the ceiling of `bench_train.py`'s speed ratio on a CPU: for a small model like Shallow SqueezeNext-06-0.4x
at batch 128 a step is memory-bound element-wise work (ELU, BatchNorm) and small-channel convolutions, so the
options that help big models (channels_last, torch.compile) can lose here. Synthetic inputs (the data pipeline is
not part of a step); the same model, batch, optimizer (SGD-Nesterov) and loss as the training core.

    python bench/bench_step.py [--model shallow_sqnxt_06_0_4x] [--batch 128] [--steps 20] [--no-compile]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dse.models import build_model, spec_from_name  # noqa: E402

GROUPS = (  # operator name fragments -> group, first match wins
    ("convolution", "convolution"),
    ("batch_norm", "BatchNorm"),
    ("elu", "activation"),
    ("relu", "activation"),
    ("copy_", "layout/dtype copies"),
    ("clone", "layout/dtype copies"),
    ("sgd", "optimizer"),
)


def make_step(name: str, batch: int, precision: str, channels_last: bool, compile_: bool):
    torch.manual_seed(0)
    model = build_model(spec_from_name(name))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    fn = torch.compile(model) if compile_ else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, model.fc.out_features, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(fn(x), y)
        loss.backward()
        opt.step()

    return step


def time_step(step, steps: int) -> float:
    for _ in range(5):  # warm-up (and compilation)
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps


def breakdown(step, steps: int) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    out: dict[str, float] = {}
    for ev in prof.key_averages():
        low = ev.key.lower()
        group = next((g for frag, g in GROUPS if frag in low), "other")
        out[group] = out.get(group, 0.0) + ev.self_cpu_time_total / 1e3 / steps  # ms per step
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shallow_sqnxt_06_0_4x")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants (slow to build)")
    args = ap.parse_args()
    print(f"{args.model}, batch {args.batch}, torch {torch.__version__}, load average {os.getloadavg()}")
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for compile_ in (False,) if args.no_compile else (False, True):
            for precision in ("fp32", "bf16"):
                for cl in (False, True):
                    sec = time_step(make_step(args.model, args.batch, precision, cl, compile_), args.steps)
                    rows.append((sec, precision, cl, threads, compile_))
                    print(f"  {precision:4s} {'channels_last' if cl else 'nchw':13s} threads={threads} "
                          f"{'compiled' if compile_ else 'eager':8s}: {sec * 1e3:7.1f} ms/step "
                          f"{args.batch / sec:6.0f} img/s", flush=True)
    sec, precision, cl, threads, compile_ = min(rows)
    print(f"fastest: {precision}, {'channels_last' if cl else 'nchw'}, threads={threads}, "
          f"{'compiled' if compile_ else 'eager'}: {sec * 1e3:.1f} ms/step")
    sec, precision, cl, threads, _ = min(r for r in rows if not r[4])
    torch.set_num_threads(threads)
    parts = breakdown(make_step(args.model, args.batch, precision, cl, False), args.steps)
    total = sum(parts.values())
    print(f"operator breakdown of the fastest eager option ({precision}, {'channels_last' if cl else 'nchw'}, "
          f"threads={threads}; self CPU time, {total:.1f} ms/step profiled):")
    for group, ms in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {group:20s} {ms:7.1f} ms  {100 * ms / total:5.1f} %")


if __name__ == "__main__":
    main()
