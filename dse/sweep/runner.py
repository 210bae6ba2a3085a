"""One worker's loop, the same in the sweep's own process and in each child of ``workers=N``.

``run_worker`` never raises for what a user can fix: it returns the exit code and the one-line errors, and the
caller prints them (a parent of several children prints each line once). ``setup_logging`` and
``setup_child_logging`` give every worker the same levels and, for a child, its index and its own log file.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any

from omegaconf import DictConfig

from dse.errors import DSEError, first_line
from dse.sweep.stop import install_raise_once

log = logging.getLogger("dse.sweep")


def run_worker(cfg: DictConfig, plan: Any, url: str, prepared: bool = False, worker: Any = None
               ) -> tuple[int, int, int, list[str], int]:
    """One worker's loop: (trained, failed, exit code, error lines, trials marked interrupted). Used in this
    process and in each child of workers=N; the caller prints the error lines (the parent of several children
    prints each only once)."""
    from dse.sweep.worker import Worker

    try:
        if worker is None:
            worker = Worker(cfg, plan, url)
            worker.open()
        if not prepared:  # prepared: the caller queued the plan and ran the checks before training
            worker.prepare()
            worker.preflight()
        r = worker.run()
        return r.trained, r.failed, 0, [], r.interrupted
    except KeyboardInterrupt:
        return (*_counts(worker), 130, [], _result(worker).interrupted)
    except DSEError as e:
        log.debug("%s", traceback.format_exc())
        return (*_counts(worker), 2, [first_line(e)], _result(worker).interrupted)


def _result(worker: Any) -> Any:
    from dse.sweep.trial import RunResult

    return getattr(worker, "result", None) or RunResult()


def _counts(worker: Any) -> tuple[int, int]:
    """(trained, failed) by this worker so far."""
    r = _result(worker)
    return r.trained, r.failed


def setup_logging(verbose: bool) -> None:
    """Hydra configured the handlers (dse/conf/hydra/job_logging); here: the levels, and Optuna's logs go through
    ours once (its own handler off, warnings only)."""
    import optuna

    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(logging.DEBUG if verbose else logging.WARNING)


def setup_child_logging(cfg: DictConfig, index: int, run_dir: str | None) -> None:
    """A spawned worker: stderr with its index, and its own log file in the run folder."""
    fmt = f"%(asctime)s [w{index}] %(levelname)s %(name)s: %(message)s"
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir:
        handlers.append(logging.FileHandler(os.path.join(run_dir, f"worker-{index}.log")))
    logging.basicConfig(level=logging.INFO, format=fmt, datefmt="%H:%M:%S", handlers=handlers, force=True)
    setup_logging(bool(cfg.verbose))
    install_raise_once()
