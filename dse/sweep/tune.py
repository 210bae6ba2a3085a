"""Fit a study to the machine at hand before its first trial: workers x threads, `auto` settings, the estimate.

Run once by the command's main process, after planning and before any worker starts:

1. ``workers=auto``: on a CPU the number of worker processes and threads each that trains the most images per
   second side by side (dse.autotune.choose_workers); on CUDA one worker per visible GPU.
2. ``trainer.precision=auto`` / ``channels_last=auto`` / ``fast_path=auto``: decided per cost class of the queued
   architectures by probes run side by side on as many processes as the study has workers (dse.autotune.Tuner),
   and every architecture's first run with its choice made in a probe process (its calibration, also when
   study.estimate=false): a setting that crashes an architecture is replaced for it before a trial runs it.
3. The estimate: every queued architecture calibrated with the settings it will run (cached per machine), each
   trial's time packed onto the workers longest-first (dse.calibrate), printed before training. Calibrations
   cached over 10 minutes ago follow the host's speed now (host_speed: one architecture trained again).

Every step prints a line as it goes (a probe per cost class, a calibration per architecture), so the command
shows progress within seconds. The decisions land in the on-disk cache, where every worker finds them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from typing import Any

from omegaconf import DictConfig

from dse import autotune
from dse.calibrate import lpt_makespan, trial_images
from dse.errors import first_line
from dse.sweep.progress import fmt_duration

log = logging.getLogger("dse.sweep")

STALE_AFTER_S = 600  # a calibration measured over 10 minutes before this command is checked against the host now
DRIFT = 1.15  # a host over 15 % faster or slower than at calibration time rescales the old calibrations


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def tune_study(cfg: DictConfig, queue: Any, base: dict[str, Any], only: set[str] | None = None) -> float | None:
    """Decide ``workers`` and ``trainer.threads`` in `cfg` (in place) and the `auto` settings of the waiting
    trials; return the estimated wall time in seconds (None when study.estimate=false or nothing waits)."""
    configs = waiting_configs(queue, base, only)
    t0 = time.perf_counter()
    tuner = settle_workers(cfg, configs)
    workers, threads = int(cfg.workers), int(cfg.trainer.threads or max(1, usable_cores() // int(cfg.workers)))
    items = autotune.items_of(configs, threads)
    need = cfg.study.estimate or any(autotune.is_auto(it.train) for it in items)
    if not configs or not need:
        if tuner is not None:
            tuner.close()
        return None
    tuner = tuner or autotune.Tuner(workers, threads, say=log.info)
    try:
        resolved = tuner.resolve_all(items)
        if not cfg.study.estimate:  # still: each architecture's first run with a non-SAFE choice, crash-safe
            tuner.check_all(resolved)
            return None
        cals = tuner.calibrate_all(resolved)  # replaces a choice that crashes an architecture in `resolved`
        cals = host_speed(tuner, items, resolved, cals)
    except Exception as e:  # noqa: BLE001 - the probe is a courtesy: the trials say the real error themselves
        log.warning("no settings probe or estimate: %s", first_line(e))
        return None
    finally:
        tuner.close()
    seconds = estimate(configs, items, resolved, cals, workers)
    log.info("estimated wall time: %s for %d trials on %d worker%s x %d thread%s (probes and calibration took "
             "%.0f s; cached per machine)", fmt_duration(seconds), len(configs), workers, "s" * (workers != 1),
             threads, "s" * (threads != 1), time.perf_counter() - t0)
    return seconds


def waiting_configs(queue: Any, base: dict[str, Any], only: set[str] | None) -> list[Any]:
    """The waiting trials' configs with this machine's settings (data root, device, threads)."""
    from dse.space import TrialConfig

    rows = [r for r in queue.waiting() if only is None or r.identity in only]
    return [TrialConfig.from_dict(json.loads(r.config_json)).on_this_machine(base["data"], base["trainer"])
            for r in rows]


def settle_workers(cfg: DictConfig, configs: list[Any]) -> autotune.Tuner | None:
    """Replace workers=auto (and threads=null) in `cfg` by numbers; the probe pool of the winner, if any."""
    import torch

    from dse.train import resolve_device

    cores, tuner = usable_cores(), None
    if cfg.workers == "auto":
        device = resolve_device(str(cfg.trainer.device))
        if device.type == "cuda":
            workers = torch.cuda.device_count()
            threads = max(1, cores // workers)
            log.info("workers=auto: %d worker%s, one per visible GPU, %d thread%s each", workers,
                     "s" * (workers != 1), threads, "s" * (threads != 1))
        else:
            workers, threads, tuner = autotune.choose_workers(autotune.items_of(configs, None), cores, log.info)
        cfg.workers = workers
        if cfg.trainer.threads is None:
            cfg.trainer.threads = threads
    return tuner


def host_speed(tuner: autotune.Tuner, items: list[autotune.Item], resolved: dict, cals: dict) -> dict:
    """`cals` with the ones measured long ago (STALE_AFTER_S) rescaled to the host's speed now, when it moved by
    more than DRIFT: the study's typical stale architecture trained again with its settings on every probe
    process side by side (as it was calibrated), the mean against its cached rate. The shared 2-core host
    trained one architecture with the same settings 1.8x slower 50 minutes after calibrating it (AMD EPYC
    family 26 model 2, 2026-12-02), and the estimate built on the old calibration was 92 % short."""
    now = time.time()
    stale = {it for it in items if it in cals and now - cals[it].measured_unix > STALE_AFTER_S}
    if not stale:
        return cals
    rep = autotune.typical(sorted(stale, key=lambda it: it.macs))
    job = autotune.job_for(autotune.Item(rep.spec, rep.optim, resolved[rep]))
    runs = tuner.pool.run([replace(job, key=str(i)) for i in range(tuner.processes)]).values()
    rates = [r["train_img_per_s"] for r in runs if r.get("ok")]
    if not rates:
        return cals
    factor = sum(rates) / len(rates) / cals[rep].train_img_per_s
    said = (f"host speed check: {rep.spec.display_name} trains at {factor:.2f}x its calibration of "
            f"{(now - cals[rep].measured_unix) / 60:.0f} min ago")
    if 1 / DRIFT <= factor <= DRIFT:
        log.info("%s: calibrations kept", said)
        return cals
    log.info("%s: the %d calibrations older than %.0f min are scaled by it for this estimate", said, len(stale),
             STALE_AFTER_S / 60)
    return {it: c.scaled(factor) if it in stale else c for it, c in cals.items()}


def estimate(configs: list[Any], items: list[autotune.Item], resolved: dict, cals: dict, workers: int) -> float:
    """Seconds until the last trial finishes: each trial's calibrated time, packed longest-first."""
    durations = []
    for tc, it in zip(configs, items, strict=True):
        c = cals.get(it)
        if c is None:
            continue  # not measurable here: the trial will say why
        n_train, n_eval = trial_images(tc.data)
        durations.append(c.trial_seconds(int(resolved[it].epochs), n_train, n_eval))
    return lpt_makespan(durations, workers) if durations else 0.0


