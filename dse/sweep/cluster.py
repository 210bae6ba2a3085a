"""Hydra's submitit launcher on SLURM: what is checked on the submitting host before any job is submitted.

``python -m dse.sweep -m hydra/launcher=submitit_slurm replica='range(N)' ...`` submits N copies of the worker
as SLURM jobs; each runs on some node and joins one study. A store those nodes cannot share, or no store URL at
all, would fail every job on its node, minutes later and N times over; without ``sbatch`` nothing can be submitted
at all. So these are said once, in one line, before submitting (a Hydra callback, registered in
``conf/config.yaml``; it does nothing for other launchers). Hydra turns a callback's exceptions into warnings
and carries on, so the callback prints the line itself and stops the command with SystemExit(2), which Hydra
lets through.
"""

from __future__ import annotations

import shutil
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


class SubmitChecks(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.launcher.get("_target_") != SLURM_LAUNCHER:
            return
        from dse.errors import DSEError

        try:
            check_slurm_submit(config)
        except DSEError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None


def check_slurm_submit(cfg: DictConfig) -> None:
    """Raise (one line) unless the jobs get a store every node shares and this host can submit them."""
    from sqlalchemy.engine import make_url

    from dse.errors import ConfigError, EnvironmentFault
    from dse.store import redact
    from dse.sweep.cli import store_url

    url = store_url(cfg)  # no URL for storage=postgres, or a malformed one: resolve_url's own line
    if make_url(url).get_backend_name() == "sqlite":  # file locks over a network filesystem are unreliable
        raise ConfigError(f"hydra/launcher=submitit_slurm with the SQLite store {redact(url)}: SLURM jobs on several "
                          "nodes share one study only through PostgreSQL; use storage=postgres and "
                          "$DSE_STORAGE_URL=postgresql+psycopg://user@host/db")
    if shutil.which("sbatch") is None:
        raise EnvironmentFault("hydra/launcher=submitit_slurm submits its jobs with SLURM's sbatch, which is not on "
                               "PATH here: run the command on a host of the cluster (a login node)")
