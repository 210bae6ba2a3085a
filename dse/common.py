"""The few facts and helpers every part of dse shares: the repository root, the cache folder, the checkout's commit,
atomic file writing, the Pareto front.

One definition each, so that the sweep summary, the tables, the figures and ``dse.deploy --pareto`` agree on
which trials are on the front, and every generated file is written the same way (temp file + fsync + rename,
mode 0644 under the usual umask: readable by the rest of a team sharing a results folder).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from dse.errors import first_line

PACKAGE = Path(__file__).resolve().parent  # dse/: the code and what ships with it (conf/, experiments/)
CONF_DIR = PACKAGE / "conf"  # the config groups Hydra composes
EXPERIMENTS_DIR = PACKAGE / "experiments"  # one YAML per experiment (the search space of a study)
PAPER_TABLES = EXPERIMENTS_DIR / "paper_tables"  # the paper's Tables 1-7 as CSV (table<N>_<topic>.csv)


def _root() -> Path:
    """Where a study's relative paths (results/, data/) are taken from: $DSE_ROOT, else the checkout when dse runs
    from one (pip install -e .), else the current folder (a non-editable install, like Hydra's outputs/)."""
    if os.environ.get("DSE_ROOT"):
        return Path(os.environ["DSE_ROOT"]).expanduser().resolve()
    checkout = PACKAGE.parent
    return checkout if (checkout / "pyproject.toml").is_file() else Path.cwd().resolve()


ROOT = _root()
RESULTS = ROOT / "results"  # stores, checkpoints, runs, tables, deployments: paths inside it are kept relative


def results_relative(path: str | os.PathLike) -> str:
    """How the store and the reports keep a path: relative to results/ when inside it (so that the folder can be
    moved or copied to another checkout), else absolute."""
    p = Path(path).resolve()
    try:
        return p.relative_to(RESULTS.resolve()).as_posix()
    except ValueError:
        return str(p)


def results_path(stored: str | os.PathLike) -> Path:
    """The file a stored path names: absolute as it is, relative to results/ (or, as older versions wrote, to the
    checkout) otherwise."""
    p = Path(stored)
    if p.is_absolute():
        return p
    return RESULTS / p if (RESULTS / p).exists() or not (ROOT / p).exists() else ROOT / p


def cache_root(explicit: str | os.PathLike | None = None) -> Path:
    """The cache folder (decoded datasets, model facts, settings probes, calibrations): `explicit`, else
    $DSE_CACHE_DIR, else ~/.cache/dse."""
    return Path(explicit or os.environ.get("DSE_CACHE_DIR") or Path.home() / ".cache" / "dse").expanduser()


def git_commit() -> str | None:
    """The checkout's commit (+dirty when tracked files changed), recorded with every trial and in the report;
    None outside a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(PACKAGE.parent), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(PACKAGE.parent), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def chance_percent(num_classes: int) -> float:
    """Top-1 accuracy of guessing among `num_classes` classes, percent (10 % on CIFAR-10, 1 % on CIFAR-100)."""
    return 100.0 / num_classes


def near_chance(acc: float, num_classes: int, points: float) -> bool:
    """True when `acc` (percent) is at most `points` above guessing: the model did not learn (the tables mark
    such rows, dse.deploy refuses such models unless forced; each with its own margin)."""
    return acc <= chance_percent(num_classes) + points


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path beside ``path``; renamed onto ``path`` when the block succeeds, removed otherwise.

    Readers never see half a file. mkstemp creates files 0600; the result gets 0666 & ~umask (0644 usually).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:  # the bytes reach the disk before the rename makes them visible
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


_JSON_CACHE_LOCK = threading.Lock()


def read_json_cache(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON cache file's entries; {} when it is missing or unreadable (a cache is only ever a shortcut)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_json_cache(path: str | os.PathLike, entries: dict[str, Any]) -> None:
    """Merge ``entries`` into a JSON cache file (atomic replace; a lost race between processes only loses an
    entry, and a read-only cache folder only means computing again)."""
    with _JSON_CACHE_LOCK:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, json.dumps({**read_json_cache(path), **entries}))
        except OSError:
            pass


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically (checkpoints, data caches)."""
    import torch

    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:
            from dse.faults import torch_write_failed

            if not torch_write_failed(str(e)):
                raise
            # torch's C++ writer drops the errno of a short write (a full disk, a quota): give it back, with the path
            raise OSError(errno.ENOSPC, f"torch.save could not write ({first_line(e)})",
                          str(path)) from e


def progress_every(seconds: float, logger: logging.Logger, what: str) -> Callable[[int, int], None]:
    """A progress callback ``tick(done, total)`` for work that may be slow: it logs "<what>: done of total" at most
    every ``seconds``, and the last one only when it logged before (quick work says nothing)."""
    last, said = time.monotonic(), False

    def tick(done: int, total: int) -> None:
        nonlocal last, said
        now = time.monotonic()
        if now - last >= seconds or (done == total and said):
            last, said = now, True
            logger.info("%s: %d of %d", what, done, total)

    return tick


def pareto_front(acc: Sequence[float | None], size: Sequence[float | None]) -> list[int]:
    """Indices of the trials on the accuracy/size Pareto front, smallest first.

    The one definition used everywhere: validation accuracy up, checkpoint size down. A trial is on the front
    when no other trial is at least as accurate and at most as large, better in one of the two. Of exact ties
    (same accuracy, same size) the first is kept. A missing size counts as the largest, a missing accuracy as
    the lowest.
    """
    def a(i: int) -> float:
        return -math.inf if acc[i] is None or math.isnan(acc[i]) else float(acc[i])

    def s(i: int) -> float:
        return math.inf if size[i] is None or math.isnan(size[i]) else float(size[i])

    order = sorted(range(len(acc)), key=lambda i: (s(i), -a(i), i))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if a(i) > best:
            front.append(i)
            best = a(i)
    return front
