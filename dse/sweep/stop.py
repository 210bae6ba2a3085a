"""Stopping a worker on SIGINT or SIGTERM at a safe point.

A signal that arrives while a trial trains stops it at once (KeyboardInterrupt): its checkpoints are written
atomically, so the trial loses at most the epoch in progress, and the worker marks it interrupted. A signal that
arrives anywhere else (claiming a trial, finishing one, recording it in Optuna) only raises a flag: cutting such a
store write in half would leave a trial running until its lease ran out, or finished but not recorded. The loop
reads the flag before it claims the next trial. Later signals are ignored while the first one is being handled,
so that a Ctrl-C in a terminal (which signals every process of the group) plus the parent's forwarded signal do
not cut the worker's own clean-up short.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """The first SIGINT/SIGTERM this process received, and whether a trial is training now."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._training = False
        self._saved: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        for s in SIGNALS:
            self._saved[s] = signal.signal(s, self._handle)

    def restore(self) -> None:
        """The handlers from before ``install``; once a signal came, later ones are ignored instead (the worker
        is on its way out, and a second signal must not cut its last store writes short)."""
        for s, handler in self._saved.items():
            signal.signal(s, signal.SIG_IGN if self.requested else handler)
        self._saved.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:  # already stopping: let the clean-up finish
            return
        self.signum = signum
        if self._training:
            raise KeyboardInterrupt

    def check(self) -> None:
        """A safe point: stop here if a signal came."""
        if self.requested:
            raise KeyboardInterrupt

    @contextmanager
    def training(self) -> Iterator[None]:
        """While the block runs, a signal interrupts it at once."""
        self.check()
        self._training = True
        try:
            yield
        finally:
            self._training = False


def raise_once(_signum: int, _frame: Any) -> None:
    """Outside a worker's loop (planning, opening the store): the first SIGINT/SIGTERM stops like Ctrl-C, later
    ones are ignored so that the clean-up after the first one runs to its end."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    raise KeyboardInterrupt


def install_raise_once() -> None:
    for s in SIGNALS:
        signal.signal(s, raise_once)


def interrupted_line(n: int | None) -> str:
    """What a stop by Ctrl-C/SIGINT/SIGTERM did: ``n`` running trials marked interrupted (None: before any
    worker started)."""
    if n is None:
        return "interrupted before any trial started; the next run carries on"
    if n == 0:
        return "interrupted: no trial was running; nothing finished is lost, the next run carries on"
    return (f"interrupted: {n} running trial{'s' * (n != 1)} marked 'interrupted'; the next run resumes "
            f"{'them' if n != 1 else 'it'} from {'their' if n != 1 else 'its'} last epoch checkpoint; nothing "
            "finished is lost")
