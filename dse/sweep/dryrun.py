"""``dry_run=true``: what a study would train, summarised per block, with its cost when this machine knows it.

Nothing is trained or stored. A paper-sized plan has hundreds of trials, so the default is one line per block
(trials, how many a constraint rejects, the range of MACs, checkpoint size and parameters, in human units) and the
estimated cost from the calibrations cached on this machine; ``dry_run_list=true`` adds every trial, one line each.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dse import store as st
from dse.faults import human_bytes
from dse.space import PlannedTrial, resolve_trial
from dse.sweep.plan import StudyPlan
from dse.sweep.progress import fmt_duration
from dse.target import flash_bytes, ram_bytes


def print_dry_run(plan: StudyPlan, cfg: DictConfig, estimate_of: Callable[[Any], float | None] | None = None) -> None:
    """The plan on stdout: a header, one summary line per block, the cost, (dry_run_list) every trial."""
    print(f"study {plan.name} ({plan.mode} mode, fingerprint {plan.fingerprint}); trainer: {cfg.trainer.epochs} "
          f"epochs, batch {cfg.trainer.batch_size}; data: {cfg.data.dataset} "
          f"subset={cfg.data.subset or cfg.data.subset_size or 'all'}")
    if plan.mode == "grid":
        _grid(plan, cfg, estimate_of)
    else:
        _sample(plan, cfg)
    for line in plan.missing_data:
        print(f"data: {line}")


def _grid(plan: StudyPlan, cfg: DictConfig, estimate_of: Callable[[Any], float | None] | None) -> None:
    blocks: dict[str, list[PlannedTrial]] = {}
    for p in plan.trials:
        blocks.setdefault(p.block, []).append(p)
    precision = str(cfg.target.precision)
    rows = [block_row(name, ps, precision) for name, ps in blocks.items()]
    _table(("block", "trials", "rejected", "MACs per image", "checkpoint size", "params",
            f"peak RAM ({precision})", f"flash ({precision})", "latency p99 (this host)"), rows)
    print(target_line(cfg, plan.trials))
    rejected = sum(1 for p in plan.trials if p.rejected)
    print(f"{len(plan.trials)} planned trials, {len(plan.trials) - rejected} to train, {rejected} rejected by "
          "constraints")
    print(cost_line([p for p in plan.trials if not p.rejected], int(cfg.workers) if str(cfg.workers).isdigit()
                    else 1, estimate_of))
    if cfg.get("dry_run_list"):
        _table(("#", "block", "model", "registry name", "optimizer", "dropout", "dataset", "seed", "params",
                "MACs", "ckpt bytes", "RAM bytes", "flash bytes", "p99 ms", "constraint"),
               [(i, p.block, p.trial.model.display_name, p.trial.model.name, p.trial.optimizer["name"],
                 p.trial.model.dropout, p.trial.data["dataset"], p.trial.seed, p.facts.params, p.facts.macs,
                 p.facts.checkpoint_bytes, ram_bytes(p.facts, precision), flash_bytes(p.facts, precision),
                 "-" if p.latency is None else f"{p.latency.p99_ms:.2f}", p.rejected or "ok")
                for i, p in enumerate(plan.trials, 1)])
    else:
        print("every trial, one line each: add dry_run_list=true")


def block_row(name: str, ps: list[PlannedTrial], precision: str = "int8") -> tuple[str, ...]:
    """One block's line: its trials, how many are rejected, and the ranges of its facts (latency: "-" when the
    target does not measure it)."""
    def span(values: list[float], fmt: Callable[[float], str]) -> str:
        if not values:
            return "-"
        lo, hi = min(values), max(values)
        return fmt(lo) if lo == hi else f"{fmt(lo)} - {fmt(hi)}"

    return (name, str(len(ps)), str(sum(1 for p in ps if p.rejected)),
            span([p.facts.macs for p in ps], lambda v: f"{v / 1e6:,.2f} M"),
            span([p.facts.checkpoint_bytes for p in ps], human_bytes),
            span([p.facts.params for p in ps], lambda v: f"{v / 1e6:,.3f} M"),
            span([ram_bytes(p.facts, precision) for p in ps], human_bytes),
            span([flash_bytes(p.facts, precision) for p in ps], human_bytes),
            span([p.latency.p99_ms for p in ps if p.latency is not None], lambda v: f"{v:.2f} ms"))


def target_line(cfg: DictConfig, trials: list[PlannedTrial]) -> str:
    """The target, its budgets, and whether latency was measured (and on what)."""
    budgets = {k: v for k, v in OmegaConf.to_container(cfg.search.constraints).items() if v is not None}
    said = ", ".join(f"{k}={v:,}" for k, v in budgets.items()) or "no budget"
    lat = next((p.latency for p in trials if p.latency is not None), None)
    how = (f"latency of the untrained networks: {lat.runtime}, 1 thread, batch 1, on {lat.host} (this host, not "
           "the board)" if lat is not None else "latency not measured (target.latency=always measures it)")
    return f"target {cfg.target.name} ({cfg.target.precision}): {said}; {how}"


def cost_line(trials: list[PlannedTrial], workers: int, estimate_of: Callable[[Any], float | None] | None) -> str:
    """The estimated training time from this machine's cached calibrations (never measured here: a dry run
    trains nothing), or why there is none."""
    if not trials:
        return "estimated cost: nothing to train"
    if estimate_of is None:
        return "estimated cost: not computed"
    seconds = [estimate_of(SimpleNamespace(identity=p.identity, config_json=st.config_json(p.trial.to_dict())))
               for p in trials]
    known = [s for s in seconds if s is not None]
    if not known:
        return ("estimated cost: unknown (this machine has calibrated none of these trials; the first run without "
                "dry_run measures them in seconds and prints the estimate)")
    total = sum(known)
    some = "" if len(known) == len(trials) else (
        f" for the {len(known)} of {len(trials)} trials calibrated on this machine (the others not yet)")
    return (f"estimated cost: {fmt_duration(total)} of training{some}; about {fmt_duration(total / workers)} of "
            f"wall time on {workers} worker{'s' * (workers != 1)}")


def _sample(plan: StudyPlan, cfg: DictConfig) -> None:
    from dse.models import model_facts

    t = resolve_trial(plan.base, {}, int(cfg.search.seeds[0]))
    f = model_facts(t.model)
    print(f"sample mode: {cfg.search.n_trials} trials drawn by the {cfg.sampler.name} sampler from "
          f"{len(cfg.search.params)} parameters; the base config: {t.model.display_name}, "
          f"{t.optimizer['name']}, {t.data['dataset']}, {f.macs / 1e6:,.2f} M MACs, {human_bytes(f.checkpoint_bytes)}")
    params = OmegaConf.to_container(cfg.search.params, resolve=True)
    for key, spec in params.items():  # type: ignore[union-attr]
        print(f"  {key}: {json.dumps(spec, default=str)}")


def _table(header: tuple[str, ...], rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header))
    for r in rows:
        print(fmt.format(*map(str, r)))
