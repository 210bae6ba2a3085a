"""Why the target facts matter, and what they cost: over the paper's architectures, how well MACs rank latency and
parameters rank peak RAM (Spearman), and the time to know every fact of a whole plan, cold and warm.

- Spearman rank correlation (pandas) over the distinct architectures of ``experiment=paper`` (dropout and
  optimizer do not change an architecture's facts): MACs vs batch-1 p50 latency of the untrained network (ONNX
  Runtime, one thread, this host), parameters vs peak int8 activations, parameters vs int8 flash.
- Cost: every fact (params, MACs, checkpoint bytes, flash, peak RAM, latency) of the paper plan's and of the default
  study's (``experiment=cpu``) architectures, in a fresh process each, first with an empty cache (cold), then
  again with the cache it filled (warm). Goals: the default study's cold facts at most 5 % of its quarter-hour
  promise (45 s), warm under 5 s.

    python bench/bench_target.py

Prints the host's CPU beside every number.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUICK_PROMISE_S = 15 * 60  # the default study's promise (README, "What the default study costs and shows")

_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from dse.config import compose
from dse.deploy.facts import latency_facts
from dse.models import model_facts
from dse.space import plan_grid
specs = list(dict.fromkeys(p.trial.model.replace(dropout=None) for p in plan_grid(compose(sys.argv[1:]))))
facts = {s: model_facts(s) for s in specs}
lat = latency_facts(specs)
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": [
    dict(name=s.name, macs=facts[s].macs, params=facts[s].params, ram=facts[s].ram_bytes_int8,
         flash=facts[s].flash_bytes, p50=lat[s].p50_ms, p99=lat[s].p99_ms) for s in specs]}))
"""


def facts_run(experiment: str, cache: str) -> dict:
    """Every fact of ``experiment``'s architectures in a fresh process using ``cache``; its time and rows."""
    env = {**os.environ, "DSE_CACHE_DIR": cache, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", _CHILD, f"experiment={experiment}", "target.latency=always"],
                         env=env, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def spearman(a, b) -> float:
    """Spearman's rho: the Pearson correlation of the ranks (ties averaged); pandas' own needs scipy."""
    return float(a.rank().corr(b.rank()))


def misleading_pair(df) -> str:
    """The pair MACs misrank the most: A has k times B's MACs yet runs faster (largest k)."""
    macs, p50, names = df["macs"].to_numpy(float), df["p50"].to_numpy(float), list(df["name"])
    best = (0.0, 0, 0)
    for a in range(len(df)):
        for b in range(len(df)):
            if p50[a] < p50[b] and macs[a] / macs[b] > best[0]:
                best = (macs[a] / macs[b], a, b)
    k, a, b = best
    return (f"most misleading pair: {names[a]} has {k:.1f}x the MACs of {names[b]} ({macs[a] / 1e6:.2f} M vs "
            f"{macs[b] / 1e6:.2f} M) yet runs faster ({p50[a]:.3f} vs {p50[b]:.3f} ms p50)")


def cpu_label() -> str:
    from dse.deploy.latency import machine

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return f"{machine()}, avx512_bf16 {'yes' if 'avx512_bf16' in flags else 'no'}"


def main() -> None:
    import pandas as pd

    print(f"host CPU: {cpu_label()}")
    with tempfile.TemporaryDirectory() as cache:
        for experiment in ("cpu", "paper"):
            cold = facts_run(experiment, cache)
            warm = facts_run(experiment, cache)
            n = len(cold["rows"])
            line = f"{experiment}: {n} architectures, facts cold {cold['seconds']:.1f} s, warm {warm['seconds']:.2f} s"
            if experiment == "cpu":
                line += (f"; cold = {100 * cold['seconds'] / QUICK_PROMISE_S:.1f} % of the quick study's "
                         f"{QUICK_PROMISE_S // 60} min (goal <= 5 %), warm goal < 5 s")
            print(line)
    df = pd.DataFrame(cold["rows"])  # the paper plan's architectures
    pairs = [("macs", "p50", "MACs vs latency p50"), ("params", "ram", "params vs peak int8 RAM"),
             ("params", "flash", "params vs int8 flash"), ("macs", "ram", "MACs vs peak int8 RAM")]
    print(f"Spearman rank correlation over the paper's {len(df)} architectures:")
    for a, b, what in pairs:
        print(f"  {what:26s} {spearman(df[a], df[b]):+.3f}")
    shallow = df[df["name"].str.startswith("shallow_sqnxt")]
    print(f"  {'MACs vs latency p50 (SSqNxt only, ' + str(len(shallow)) + ')':26s} "
          f"{spearman(shallow['macs'], shallow['p50']):+.3f}")
    print(misleading_pair(df))
    fastest = df.sort_values("p50").head(3)[["name", "macs", "p50"]]
    fewest = df.sort_values("macs").head(3)[["name", "macs", "p50"]]
    print("fewest MACs:\n" + fewest.to_string(index=False) + "\nlowest latency:\n" + fastest.to_string(index=False))


if __name__ == "__main__":
    main()
