"""``python -m dse.models --table`` (every paper model: our size next to the paper's) or ``--list [pattern]``.

Bad names or patterns print one line to stderr and exit 2.
"""

from __future__ import annotations

import argparse
import sys

from dse.models.facts import MB, model_facts
from dse.models.registry import PAPER_ROWS, InvalidModelConfig, list_models, spec_from_name


def paper_table() -> str:
    """Markdown table: one line per distinct paper spec, the paper's sizes listed (in table order)."""
    sizes: dict = {}
    for row in PAPER_ROWS:
        tables, values = sizes.setdefault(row.spec.replace(dropout=None), ([], []))
        if row.table not in tables:
            tables.append(row.table)
        if row.size_mb not in values:
            values.append(row.size_mb)
    head = (
        "| name | display name | stage depths | width | params | MACs (M) | ours MB | paper MB | ours/paper "
        "| tables |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for spec, (tables, values) in sizes.items():
        f = model_facts(spec)
        ours = f.checkpoint_bytes / MB
        depths = "-".join(map(str, spec.stage_depths)) if spec.stage_depths else "-"
        ratios = ", ".join(f"{ours / v:.2f}" for v in values)
        paper = ", ".join(f"{v:g}" for v in values)
        lines.append(
            f"| {spec.name} | {spec.display_name} | {depths} | {spec.width:g} | {f.params:,} | "
            f"{f.macs / 1e6:.1f} | {ours:.3f} | {paper} | {ratios} | {','.join(t[5:] for t in tables)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dse.models", description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument(
        "--table", action="store_true", help="paper models: ours vs the paper's sizes (1 MB = 1e6 B)"
    )
    g.add_argument(
        "--list", nargs="?", const="*", metavar="PATTERN", help="registered names (fnmatch pattern)"
    )
    g.add_argument("--show", metavar="NAME", help="spec and facts of one name (any valid name)")
    args = ap.parse_args(argv)
    if args.table:
        print(paper_table())
        return 0
    if args.list is not None:
        names = list_models(args.list)
        if not names:
            print(f"error: no registered model matches {args.list!r}", file=sys.stderr)
            return 2
        print("\n".join(names))
        return 0
    try:
        spec = spec_from_name(args.show)
    except InvalidModelConfig as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    f = model_facts(spec)
    print(
        f"{spec.name}  {spec.display_name}  {spec.to_dict()}  params={f.params:,}  MACs={f.macs:,}  "
        f"checkpoint={f.checkpoint_bytes:,} B  int8 flash={f.flash_bytes:,} B  peak activations={f.ram_bytes_int8:,} B "
        f"int8 / {f.ram_bytes_fp32:,} B fp32 (one image)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