class CachedEstimates:
    """A trial row's calibrated seconds on this machine from the on-disk caches only (never measures), for the
    study progress's ETA; None when a decision or calibration is missing. Memoized per identity."""

    def __init__(self, base: dict[str, Any]) -> None:
        self.base, self.memo = base, {}

    def __call__(self, row: Any) -> float | None:
        if row.identity not in self.memo:
            self.memo[row.identity] = self._seconds(row)
        return self.memo[row.identity]

    def _seconds(self, row: Any) -> float | None:
        from dse import calibrate as cal
        from dse.space import TrialConfig

        try:
            tc = TrialConfig.from_dict(json.loads(row.config_json)).on_this_machine(self.base["data"],
                                                                                      self.base["trainer"])
            threads = self.base["trainer"].get("threads") or max(1, usable_cores() // max(1, int(
                self.base.get("workers") or 1)))
            item = autotune.items_of([tc], threads)[0]
            choice = autotune.decided(item) if autotune.is_auto(item.train) else None
            train = autotune.finalize(item, choice)
            if autotune.is_auto(train):
                return None
            c = cal.load_cached(cal.calibration_key(item.spec, train, item.optim))
        except Exception:  # noqa: BLE001 - an ETA is a courtesy; the pace-based one takes over
            return None
        if c is None:
            return None
        n_train, n_eval = trial_images(tc.data)
        return c.trial_seconds(int(train.epochs), n_train, n_eval)
