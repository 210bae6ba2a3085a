"""Does `auto` pick the fastest settings here? Every candidate setting of every default-study row, side by side.

For each architecture of the study (default: the default study, experiment=cpu budget=quick), every candidate
setting that `auto` chooses from (float32 / bf16 x NCHW / channels_last on a CPU; x CUDA graph / eager on a GPU)
is timed in full by dse.probe (the real `fit`, two tiny epochs on random pixels, in child processes: a setting
that crashes is reported as such), on as many processes side by side as the study has workers, twice (the
second round in reverse order; the mean of the two counts). Then
dse.autotune decides with a fresh cache, as a first `make sweep` on this machine would, and the study's training
time with auto's choices is compared with the time it would take with the best candidate of every row:

    auto vs best: 0.97x      (the study's images per second under auto / under the best candidates; goal >= 0.95)

    python bench/bench_settings.py [--experiment cpu --budget quick] [--workers N] [--rounds 2]  (make bench-settings)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cpu_line() -> str:
    """The CPU's model, family and whether it has native bf16 (what the numbers depend on)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                info.setdefault(k.strip(), v.strip())
    except OSError:
        return platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    return (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, model {info.get('model', '?')}), "
            f"{os.cpu_count()} CPUs, native bf16: {'yes' if bf16 else 'no'} (avx512_bf16/amx_bf16)")


def study_items(experiment: str, budget: str, threads: int):
    from dse import autotune
    from dse.config import compose
    from dse.space import plan_grid

    plan = [p for p in plan_grid(compose([f"experiment={experiment}", f"budget={budget}"])) if not p.rejected]
    return [p.trial for p in plan], autotune.items_of([p.trial for p in plan], threads)


def measure_all(items, workers: int, threads: int, rounds: int = 2) -> dict:
    """{(item, setting): result} for every candidate of every item, timed in full (no abandoning), `rounds`
    times, every other round in reverse order (a slow minute of the shared host then falls on different
    candidates each round); a setting's rate is the mean of its rounds (a maximum of noisy single timings would
    favour whichever candidate was lucky, and bias the ratio against auto)."""
    from dataclasses import replace

    from dse import autotune
    from dse.probe import ProbePool
    from dse.train import resolve_device

    once, back = [], {}
    for it in items:
        for s in autotune.candidates(it.train, it.optim, resolve_device(it.train.device)):
            once.append((it, s, autotune.job_for(it, s)))
    jobs = []
    for r in range(rounds):
        for it, s, job in (once if r % 2 == 0 else once[::-1]):
            jobs.append(replace(job, key=f"{job.key}#{r}"))
            back[jobs[-1].key] = (it, s)
    runs: dict = {}

    def said(job, r) -> None:
        it, s = back[job.key]
        runs.setdefault((it, s), []).append(r)
        what = f"{r['train_img_per_s']:8,.0f} img/s" if r.get("ok") else r.get("error", "failed")
        print(f"  {it.spec.display_name:32s} {s.label():24s} {what}", flush=True)

    with ProbePool(workers, threads) as pool:
        pool.run(jobs, on_result=said)
    return {k: _mean(rs) for k, rs in runs.items()}


def _mean(results: list[dict]) -> dict:
    """One setting's rounds as one result: the mean rate, or the first failure (a crash in any round counts)."""
    failed = [r for r in results if not r.get("ok")]
    if failed:
        return failed[0]
    return {"ok": True, "train_img_per_s": sum(r["train_img_per_s"] for r in results) / len(results)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="cpu")
    ap.add_argument("--budget", default="quick")
    ap.add_argument("--workers", type=int, default=None, help="processes side by side (default: workers=auto's)")
    ap.add_argument("--rounds", type=int, default=2, help="timings of every candidate, averaged (default 2)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dse-bench-settings-") as tmp:
        os.environ["DSE_CACHE_DIR"] = tmp  # a first run on this machine: nothing cached
        return run(args)


def run(args) -> int:
    from dse import autotune
    from dse.calibrate import trial_images

    cores = len(os.sched_getaffinity(0))
    print(f"{cpu_line()}; load average {os.getloadavg()}", flush=True)
    configs, items = study_items(args.experiment, args.budget, None)
    if args.workers:
        workers, threads, tuner = args.workers, max(1, cores // args.workers), None
    else:
        workers, threads, tuner = autotune.choose_workers(items, cores, print)
    configs, items = study_items(args.experiment, args.budget, threads)
    print(f"every candidate of {len(items)} rows on {workers} process(es) x {threads} thread(s):", flush=True)
    measured = measure_all(items, workers, threads, args.rounds)
    tuner = tuner or autotune.Tuner(workers, threads, say=print)
    try:
        chosen = tuner.resolve_all(items)  # what auto decides on this machine, with probes of its own
        tuner.check_all(chosen)  # and each architecture's first run with it (a crash: its next choice)
    finally:
        tuner.close()
    t_auto = t_best = 0.0
    print(f"  {'row':32s} {'auto picked':24s} {'best here':24s} auto/best")
    for tc, it in zip(configs, items, strict=True):
        rates = {s: r["train_img_per_s"] for (i, s), r in measured.items() if i == it and r.get("ok")}
        pick = autotune.setting_of(chosen[it])
        best = max(rates, key=rates.get)
        n_train, _ = trial_images(tc.data)
        auto_rate = rates.get(pick, 0.0)
        t_auto += n_train / auto_rate if auto_rate else float("inf")
        t_best += n_train / rates[best]
        print(f"  {it.spec.display_name:32s} {pick.label():24s} {best.label():24s} {auto_rate / rates[best]:.2f}x")
    print(json.dumps({"auto_seconds_per_epoch": t_auto / workers, "best_seconds_per_epoch": t_best / workers}))
    print(f"auto vs best: {t_best / t_auto:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
