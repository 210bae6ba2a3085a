"""Planning: from a composed config to the study's trials, before any database is touched.

Grid mode lists every configuration (points x grid x seeds per block, deduplicated by identity); sample mode only
validates the space (the sampler picks points later). Planning also checks, once per dataset, that the data can
be had on this machine: trials whose data is missing are reported in one line and left out of this run instead of
failing one by one.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dse import store as st
from dse.config import study_name
from dse.errors import ConfigError, DSEError
from dse.space import (
    PlannedTrial,
    TrialConfig,
    dashboard_params,
    plan_grid,
    resolve_trial,
    space_fingerprint,
    validate_sample_space,
)
from dse.sweep.datacheck import PICKLE_DIRS, SourceFacts, check_split, source_facts
from dse.target import fact_fields

log = logging.getLogger("dse.sweep")

OBJECTIVES = {  # name -> (direction, the dse_trials column it is read from, what the dashboard calls it)
    "val_acc": ("maximize", "best_val_acc", "val accuracy %"),
    "checkpoint_bytes": ("minimize", "checkpoint_bytes", "checkpoint bytes"),
    "sec_per_epoch": ("minimize", "sec_per_epoch", "seconds per epoch"),
    "macs": ("minimize", "macs", "MACs per image"),
    "params": ("minimize", "params", "parameters"),
    "latency_ms": ("minimize", "latency_p50_ms", "latency ms (p50, batch 1, untrained, this host)"),
    "ram_bytes": ("minimize", "ram_bytes_int8", "peak activation bytes (int8; fp32 is 4x)"),
    "flash_bytes": ("minimize", "flash_bytes", "int8 weight bytes"),
}
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagefolder": "the ImageFolder tree"}


@dataclass
class StudyPlan:
    """What one run of one study will do: its name, objectives, and (grid) its trials."""

    name: str
    mode: str
    objectives: list[str]
    base: dict[str, Any]
    fingerprint: str
    trials: list[PlannedTrial] = field(default_factory=list)  # grid mode: every configuration
    runnable: list[PlannedTrial] = field(default_factory=list)  # ... of which this machine has the data for
    missing_data: list[str] = field(default_factory=list)  # one line per dataset that cannot be had
    sources: dict[tuple, SourceFacts] = field(default_factory=dict)  # per data source this machine has
    runnable_ids: list[str] = field(default_factory=list)  # a slim plan's runnable identities (``slim``)

    def runnable_identities(self) -> list[str]:
        """The identities of the trials this machine can run (grid mode)."""
        return self.runnable_ids or [p.identity for p in self.runnable]

    def slim(self) -> StudyPlan:
        """What a worker child needs once the parent has queued the plan and created the study: everything but the
        trial list (each queued row carries its config), with the runnable trials' identities."""
        return dataclasses.replace(self, trials=[], runnable=[], runnable_ids=self.runnable_identities())

    @property
    def multi(self) -> bool:
        return len(self.objectives) > 1

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o][0] for o in self.objectives]


def make_plan(cfg: DictConfig, check_data: bool = True) -> StudyPlan:
    """Validate and plan the study; ConfigError (one line) for anything wrong with the space or objectives."""
    objectives = list(cfg.search.objectives)
    for o in objectives:
        if o not in OBJECTIVES:
            raise ConfigError(f"search.objectives: {o!r} is unknown; allowed: {', '.join(OBJECTIVES)}")
    if not objectives or objectives[0] != "val_acc":
        raise ConfigError(f"search.objectives={objectives} must start with val_acc")
    base = OmegaConf.to_container(cfg, resolve=True)
    # the base config itself must be valid even where every point overrides the model: a typo is still a typo
    resolve_trial(base, {}, int(cfg.search.seeds[0]))
    plan = StudyPlan(name=study_name(cfg), mode=cfg.search.mode, objectives=objectives, base=base, fingerprint="")
    if plan.mode == "grid":
        plan.trials = plan_grid(cfg)
        plan.fingerprint = space_fingerprint(cfg, plan.trials)
    else:
        validate_sample_space(cfg)
        plan.fingerprint = space_fingerprint(cfg, None)
    plan.runnable = list(plan.trials)
    if check_data:
        check_data_sources(plan)
    return plan


