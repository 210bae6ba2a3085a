"""Data checks at planning, before any trial is claimed: every class has images, the split fits, and which files.

A class folder emptied by accident trains without a word otherwise (a 9-class problem scored as a 10-class one),
and a subset too small for the classes or the validation split fails each trial only once it is claimed. Here
they are one line before anything runs (0.17 s for the 60,000 JPEGs of the CIFAR-10 copy, names only).
``SourceFacts.fingerprint`` names the files of a source (an ImageFolder tree's relative file names, the official
pickles' names and sizes; not the folder's path or the files' times, so that two hosts' copies of one dataset
agree): it is recorded with every trial, and a study refuses to go on with data whose fingerprint differs from
the one its trials were trained on (dse/sweep/worker.py).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dse.errors import ConfigError

CLASS_FLOOR = 0.01  # a class with fewer images than 1 % of the mean class is a broken folder, not a rare class
PICKLE_CLASSES = {"cifar10": 10, "cifar100": 100}
PICKLE_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


@dataclass(frozen=True)
class SourceFacts:
    """What planning knows of one data source on this machine."""

    fingerprint: str
    classes: int
    train_images: int | None  # None for the official pickles (counting them means reading them)
    problem: str | None = None  # why its trials cannot run, one phrase


def source_facts(dataset: str, root: Path) -> SourceFacts:
    """The facts of the source ``dse.data`` reads for ``dataset`` under ``root`` (which holds it)."""
    from dse.data import IMAGE_EXTENSIONS

    sub = PICKLE_DIRS.get(dataset)
    if sub is not None and (root / sub).is_dir():
        return _pickle_facts(dataset, root / sub)
    if sub is not None and root.name == sub:
        return _pickle_facts(dataset, root)
    counts, h = {}, hashlib.sha256(b"dse-source/imagefolder\n")
    for split in ("train", "test"):
        counts[split] = {}
        for cdir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            with os.scandir(cdir) as it:  # names only: a stat per file costs 5x more (1.1 s for 60,000 JPEGs)
                files = sorted(e.name for e in it if e.name.lower().endswith(IMAGE_EXTENSIONS))
            counts[split][cdir.name] = len(files)
            h.update(f"{split}/{cdir.name}\n".encode() + "\n".join(files).encode() + b"\n")
    classes = sorted(counts["train"])
    return SourceFacts(h.hexdigest(), len(classes), sum(counts["train"].values()), class_problem(root, counts))


def _pickle_facts(dataset: str, folder: Path) -> SourceFacts:
    h = hashlib.sha256(f"dse-source/pickle/{dataset}\n".encode())
    for p in sorted(folder.iterdir()):
        if p.is_file():
            h.update(f"{p.name}\t{p.stat().st_size}\n".encode())
    return SourceFacts(h.hexdigest(), PICKLE_CLASSES[dataset], None)


def class_problem(root: Path, counts: dict[str, dict[str, int]]) -> str | None:
    """The first class folder (of train/ or test/) with too few images to be a class, as one phrase."""
    classes = sorted(counts["train"])
    for split in ("train", "test"):
        have = {c: counts[split].get(c, 0) for c in classes}
        mean = sum(have.values()) / max(1, len(have))
        floor = max(1.0, CLASS_FLOOR * mean)
        for c, n in have.items():
            if n < floor:
                return (f"class folder {root / split / c} has {n} images, under the floor of {floor:,.0f} "
                        f"({CLASS_FLOOR:.0%} of the mean {mean:,.0f}); restore its images, or remove the class "
                        "from train/ and test/")
    return None


def check_split(data: dict[str, Any], facts: SourceFacts) -> None:
    """ConfigError when a trial's subset cannot hold one image per class, or the source cannot hold both its
    validation split and its training subset."""
    subset_size, subset, val = data.get("subset_size"), data.get("subset"), int(data.get("val_size") or 0)
    pool = facts.train_images
    if pool is not None and val >= pool:
        raise ConfigError(f"data.val_size={val} leaves no training images: the source has {pool:,} "
                          f"(allowed: < {pool:,})")
    n = subset_size if subset_size is not None else (
        max(1, round(float(subset) * (pool - val))) if subset is not None and pool is not None else None)
    if n is None:
        return
    what = f"data.subset_size={subset_size}" if subset_size is not None else f"data.subset={subset}"
    if n < facts.classes:
        raise ConfigError(f"{what} is {n} training images for {facts.classes} classes: every class needs one; "
                          f"allowed: >= {facts.classes} images")
    if pool is not None and n + val > pool:
        raise ConfigError(f"{what} and data.val_size={val} need {n + val:,} training images; the source has "
                          f"{pool:,} (allowed: subset + val_size <= {pool:,})")
