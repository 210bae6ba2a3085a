"""Sample mode: the next trial is a point Optuna asks for, not a row the plan queued.

A point the study already has reuses its result (or is marked a duplicate), a point a constraint rejects is
finished at once, an invalid combination of the space fails that Optuna trial; none of them costs a training.
"""

from __future__ import annotations

from typing import Any

import optuna
from omegaconf import OmegaConf

from dse import store as st
from dse.errors import ConfigError
from dse.space import resolve_trial, suggest
from dse.sweep.plan import row_fields
from dse.target import check_constraints, latency_of


class Sampler:
    """Draws the next point for one worker (dse.sweep.worker.Worker: its config, plan, store, queue, record)."""

    def __init__(self, worker: Any) -> None:
        w = worker
        self.cfg, self.base, self.plan, self.store, self.queue = w.cfg, w.base, w.plan, w.store, w.queue
        self.record, self.commit = w.record, w.commit

    def next(self) -> st.TrialRow | None:
        """Ask Optuna for a new point while the study's budget lasts; the new row is claimed by this worker."""
        from dse.models import model_facts

        for _ in range(100):  # points that are duplicates or rejected by a constraint do not cost a training
            if sum(self.queue.counts().values()) >= int(self.cfg.search.n_trials):
                return None
            trial = self.record.ask()
            try:
                point = suggest(trial, OmegaConf.to_container(self.cfg.search, resolve=True))
                tcfg = resolve_trial(self.base, point, int(point.pop("seed", self.cfg.search.seeds[0])))
            except ConfigError as e:  # the space holds an invalid combination: a real failure of this point
                trial.set_user_attr("fail_reason", f"invalid configuration: {e}")
                self.record.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            facts = model_facts(tcfg.model)
            latency = latency_of([tcfg.model], self.base).get(tcfg.model)
            fields = {**row_fields(self.plan.name, tcfg, facts, self.commit, latency),
                      "optuna_trial_number": trial.number}
            row = self.queue.insert_claimed(fields)
            if row is None:
                self._duplicate(trial, tcfg.identity)
                continue
            why = check_constraints(facts, OmegaConf.to_container(self.cfg.search.constraints), latency,
                                    self.cfg.target.precision)
            if why:
                self.queue.finish(row.id, st.REJECTED, fail_reason=f"rejected by constraint: {why}")
                self.record.record(self.queue.get(row.id))
                continue
            return row
        return None

    def _duplicate(self, trial: optuna.Trial, identity: str) -> None:
        """The sampler drew a configuration the study already has: reuse its result, or mark the point."""
        row = self.store.get(self.plan.name, identity)
        if row is not None and row.status == st.COMPLETE:
            trial.set_user_attr("reused_from_store_trial", row.id)
            self.record.study.tell(trial, self.record.values(row))
        else:
            trial.set_user_attr("duplicate_of_store_trial", row.id if row else None)
            self.record.study.tell(trial, state=optuna.trial.TrialState.PRUNED)

