"""Which errors mean "the machine is at fault", at whatever layer they surface.

A full disk reaches dse in many shapes: an OSError with ENOSPC or EDQUOT, a RuntimeError from torch.save's C++
writer that lost the errno on the way ("unexpected pos ...", "basic_ios::clear: iostream error"), SQLite's
"database or disk is full" (SQLITE_FULL) inside SQLAlchemy's OperationalError, PostgreSQL's SQLSTATE 53100 on the
server. They are one fault: ``disk_full`` recognises each, ``DiskFullError`` says it in one line with the path and
the space left, and the store never retries it as an outage (waiting does not free a disk).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from dse.errors import EnvironmentFault

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
SQLITE_FULL = 13  # sqlite3.SQLITE_FULL: "database or disk is full"
PG_DISK_FULL = "53100"  # PostgreSQL's SQLSTATE disk_full
# torch.save (PyTorchStreamWriter) when a write comes up short: the errno is lost, only this text is left
TORCH_WRITE_FAILED = ("unexpected pos", "iostream error", "file write failed")
FULL_TEXT = ("no space left on device", "disk quota exceeded", "database or disk is full")


class DiskFullError(EnvironmentFault):
    """A file system (checkpoints, the data cache, the SQLite store, the database server's) has no room."""

    def __init__(self, path: str | os.PathLike | None, detail: str = "") -> None:
        self.path = None if path is None else str(path)
        self.detail = detail
        where = f": {self.path} ({free_space(self.path)} free there)" if self.path else ""
        super().__init__(f"disk full{where}{f'; {detail}' if detail else ''}; free some space and run the same "
                         "command again")

    def __reduce__(self):  # picklable across processes (sweep workers)
        return (type(self), (self.path, self.detail))


def chain(e: BaseException) -> list[BaseException]:
    """``e`` and the exceptions it was raised from or while handling, outermost first."""
    out: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and all(cur is not x for x in out):
        out.append(cur)
        orig = getattr(cur, "orig", None)  # SQLAlchemy keeps the driver's exception here
        cur = orig if isinstance(orig, BaseException) else cur.__cause__ or cur.__context__
    return out


def disk_full(e: BaseException) -> bool:
    """True when ``e`` (or what caused it) says a disk is full, at any layer."""
    for x in chain(e):
        if isinstance(x, OSError) and x.errno in FULL_ERRNOS:
            return True
        if getattr(x, "sqlite_errorcode", None) == SQLITE_FULL or getattr(x, "sqlstate", None) == PG_DISK_FULL:
            return True
        text = str(x).lower()
        if any(s in text for s in FULL_TEXT) or isinstance(x, RuntimeError) and torch_write_failed(text):
            return True
    return False


def torch_write_failed(text: str) -> bool:
    """torch.save's message for a write that came up short (its C++ writer drops the errno)."""
    low = text.lower()
    return any(s in low for s in TORCH_WRITE_FAILED)


def reason_is_disk_full(reason: str | None) -> bool:
    """A stored failure reason ("RuntimeError: [enforce fail ...] unexpected pos ...") that was a full disk: what
    older versions recorded as a trial's own failure."""
    low = (reason or "").lower()
    return any(s in low for s in FULL_TEXT) or low.startswith("runtimeerror") and torch_write_failed(low)


def free_space(path: str | os.PathLike) -> str:
    """The space left on ``path``'s file system (its nearest existing folder), e.g. "180 KB"."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return human_bytes(shutil.disk_usage(p).free)
    except OSError:
        return "unknown space"


def human_bytes(n: float) -> str:
    units = ("bytes", "KB", "MB", "GB", "TB")  # powers of 1000
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n, i = n / 1000, i + 1
    return f"{n:,.0f} bytes" if i == 0 else f"{n:,.1f} {units[i]}"


def full_path(e: BaseException) -> str | None:
    """The file an OSError in ``e``'s chain names, if any."""
    for x in chain(e):
        if isinstance(x, OSError) and x.filename:
            return str(x.filename)
    return None
