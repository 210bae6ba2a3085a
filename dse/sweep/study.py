"""Run one study on this host: open it, queue the plan, fit the study to the machine, train, summarise.

One worker trains in this process, or ``workers=N`` children do (dse/sweep/launch.py); either way each runs
``dse.sweep.runner.run_worker``. The command line (dse/sweep/cli.py) hands over here once the config is checked
and the plan made.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dse import store as st
from dse.common import pareto_front
from dse.sweep.launch import launch
from dse.sweep.runner import run_worker
from dse.sweep.stop import interrupted_line
from dse.sweep.tune import tune_study
from dse.sweep.worker import Worker

log = logging.getLogger("dse.sweep")


def run_study(cfg: DictConfig, plan: Any, url: str) -> int:
    """Open the study, queue the plan, run the workers here (one in this process, or ``workers`` children).
    The checks before training (``Worker.preflight``) run once, here: the workers are started prepared."""
    worker = Worker(cfg, plan, url)
    worker.open()
    new = worker.prepare()
    counts = worker.queue.counts()
    log.info("study %s in %s: %d newly queued; %s", plan.name, st.redact(url), new,
             ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "empty")
    worker.preflight()  # a bad device or folder is said once, before any calibration, training or child
    if worker.queue.waiting():
        tune_study(cfg, worker.queue, worker.base, worker.only)  # workers=auto, auto settings, the estimate
    if cfg.workers == "auto":  # nothing waits here: this process only waits for others' running trials
        cfg.workers = 1
    worker.base = OmegaConf.to_container(cfg, resolve=True)  # the threads just decided
    if int(cfg.workers) > 1:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else None
        trained, failed, rc, errors, interrupted = launch(cfg, plan, url, run_dir)
    else:
        trained, failed, rc, errors, interrupted = run_worker(cfg, plan, url, prepared=True, worker=worker)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    if rc == 130:
        print(f"\n{interrupted_line(interrupted)}", file=sys.stderr)
    if rc in (2, 130):  # its one line is the last thing printed
        return rc
    summary(worker.queue, url, trained, failed)
    return 1 if rc == 0 and failed else rc


def summary(queue: Any, url: str, trained: int, failed: int) -> None:
    """The one-line result of the run, then the study's best trial and front."""
    counts = queue.counts()
    print(f"\nstudy {queue.study}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) +
          f"; trained by this worker: {trained}" + (f"; failed in this run: {failed}" if failed else ""))
    df = queue.store.trials(queue.study, status=st.COMPLETE)
    if len(df):
        best = df.loc[df["best_val_acc"].idxmax()]
        front = pareto_front(df["best_val_acc"].tolist(), df["checkpoint_bytes"].tolist())
        print(f"best so far: {best['model_name']} seed {best['seed']}: val {best['best_val_acc']:.2f} %, test "
              f"{best['test_acc']:.2f} %, {best['checkpoint_bytes'] / 1e6:.3f} MB; Pareto front (val acc up, "
              f"checkpoint size down): {len(front)} trials")
    print(f"store: {st.redact(url)}  (tables: python -m dse.tables; dashboard: optuna-dashboard {st.redact(url)})")
