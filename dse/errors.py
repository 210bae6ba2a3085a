"""Exceptions raised by dse.

Every error dse raises on purpose derives from `DSEError`, so a caller (the sweep worker, the CLI) can tell "the
input or the data is wrong" apart from a bug. Messages are one line and name the bad value and the allowed ones.
Some classes also derive from the matching builtin (ValueError, FileNotFoundError) so generic handlers still work.
"""

from __future__ import annotations


def first_line(e: BaseException | str) -> str:
    """The first line of an error's message (messages shown to users are one line), or its type's name if empty."""
    s = str(e).strip()
    if s:
        return s.splitlines()[0]
    return type(e).__name__ if isinstance(e, BaseException) else ""


class DSEError(Exception):
    """Base class of every error dse raises on purpose."""


class ConfigError(DSEError, ValueError):
    """A configuration value is invalid (unknown name, out-of-range number); raised before any work starts."""


class DatasetNotFoundError(DSEError, FileNotFoundError):
    """The dataset is not where it was looked for and could not be downloaded."""


class CorruptDatasetError(DSEError):
    """A dataset file exists but cannot be read (bad pickle, truncated batch, undecodable image)."""


class CheckpointError(DSEError):
    """A checkpoint file is truncated, not a checkpoint, has the wrong structure or does not match its model."""


class DivergedError(DSEError):
    """Training produced a non-finite loss (NaN or inf); the trial cannot continue.

    Attributes: `epoch` (1-based epoch in which it happened) and `loss` (the offending value, as a float).
    """

    def __init__(self, epoch: int, loss: float, what: str = "training loss") -> None:
        self.epoch = int(epoch)
        self.loss = float(loss)
        self.what = what
        super().__init__(
            f"training diverged in epoch {self.epoch}: {what} is {self.loss}; "
            "lower the learning rate or use another optimizer"
        )

    def __reduce__(self):  # picklable across processes (sweep workers)
        return (type(self), (self.epoch, self.loss, self.what))


class EnvironmentFault(DSEError):
    """The machine, not the trial, is at fault: data missing or unreadable, device unavailable, checkpoint folder
    unwritable, disk full, store unreachable. The worker stops with this one line; the trial stays queued."""
