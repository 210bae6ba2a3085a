"""What ``dse.tables.generate`` is given: its options, and the frames read from the store once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dse.common import RESULTS
from dse.store import DEFAULT_URL, EpochRow, Store


@dataclass(frozen=True)
class Options:
    """What ``generate`` reads and writes. ``out_dir`` gets tables/, figures/ and report.md."""

    db_url: str = DEFAULT_URL
    out_dir: Path = RESULTS  # results/ of dse.common.ROOT, where the store is
    formats: tuple[str, ...] = ("md",)
    studies: tuple[str, ...] | None = None  # None: every study in the store
    paper_dir: Path | None = None  # None: dse/experiments/paper_tables next to the package
    figures: bool = True


@dataclass
class StoreData:
    """The three frames everything is built from (one query each)."""

    trials: pd.DataFrame
    deployments: pd.DataFrame
    store: Store | None = None
    all_studies: list[str] = field(default_factory=list)

    def epochs(self, trial_ids: list[int]) -> pd.DataFrame:
        if self.store is None or not trial_ids:
            return pd.DataFrame(columns=[*(c.name for c in EpochRow.__table__.columns), "study", "identity",
                                         "model_name"])
        return self.store.epochs(trial_ids=trial_ids)


__all__ = ["Options", "StoreData"]
