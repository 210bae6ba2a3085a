"""Does a short budget rank the models like a longer one? Spearman's rank correlation of two studies' test accuracy.

Reads the complete trials of two studies from a results store, pairs them by model (registry name, dropout,
optimizer, dataset; one seed each, or the mean over the seeds both studies share), and prints both accuracies,
both ranks and Spearman's rho (Pearson's correlation of the average ranks, so ties count as in scipy's
spearmanr). Used to check that the default CPU budget (`budget=quick`) orders the Table 3 models as a run at least
4x longer does:

    python bench/bench_rank.py --store sqlite:///results/dse.db --short cpu-quick --long table3-long

Only the models both studies completed are compared (the default study trains more rows than Table 3; pass
--models to restrict further). The last line is `spearman(default vs longer): 0.NN`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dse.errors import DSEError  # noqa: E402
from dse.store import Store  # noqa: E402

KEY = ["model_name", "dropout", "optimizer", "dataset"]  # one row of a paper table


def study_accuracy(store: Store, study: str, metric: str) -> pd.Series:
    """Mean `metric` (percent) of the study's complete trials per row KEY (mean over seeds)."""
    df = store.trials(study, status="complete")
    if df.empty:
        known = ", ".join(store.studies()) or "none"
        raise DSEError(f"study {study!r} has no complete trial in this store; studies: {known}")
    return df.groupby(KEY)[metric].mean()


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman's rho: Pearson's r of the average ranks (pandas' own method='spearman' needs scipy)."""
    return float(a.rank().corr(b.rank()))


def compare(short: pd.Series, long: pd.Series, models: list[str] | None) -> pd.DataFrame:
    both = pd.concat({"short": short, "long": long}, axis=1, join="inner").dropna()
    if models:
        both = both[both.index.get_level_values("model_name").isin(models)]
    if len(both) < 3:
        raise DSEError(f"only {len(both)} models are complete in both studies; a rank correlation needs at least 3")
    both["short rank"] = both["short"].rank(ascending=False)
    both["long rank"] = both["long"].rank(ascending=False)
    return both.sort_values("long", ascending=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="sqlite:///results/dse.db", help="results store URL")
    ap.add_argument("--short", default="cpu-quick", help="the default-budget study")
    ap.add_argument("--long", required=True, help="the study with the longer budget (same models)")
    ap.add_argument("--metric", default="test_acc", choices=["test_acc", "best_val_acc", "final_test_acc"])
    ap.add_argument("--models", nargs="*", help="registry names to compare (default: every model in both)")
    args = ap.parse_args(argv)
    try:
        store = Store(args.store, create=False)
        table = compare(study_accuracy(store, args.short, args.metric),
                        study_accuracy(store, args.long, args.metric), args.models)
    except DSEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rho = spearman(table["short"], table["long"])
    print(f"{args.metric} (%) of {len(table)} models: {args.short} (short) vs {args.long} (long)")
    print(table.round(2).to_string())
    print(f"spearman(default vs longer): {rho:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