def check_data_sources(plan: StudyPlan) -> None:
    """Keep in ``plan.runnable`` only the trials whose data this machine has (or can download); one line per
    dataset that cannot be had goes to ``plan.missing_data``."""
    sources: dict[tuple, dict[str, Any]] = {}
    for p in plan.trials or [None]:
        data = p.trial.data if p is not None else plan.base["data"]
        sources.setdefault(source_key(data), data)
    problems = {key: data_problem(data) for key, data in sources.items()}
    for key, data in sources.items():
        if problems[key] is None:
            from dse.data import DataConfig

            facts = source_facts(data["dataset"], DataConfig(**data).resolved_root())
            problems[key] = facts.problem
            plan.sources[key] = facts
    for p in plan.trials or [None]:  # a split that cannot fit: a configuration error, before anything runs
        data = p.trial.data if p is not None else plan.base["data"]
        if source_key(data) in plan.sources and not problems[source_key(data)]:
            check_split(data, plan.sources[source_key(data)])
    needs = Counter(source_key(p.trial.data) for p in plan.trials)
    for key, why in problems.items():
        if why:
            n = needs.get(key, 0)
            who = f"{n} trial{'s' if n != 1 else ''} need" if plan.trials else "this study needs"
            plan.missing_data.append(f"{who} {DATASET_NAMES.get(key[0], key[0])}: {why}")
    plan.runnable = [p for p in plan.trials if not problems[source_key(p.trial.data)]]


def source_key(data: dict[str, Any]) -> tuple:
    return (data["dataset"], data.get("root"), bool(data.get("download")))


def data_problem(data: dict[str, Any]) -> str | None:
    """None when the dataset is on this machine or downloads now; else why not (one phrase)."""
    from dse.data import DataConfig, load_data

    cfg = DataConfig(**data)
    root = cfg.resolved_root()
    if _has_local_copy(cfg.dataset, root):
        return None
    if cfg.dataset == "imagefolder":
        return f"no ImageFolder tree (train/<class>/*, test/<class>/*) in {root}"
    if not cfg.download:
        return f"not in {root} (and data.download=false)"
    try:
        load_data(cfg)  # downloads into root; the decoded copy is cached for the trials
    except DSEError:
        return f"not in {root}, and the download failed"
    return None


def _has_local_copy(dataset: str, root: Path) -> bool:
    def tree(r: Path) -> bool:
        try:
            return all((r / s).is_dir() and any(p.is_dir() for p in (r / s).iterdir()) for s in ("train", "test"))
        except OSError:
            return False

    if dataset == "imagefolder":
        return tree(root)
    sub = PICKLE_DIRS[dataset]
    if (root / sub).is_dir() or (root.name == sub and root.is_dir()):
        return True
    return dataset == "cifar10" and tree(root)


# -- what the store and Optuna get ------------------------------------------------------------------------------
def row_fields(study: str, t: TrialConfig, facts: Any, commit: str | None, latency: Any = None) -> dict[str, Any]:
    """The dse_trials columns known at planning time (the row carries the whole trial config)."""
    d = t.data
    return dict(
        study=study, identity=t.identity, model_name=t.model.name, arch=t.model.arch,
        stage_depths="-".join(map(str, t.model.stage_depths)) if t.model.stage_depths else None,
        width=float(t.model.width), dropout=float(t.model.dropout), activation=t.model.activation,
        num_classes=t.model.num_classes, optimizer=t.optimizer["name"], lr=t.optimizer.get("lr"),
        schedule=t.optimizer["schedule"], dataset=d["dataset"],
        data_fraction=float(d["subset"]) if d.get("subset") else 1.0, train_images=d.get("subset_size"),
        epochs=int(t.trainer["epochs"]), batch_size=int(t.trainer["batch_size"]), seed=t.seed,
        **fact_fields(facts, latency), config_json=st.config_json(t.to_dict()), git_commit=commit)


def grid_space(trials: list[PlannedTrial]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(distributions of the parameters that vary within the study, the constant ones with their value).

    Only what varies is an Optuna parameter: a constant (lr None, seed 0, the dataset) would be a useless axis
    on every dashboard plot; constants become study user attributes instead."""
    import optuna

    values: dict[str, set[Any]] = {}
    for p in trials:
        for k, v in p.params.items():
            values.setdefault(k, set()).add(v)

    def order(x: Any) -> tuple[bool, str, Any]:  # None last; numbers and strings never compared to each other
        return (x is None, type(x).__name__, x if x is not None else 0)

    dists = {k: optuna.distributions.CategoricalDistribution(sorted(vs, key=order))
             for k, vs in values.items() if len(vs) > 1}
    constants = {k: next(iter(vs)) for k, vs in values.items() if len(vs) == 1}
    return dists, constants


def trial_params(t: TrialConfig, keys: list[str]) -> dict[str, Any]:
    """A trial's values of the study's varying parameters (``keys``), as ``grid_space`` named them."""
    every = dashboard_params(t, [k for k in keys if "." in k])
    return {k: every[k] for k in keys}


