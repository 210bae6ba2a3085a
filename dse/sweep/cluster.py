"""Hydra's submitit launcher on SLURM: checks on the submitting host before anything is submitted, and the jobs'
exit codes brought back to it.

``python -m dse.sweep -m hydra/launcher=submitit_slurm replica='range(N)' ...`` submits N copies of the worker
as SLURM jobs; each runs on some node and joins one study. A store those nodes cannot share, or no store URL at
all, would fail every job on its node, minutes later and N times over; without ``sbatch`` nothing can be submitted
at all. So these are said once, in one line, before submitting. Afterwards the submitting command exits with the
worst exit code of its jobs, as a local ``-m`` does (0 done, 1 a trial failed, 2 could not run, 130 interrupted):
each job writes its code into its run folder (``<sweep dir>/<job number>/exit_code``) on its node, and the
submitting host reads them once all have ended.

A Hydra callback (registered in ``dse/conf/config.yaml``; it does nothing for other launchers). Hydra turns a
callback's exceptions into warnings and carries on, so the callback prints its line itself and stops the command
with SystemExit, which Hydra lets through.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
EXIT_FILE = "exit_code"


class SlurmJobs(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """On the submitting host, before submitting: the store and sbatch, one line and exit 2 when wrong."""
        if not on_slurm(config):
            return
        from dse.errors import DSEError

        try:
            check_slurm_submit(config)
        except DSEError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        for old in sweep_dir(config).glob(f"*/{EXIT_FILE}"):  # a reused hydra.sweep.dir: only this run's codes
            old.unlink()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """On the job's node: its exit code (what dse.sweep.cli's job returned) into its run folder."""
        if not on_slurm(config):
            return
        from dse.common import atomic_write

        code = job_return.return_value if job_return.status == JobStatus.COMPLETED else 2
        atomic_write(Path(config.hydra.runtime.output_dir) / EXIT_FILE, f"{code or 0}\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """On the submitting host, every job ended: exit with the worst code, naming the jobs that gave it."""
        if not on_slurm(config):
            return
        folder = sweep_dir(config)
        codes = {f.parent.name: int(f.read_text()) for f in sorted(folder.glob(f"*/{EXIT_FILE}"))}
        bad = {job: code for job, code in codes.items() if code}
        if bad:
            jobs = ", ".join(f"job {job} exited {code}" for job, code in bad.items())
            print(f"error: {len(bad)} of {len(codes)} SLURM jobs did not finish cleanly ({jobs}); their output: "
                  f"{folder}/.submitit/*/", file=sys.stderr)
            raise SystemExit(max(bad.values()))


def on_slurm(config: DictConfig) -> bool:
    return config.hydra.launcher.get("_target_") == SLURM_LAUNCHER


def sweep_dir(config: DictConfig) -> Path:
    return Path(str(config.hydra.sweep.dir))


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
