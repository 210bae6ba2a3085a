"""One worker: claim a trial, train it under a lease, settle it, record it; until the study has nothing left.

Failures come in two classes. A trial's own failure (divergence, out of memory for that configuration, a bug
its configuration hits) is FAILED with its reason and the worker goes on. A failure of the environment (data
missing or unreadable, device unavailable, checkpoint folder unwritable, disk full, store unreachable) would
fail every trial the same way: the worker puts the trial back in the queue, untouched, and stops with one line,
so that fixing the cause and running the same command again carries on where it stopped.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dse import store as st
from dse.common import ROOT, git_commit
from dse.errors import EnvironmentFault
from dse.faults import reason_is_disk_full
from dse.sweep.plan import StudyPlan, row_fields
from dse.sweep.progress import StudyProgress
from dse.sweep.queue import Queue
from dse.sweep.record import Record
from dse.sweep.sampler import Sampler
from dse.sweep.stop import StopRequest
from dse.sweep.trial import RunResult, TrialRun
from dse.sweep.tune import CachedEstimates

log = logging.getLogger("dse.sweep")


class Worker:
    """One worker of a study: opens the store, queues the plan (prepare), checks the machine (preflight), then
    claims and trains trials (TrialRun) until the study has none left for it."""

    def __init__(self, cfg: DictConfig, plan: StudyPlan, url: str) -> None:
        self.cfg, self.plan, self.url = cfg, plan, url
        self.base: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        # trials whose data this machine lacks stay queued for a machine that has it
        self.only = set(plan.runnable_identities()) if plan.mode == "grid" and plan.missing_data else None
        self.result = RunResult()
        self.commit = git_commit()
        self.stop = StopRequest()

    def open(self) -> None:
        """Open (and create, one worker at a time) our tables and the Optuna study."""
        s = self.cfg.storage

        def create() -> st.Store:
            with st.schema_lock(self.url):
                return st.Store(self.url, retries=int(s.retries), backoff=float(s.backoff))

        self.store = st.with_retries(create, what="opening the results store", retries=int(s.retries),
                                     backoff=float(s.backoff), url=self.url)
        self.queue = Queue(self.store, self.plan.name, float(s.grace_period))
        self.record = Record(self.cfg, self.plan, self.url, self.queue)
        self.record.open()

    def prepare(self) -> int:
        """Queue the plan's trials that are not in the store yet (rejected ones are finished at once), re-queue
        failed ones when asked, re-queue expired leases; how many trials were newly queued."""
        self.check_data_unchanged()
        rows = []
        for p in self.plan.runnable:
            rows.append({**row_fields(self.plan.name, p.trial, p.facts, self.commit, p.latency),
                         "queued_at": st.utc_now(),
                         **({"status": st.REJECTED, "fail_reason": f"rejected by constraint: {p.rejected}",
                             "finished_at": st.utc_now()} if p.rejected else {"status": st.QUEUED})})
        new = self.store.insert_missing(rows)
        if self.cfg.retry_failed:
            n = self.queue.retry_failed()
            log.info("retry_failed=true: %d failed trial%s re-queued", n, "s" * (n != 1))
        self.requeue_misread()
        self.queue.requeue_expired()
        self.record.enter_waiting()  # grid: the queue as WAITING trials in optuna-dashboard, numbered
        self.record.record_pending()
        return new

    def check_data_unchanged(self) -> None:
        """Refuse to go on with data other than the data the study's trials were trained on (files added, removed
        or renamed since): their results and the new ones would not compare. Trials of older versions (no
        fingerprint) are not checked."""
        now = {key[0]: (f.fingerprint, key[1]) for key, f in self.plan.sources.items()}
        stale = [r for r in self.store.rows(self.plan.name)
                 if r.data_fingerprint and r.dataset in now and r.data_fingerprint != now[r.dataset][0]]
        if stale:
            fp, root = now[stale[0].dataset]
            n = len(stale)
            raise EnvironmentFault(
                f"data: {stale[0].dataset} at {root or 'the default root'} is not the data {n} trial{'s' * (n != 1)} "
                f"of study {self.plan.name} were trained on (files added, removed or renamed since: fingerprint "
                f"{fp[:12]}, theirs {stale[0].data_fingerprint[:12]}); restore it, or start a new study "
                "(study.name=...)")

    def requeue_misread(self) -> None:
        """Trials that older versions failed for a full disk (e.g. torch.save's "unexpected pos") never failed
        themselves: back to the queue, before their result is recorded in Optuna as a FAIL."""
        ids = [r.id for r in self.queue.failed() if reason_is_disk_full(r.fail_reason)]
        n = self.queue.requeue_failed(ids, "re-queued: its failure was a full disk, not the trial's own")
        if n:
            log.info("%d trial%s that failed for a full disk re-queued (a fault of the machine, not of the trial)",
                     n, "s" * (n != 1))

    def preflight(self) -> None:
        """Checks that would otherwise fail the first trial: the device exists, the checkpoint folder is writable."""
        dev = str(self.cfg.trainer.device)
        if dev.startswith("cuda"):
            import torch

            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            idx = int(dev.split(":")[1]) if ":" in dev else 0
            if idx >= n:
                have = f"{n} GPU{'s' * (n != 1)}" + (f" (cuda:0..cuda:{n - 1})" if n else "")
                raise EnvironmentFault(f"trainer.device={dev} is not available: this machine has {have}")
        folder = self.checkpoint_root()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
                pass
        except OSError as e:
            raise EnvironmentFault(f"checkpoint folder {folder} is not writable ({e.strerror or e}); set "
                                   "study.checkpoint_dir=... to a writable folder") from None

    def checkpoint_root(self) -> Path:
        root = Path(self.cfg.study.checkpoint_dir).expanduser()
        return (root if root.is_absolute() else ROOT / root) / self.plan.name

    # -- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Train trials until the study has none left for this worker (or max_trials)."""
        max_trials = self.cfg.max_trials
        total = len(self.plan.runnable_identities()) if self.plan.mode == "grid" else int(self.cfg.search.n_trials)
        self.progress = progress = StudyProgress(self.queue, total, int(self.cfg.workers),
                                                 str(self.cfg.trainer.progress), estimate_of=CachedEstimates(self.base))
        self.stop.install()  # SIGINT/SIGTERM: stop at the next safe point (dse/sweep/stop.py)
        try:
            self._loop(max_trials, progress)
        finally:
            self.stop.restore()
            progress.close()
        self.record.record_pending()
        return self.result

    def _loop(self, max_trials: int | None, progress: StudyProgress) -> None:
        while max_trials is None or self.result.trained < max_trials:
            self.stop.check()
            row = self.next_trial()
            if row is not None:
                t0 = time.monotonic()
                TrialRun(self).run(row)
                progress.trial_done(row, time.monotonic() - t0)
            elif not self.cfg.study.wait_for_running or self.queue.unfinished(self.only) == 0:
                break
            else:  # others' trials are running: wait, so that a lost worker's trial is retried
                self._wait(float(self.cfg.study.poll_seconds))

    def _wait(self, seconds: float) -> None:
        """Sleep ``seconds``, in slices of 0.2 s so that a stop request is acted on without the whole wait."""
        end = time.monotonic() + seconds
        while not self.stop.requested and time.monotonic() < end:
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))

    def next_trial(self) -> st.TrialRow | None:
        self.queue.requeue_expired()
        row = self.queue.claim(self.only)
        if row is None and self.plan.mode == "sample":
            row = Sampler(self).next()
        return row
