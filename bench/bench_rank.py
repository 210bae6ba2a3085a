"""Does a short budget rank the models like a longer one? Spearman's rank correlation of two studies' test accuracy.

Reads the complete trials of two studies from a results store, pairs them by model (registry name, dropout,
optimizer, dataset; one seed each, or the mean over the seeds both studies share), and prints both accuracies,
both ranks and Spearman's rho (Pearson's correlation of the average ranks, so ties count as in scipy's
spearmanr). Used to check that the default CPU budget (`budget=quick`) orders the Table 3 models as a run at least
4x longer does:

    python bench/bench_rank.py --store sqlite:///results/dse.db --short cpu-quick --long cpu-long

(--long-store when the longer study is in another store.)

--paper-table 3 adds the same comparison with the paper's own accuracies of that table (200 epochs on all data, the
authors' GPU runs; a far longer budget, but another implementation). Only the models both studies completed are
compared (the default study trains more rows than Table 3; pass
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


def paper_accuracy(table: int) -> pd.Series:
    """The paper's accuracy (percent) of each registry name in its Table `table`."""
    from dse.tables.paper import load_paper_tables

    paper = load_paper_tables()
    rows = paper[paper["table"] == table]
    if rows.empty:
        raise DSEError(f"the paper has no Table {table}; tables: {sorted(paper['table'].unique())}")
    return rows.groupby("model_name")["accuracy_pct"].mean()


def by_model(acc: pd.Series) -> pd.Series:
    """Accuracy per registry name (mean over the rows of one model: dropout/optimizer variants)."""
    return acc.groupby(level="model_name").mean()


def report(table: pd.DataFrame, short: str, long: str, metric: str, label: str) -> None:
    print(f"{metric} (%) of {len(table)} models: {short} (short) vs {long} (long)")
    print(table.round(2).to_string())
    print(f"spearman({label}): {spearman(table['short'], table['long']):.2f}")


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
    ap.add_argument("--long-store", help="store URL of the longer study (default: --store)")
    ap.add_argument("--short", default="cpu-quick", help="the default-budget study")
    ap.add_argument("--long", required=True, help="the study with the longer budget (same models)")
    ap.add_argument("--metric", default="test_acc", choices=["test_acc", "best_val_acc", "final_test_acc"])
    ap.add_argument("--models", nargs="*", help="registry names to compare (default: every model in both)")
    ap.add_argument("--paper-table", type=int, help="also compare the short study with this table of the paper")
    args = ap.parse_args(argv)
    try:
        short_store = Store(args.store, create=False)
        long_store = Store(args.long_store, create=False) if args.long_store else short_store
        short = study_accuracy(short_store, args.short, args.metric)
        if args.paper_table is not None:
            paper = compare(by_model(short), paper_accuracy(args.paper_table), args.models)
            report(paper, args.short, f"paper Table {args.paper_table}", args.metric, "default vs paper")
        table = compare(short, study_accuracy(long_store, args.long, args.metric), args.models)
    except DSEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report(table, args.short, args.long, args.metric, "default vs longer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
