"""The paper's Tables 1-7 as data, and the rules that flag their own inconsistencies.

The numbers come from ``dse/experiments/paper_tables/table{1..7}_*.csv`` (transcribed from Duggal & El-Sharkawy
2020, section 4). Each row gets its registry name through ``dse.models.paper_spec`` (the join key with
``dse_trials.model_name``). The flags are computed by rules over those numbers and our model sizes, never by
row number, so a corrected or extended CSV is flagged afresh.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from dse.common import PAPER_TABLES
from dse.errors import ConfigError

#: Where the paper's numbers live unless told otherwise (``--paper-dir``).
DEFAULT_PAPER_DIR = PAPER_TABLES

#: Tables whose accuracies are CIFAR-100 (Table 6's caption); all others are CIFAR-10.
CIFAR100_TABLES = frozenset({6})

#: Column names used in the paper's CSVs for the per-row variables.
_OPTIONAL = ("resolution", "width", "dropout", "optimizer")

# Rule thresholds (each is one number with its reason):
#: A CIFAR-100 accuracy within this many points of (or above) the same model's CIFAR-10 accuracy is
#: implausible: CIFAR-100 has 10x the classes and 1/10 the images per class; compact CIFAR nets typically
#: lose 20+ points going from CIFAR-10 to CIFAR-100.
CIFAR100_GAP_POINTS = 10.0
#: Two rows of *different* architectures with the same size and speed and accuracies this close (points)
#: are the same measurement printed twice.
DUPLICATE_ACC_POINTS = 0.25
#: Paper size vs our checkpoint of the same architecture: beyond this ratio (either way) it is not the
#: same layout or not the same file format.
SIZE_RATIO_LIMIT = 2.0

#: Transcription facts the CSV cannot carry (the CSV holds the corrected number). Key: (table, paper model).
TRANSCRIPTION_NOTES: Mapping[tuple[int, str], str] = {
    (5, "Shallow SqueezeNext-21-0.2x-v1"):
        "size printed as '1.8.14' in the paper (typo); transcribed as 1.814, the value of Tables 1-2",
}


def _table_number(path: Path) -> int:
    m = re.match(r"table(\d+)_", path.name)
    assert m is not None
    return int(m.group(1))


def load_paper_tables(paper_dir: Path | str | None = None) -> pd.DataFrame:
    """All rows of the paper's tables, in the paper's order, with their registry names.

    Columns: table (1-7), row (0-based within its table), model (paper's name as printed), resolution,
    width, dropout, optimizer, accuracy_pct, size_mb, sec_per_epoch (and ``*_txt``: as printed), dataset
    ("cifar10"/"cifar100"), model_name (registry name), display_name (our rendering of the paper's name),
    arch, stage_depths, num_classes, spec (the ``ModelSpec``).
    """
    from dse.models import paper_spec  # imports torch: only when the tables are really built

    d = Path(paper_dir) if paper_dir is not None else DEFAULT_PAPER_DIR
    files = sorted(d.glob("table*_*.csv"), key=_table_number) if d.is_dir() else []
    if not files:
        raise ConfigError(f"no paper tables (table<N>_*.csv) in {d}; pass --paper-dir pointing at "
                          "dse/experiments/paper_tables")
    frames = []
    for f in files:
        df = pd.read_csv(f, dtype={"resolution": "string", "optimizer": "string"})
        raw = pd.read_csv(f, dtype=str, keep_default_na=False)  # numbers as printed ("89.0", not 89)
        missing = {"model", "accuracy_pct", "size_mb", "sec_per_epoch"} - set(df.columns)
        if missing:
            raise ConfigError(f"{f} lacks columns {sorted(missing)}; has {list(df.columns)}")
        for c in _OPTIONAL:
            if c not in df.columns:
                df[c] = pd.NA
        for c in ("accuracy_pct", "size_mb", "sec_per_epoch"):
            df[c + "_txt"] = raw[c].str.strip()
        n = _table_number(f)
        df.insert(0, "row", range(len(df)))
        df.insert(0, "table", n)
        frames.append(df[["table", "row", "model", *_OPTIONAL, "accuracy_pct", "size_mb", "sec_per_epoch",
                          "accuracy_pct_txt", "size_mb_txt", "sec_per_epoch_txt"]])
    paper = pd.concat(frames, ignore_index=True)
    for c in ("width", "dropout", "accuracy_pct", "size_mb", "sec_per_epoch"):
        paper[c] = pd.to_numeric(paper[c], errors="coerce").astype(float)
    for c in ("resolution", "optimizer"):
        paper[c] = paper[c].astype("object").where(paper[c].notna(), None)
    paper["dataset"] = ["cifar100" if t in CIFAR100_TABLES else "cifar10" for t in paper["table"]]
    paper["num_classes"] = [100 if ds == "cifar100" else 10 for ds in paper["dataset"]]
    specs = [paper_spec(r.model, None if pd.isna(r.resolution) else str(r.resolution),
                        None if pd.isna(r.width) else float(r.width),
                        None if pd.isna(r.dropout) else float(r.dropout), int(r.num_classes))
             for r in paper.itertuples()]
    paper["model_name"] = [s.name for s in specs]
    paper["display_name"] = [s.display_name for s in specs]
    paper["arch"] = [s.arch for s in specs]
    paper["stage_depths"] = ["-".join(map(str, s.stage_depths)) if s.stage_depths else "" for s in specs]
    paper["spec"] = specs
    paper["width"] = [s.width for s in specs]
    return paper


def _short(model: str) -> str:
    """'Shallow SqueezeNext-06-0.4x' -> '06-0.4x' (enough to name a row inside a footnote)."""
    return model.removeprefix("Shallow SqueezeNext-").removesuffix(" (baseline)")


def _tables(ts) -> str:
    ts = sorted(set(int(t) for t in ts))
    return ("Table " if len(ts) == 1 else "Tables ") + ", ".join(map(str, ts))


def paper_flags(paper: pd.DataFrame, ours_mb: Mapping[tuple[str, str], float]
                ) -> dict[tuple[int, int], list[str]]:
    """Inconsistencies of the paper's own numbers, per (table, row): a list of one-line explanations.

    ``ours_mb`` maps (model_name, dataset) to our float32 checkpoint size in MB (1e6 bytes) of that
    architecture, measured in a trial or computed by ``model_facts``.

    Rules:
      1. a CIFAR-100 accuracy equal to a CIFAR-10 accuracy printed elsewhere in the paper (a repeat);
      2. a CIFAR-100 accuracy within ``CIFAR100_GAP_POINTS`` of the same model's CIFAR-10 accuracy;
      3. a row whose size and speed equal another architecture's and whose accuracy is within
         ``DUPLICATE_ACC_POINTS`` (the same measurement under two names);
      4. size not growing with width for the same stage layout (params grow ~ width^2), with our sizes;
      5. the same architecture listed at different sizes in different tables;
      6. paper size vs our checkpoint size of that architecture off by more than ``SIZE_RATIO_LIMIT``x;
      7. transcription notes (``TRANSCRIPTION_NOTES``).
    """
    keys = zip(paper["table"], paper["row"], strict=True)
    flags: dict[tuple[int, int], list[str]] = {(int(t), int(r)): [] for t, r in keys}
    rows = list(paper.itertuples(index=False))
    c10 = [r for r in rows if r.dataset == "cifar10"]
    for r in rows:
        flags[(int(r.table), int(r.row))].extend([
            *_cifar100_flags(r, c10), *_renamed_flags(r, rows), *_width_flags(r, rows, ours_mb),
            *_other_size_flags(r, rows), *_our_size_flags(r, ours_mb), *_transcription_flags(r)])
    return flags


def _cifar100_flags(r, c10: list) -> list[str]:
    """Rules 1-2: a CIFAR-100 row's accuracy repeating, or too close to, the paper's CIFAR-10 accuracies."""
    if r.dataset != "cifar100":
        return []
    out = []
    same = [o for o in c10 if math.isclose(o.accuracy_pct, r.accuracy_pct, abs_tol=1e-9)]
    if same:
        where = "; ".join(f"Table {o.table}'s {_short(o.model)}" for o in same)
        out.append(f"CIFAR-100 accuracy {r.accuracy_pct:g} % repeats a CIFAR-10 accuracy "
                   f"printed elsewhere ({where})")
    ref = [o.accuracy_pct for o in c10 if o.model_name == r.model_name]
    if ref and r.accuracy_pct >= max(ref) - CIFAR100_GAP_POINTS:
        out.append(f"implausible for CIFAR-100: {r.accuracy_pct:g} % vs {max(ref):g} % on "
                   f"CIFAR-10 for the same model in the paper")
    return out


def _renamed_flags(r, rows: list) -> list[str]:
    """Rule 3: one flag per other architecture's row with the same size, speed and (nearly) accuracy as ``r``."""
    return [f"same numbers as {o.model} in Table {o.table} ({o.accuracy_pct:g} %, "
            f"{o.size_mb:g} MB, {o.sec_per_epoch:g} s vs {r.accuracy_pct:g} %, "
            f"{r.size_mb:g} MB, {r.sec_per_epoch:g} s): one measurement printed twice?"
            for o in rows
            if (o.model_name != r.model_name and o.dataset == r.dataset
                and math.isclose(o.size_mb, r.size_mb, abs_tol=1e-9)
                and math.isclose(o.sec_per_epoch, r.sec_per_epoch, abs_tol=1e-9)
                and abs(o.accuracy_pct - r.accuracy_pct) <= DUPLICATE_ACC_POINTS)]


def _width_flags(r, rows: list, ours_mb: Mapping[tuple[str, str], float]) -> list[str]:
    """Rule 4: one flag per wider variant of ``r``'s stage layout listed at no more MB than ``r``."""
    # size must grow with width for one layout; compare with every wider variant
    wider: dict[str, list] = {}
    for o in rows:
        if (o.arch == r.arch and o.stage_depths == r.stage_depths and o.dataset == r.dataset
                and o.width > r.width and o.size_mb <= r.size_mb):
            wider.setdefault(o.model_name, []).append(o)
    out = []
    for name, os_ in wider.items():
        o = os_[0]
        a, b = ours_mb.get((r.model_name, r.dataset)), ours_mb.get((name, r.dataset))
        ours = f"; ours: {a:.3f} vs {b:.3f} MB" if a and b else ""
        out.append(f"size does not grow with width: {r.size_mb:g} MB at {r.width:g}x but "
                   f"{_short(o.model)} ({o.width:g}x) is listed at "
                   f"{', '.join(sorted({f'{x.size_mb:g}' for x in os_}))} MB "
                   f"({_tables(x.table for x in os_)}){ours}")
    return out


def _other_size_flags(r, rows: list) -> list[str]:
    """Rule 5: a flag when ``r``'s architecture is listed at other sizes (MB) elsewhere in the paper."""
    other = [o for o in rows if o.model_name == r.model_name and o.dataset == r.dataset
             and not math.isclose(o.size_mb, r.size_mb, abs_tol=1e-9)]
    if not other:
        return []
    sizes = sorted({o.size_mb for o in other})
    why = ""
    if not pd.isna(r.optimizer) and any(not pd.isna(o.optimizer) and o.optimizer != r.optimizer
                                        for o in other):
        why = (" (those rows differ by optimizer: consistent with checkpoints that include the "
               "optimizer's per-weight state, e.g. 2 buffers for Adam-like, 1 for SGD momentum)")
    return [f"same architecture listed at {', '.join(f'{s:g}' for s in sizes)} MB in "
            f"{_tables(o.table for o in other)}{why}"]


def _our_size_flags(r, ours_mb: Mapping[tuple[str, str], float]) -> list[str]:
    """Rule 6: a flag when ``r``'s size is over ``SIZE_RATIO_LIMIT``x off our checkpoint of that architecture."""
    mb = ours_mb.get((r.model_name, r.dataset))
    if not (mb and r.size_mb > 0):
        return []
    ratio = r.size_mb / mb
    if ratio > SIZE_RATIO_LIMIT or ratio < 1 / SIZE_RATIO_LIMIT:
        return [f"paper size {r.size_mb:g} MB is {ratio:.2f}x our float32 checkpoint "
                f"({mb:.3f} MB) of {r.model_name}"]
    return []


def _transcription_flags(r) -> list[str]:
    """Rule 7: ``r``'s transcription note, if it has one."""
    note = TRANSCRIPTION_NOTES.get((int(r.table), str(r.model)))
    return [note] if note else []
