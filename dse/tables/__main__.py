"""``python -m dse.tables``: write the paper's Tables 1-7 (paper vs ours), figures and report from the store.

Examples::

    python -m dse.tables                                  # every study in results/dse.db -> results/
    python -m dse.tables --study cpu-quick --format md,csv,tex
    python -m dse.tables --study cpu-quick --epochs-csv results/epochs.csv

Errors (no store, unknown study or format, unreachable database) print one line to stderr and exit 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from dse.common import RESULTS

if TYPE_CHECKING:
    import pandas as pd

    from dse.tables import Generated, Options
    from dse.tables.render import TableResult


def _parser() -> argparse.ArgumentParser:
    """The command line parser, its description and examples taken from this module's docstring."""
    from dse.tables import default_db_url

    head, examples = __doc__.split("\n\n")[:2]
    ap = argparse.ArgumentParser(prog="python -m dse.tables", description=head.split(": ", 1)[1],
                                 epilog=examples.replace("::", ":"),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default=None, metavar="URL",
                    help="results store (default: $DSE_STORAGE_URL or sqlite:///results/dse.db; "
                         f"now {default_db_url()})")
    ap.add_argument("--study", action="append", metavar="NAME",
                    help="only trials of this study (repeatable); default: every study")
    ap.add_argument("--out", default=str(RESULTS), metavar="DIR",
                    help="output root: DIR/tables/tableN.*, DIR/figures/*.png, DIR/report.md "
                         "(default results/ beside the default store)")
    ap.add_argument("--format", default="md", metavar="md,csv,tex", help="table formats, comma-separated")
    ap.add_argument("--paper-dir", default=None, metavar="DIR",
                    help="the paper's table CSVs (default dse/experiments/paper_tables)")
    ap.add_argument("--no-figures", action="store_true", help="tables and report only")
    ap.add_argument("--epochs-csv", metavar="PATH", type=Path,
                    help="also write every epoch of the selected studies to PATH (CSV: study, Optuna trial "
                         "number, model, dataset, seed, store trial id, then the per-epoch metrics)")
    return ap


def _generate(args: argparse.Namespace) -> tuple[Options, Generated]:
    """The options that ``args`` ask for, and what generating them wrote (also the epochs CSV when asked)."""
    from dse.store import resolve_url
    from dse.tables import Options, generate, parse_formats

    opts = Options(db_url=resolve_url(args.db), out_dir=Path(args.out),
                   formats=parse_formats(args.format), studies=tuple(args.study) if args.study else None,
                   paper_dir=Path(args.paper_dir) if args.paper_dir else None,
                   figures=not args.no_figures)
    res = generate(opts)
    if args.epochs_csv:
        from dse.tables import write_epochs_csv

        n = write_epochs_csv(res.data, args.epochs_csv)
        res.files.append(args.epochs_csv)
        print(f"{n:,} epoch rows -> {args.epochs_csv}")
    return opts, res


def _trials_summary(trials: pd.DataFrame) -> str:
    """One line: how many trials of each status from how many studies (or that the store has none)."""
    if trials.empty:
        return ("note: the store has no trials; every row is 'not run' "
                "(start with: python -m dse.sweep experiment=tables)")
    counts = trials["status"].value_counts()
    return (f"{len(trials):,} trials ({', '.join(f'{v:,} {k}' for k, v in counts.items())}) from "
            f"{trials['study'].nunique()} studies")


def _table_summary(n: int, t: TableResult) -> str:
    """One line for table ``n``: rows with results, and the missing, GPU-budget and flagged rows."""
    st = t.rows["status"]
    flagged = sum(1 for f in t.flags if f)
    gpu = int((st == "gpu budget").sum())
    missing = int(((st != "ok") & (st != "gpu budget")).sum())
    return (f"Table {n}: {int((st == 'ok').sum())}/{len(st)} rows with results"
            + (f", {missing} missing (run: {t.command})" if missing else "")
            + (f", {gpu} GPU budget (run: {t.gpu_command})" if gpu else "")
            + (f", {flagged} rows flagged" if flagged else ""))


def main(argv: list[str] | None = None) -> int:
    """Write the tables, figures and report that ``argv`` asks for; returns the exit status (1: an error)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from dse.errors import DSEError

    t0 = time.perf_counter()
    try:
        opts, res = _generate(args)
    except DSEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(_trials_summary(res.data.trials))
    for n, t in res.tables.items():
        print(_table_summary(n, t))
    print(f"wrote {len(res.files)} files under {opts.out_dir}/ (report: {opts.out_dir / 'report.md'}) "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
