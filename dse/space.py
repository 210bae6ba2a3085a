"""From a composed config to concrete trials: the search space, grid planning, identities and constraints.

A *trial config* is the frozen, fully resolved input of one training run (model spec, data, optimizer,
trainer, seed). Its *identity* is the SHA-256 of its canonical JSON (docs/design.md, "Identity"): the same
config is the same trial whichever worker, process or restart meets it. Machine-specific settings (data root, device,
progress, threads) are not part of the identity; everything that changes the result is.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import logging
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dse.common import progress_every
from dse.errors import ConfigError, DSEError, first_line
from dse.models import InvalidModelConfig, ModelFacts, ModelSpec, model_facts, spec_from_name
from dse.target import check_constraints, latency_of

log = logging.getLogger("dse.sweep")

# Search keys that are not dotted config paths.
SEED = "seed"
# Keys a search may vary: "<group>.<field>" for these groups, or "seed".
SEARCHABLE_GROUPS = ("model", "data", "optimizer", "trainer")
# Trainer fields that do not change what is learned (not part of the identity).
_NON_SEMANTIC_TRAINER = {
    "device", "progress", "threads", "channels_last", "eval_batch_size",
    "fast_path", "gpu_memory_fraction", "tensorboard_dir",
}
_NON_SEMANTIC_DATA = {"root", "download", "cache_dir"}
# Trainer fields that rows written by older versions carry and this one no longer has (compile: fast_path=compile;
# it was never part of the identity)
_RETIRED_TRAINER = {"compile"}


@dataclass(frozen=True)
class TrialConfig:
    """Everything one training run needs; hashable and JSON-able."""

    model: ModelSpec
    data: dict[str, Any]
    optimizer: dict[str, Any]
    trainer: dict[str, Any]
    seed: int

    def semantic(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "data": {k: v for k, v in sorted(self.data.items()) if k not in _NON_SEMANTIC_DATA},
            "optimizer": dict(sorted(self.optimizer.items())),
            "trainer": {k: v for k, v in sorted(self.trainer.items()) if k not in _NON_SEMANTIC_TRAINER},
            "seed": self.seed,
        }

    @property
    def identity(self) -> str:
        blob = json.dumps(self.semantic(), sort_keys=True, separators=(",", ":"), default=_jsonable)
        return hashlib.sha256(blob.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "data": self.data, "optimizer": self.optimizer,
                "trainer": self.trainer, "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialConfig:
        """The inverse of ``to_dict``: a queued row carries its whole trial config, so any worker can run it."""
        trainer = {k: v for k, v in d["trainer"].items() if k not in _RETIRED_TRAINER}
        return cls(model=ModelSpec.from_dict(d["model"]), data=dict(d["data"]), optimizer=dict(d["optimizer"]),
                   trainer=trainer, seed=int(d["seed"]))

    def on_this_machine(self, data: dict[str, Any], trainer: dict[str, Any]) -> TrialConfig:
        """The same trial (same identity) with this worker's machine settings: data root, device, threads..."""
        return dataclasses.replace(
            self, data={**self.data, **{k: data[k] for k in _NON_SEMANTIC_DATA if k in data}},
            trainer={**self.trainer, **{k: trainer[k] for k in _NON_SEMANTIC_TRAINER if k in trainer}})

    # Builders for the training core's own typed configs (kept here so the core stays free of Hydra).
    def data_config(self) -> Any:
        from dse.data import DataConfig

        return DataConfig(**self.data)

    def optim_config(self) -> Any:
        from dse.train import OptimConfig

        d = dict(self.optimizer)
        d["betas"] = tuple(d["betas"])
        d["step_epochs"] = tuple(d["step_epochs"])
        return OptimConfig(**d)

    def train_config(self, checkpoint_dir: str | None, run: str | None = None) -> Any:
        """The trainer's config; ``run``: the TensorBoard run's folder under trainer.tensorboard_dir (the sweep's
        ``<study>/<trial name>-<model>``; the identity's first 16 hex digits when not given)."""
        from dse.train import TrainConfig

        trainer = dict(self.trainer)
        board = trainer.pop("tensorboard_dir", None)  # a root: each trial writes into its own run folder
        if board:  # a relative root is the repository's, like every other path of a study
            from dse.common import ROOT

            root = Path(board).expanduser()
            board = str((root if root.is_absolute() else ROOT / root) / (run or self.identity[:16]))
        return TrainConfig(**trainer, seed=self.seed, checkpoint_dir=checkpoint_dir, tensorboard_dir=board)


@dataclass(frozen=True)
class PlannedTrial:
    block: str
    overrides: dict[str, Any]  # the dotted keys this point sets
    trial: TrialConfig
    facts: ModelFacts
    rejected: str | None = None  # why a constraint rejects it (never trained)
    latency: Any = None  # its untrained network's LatencyFacts when the target measures them (dse.target)
    params: dict[str, Any] = field(default_factory=dict)  # flat params shown to Optuna / the dashboard

    @property
    def identity(self) -> str:
        return self.trial.identity


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON-able: {v!r}")


def depths_str(depths: Iterable[int] | None) -> str:
    return "-".join(str(int(d)) for d in depths) if depths else "-"


def parse_depths(value: Any) -> tuple[int, ...]:
    """Stage depths from a list [1, 2, 8, 1] or a string "1-2-8-1"."""
    if isinstance(value, str):
        try:
            return tuple(int(x) for x in value.replace(" ", "").split("-"))
        except ValueError:
            raise ConfigError(f"stage_depths {value!r} is not four integers like '1-2-8-1'") from None
    try:
        return tuple(int(x) for x in value)
    except (TypeError, ValueError):
        raise ConfigError(f"stage_depths {value!r} is not four integers like [1, 2, 8, 1]") from None


def num_classes(data: dict[str, Any]) -> int:
    ds = data.get("dataset")
    if ds == "cifar10":
        return 10
    if ds == "cifar100":
        return 100
    if ds == "imagefolder":
        from dse.data import DataConfig

        train = DataConfig(**data).resolved_root() / "train"
        classes = [p for p in train.iterdir() if p.is_dir()] if train.is_dir() else []
        if len(classes) < 2:
            raise ConfigError(f"imagefolder root {train} has {len(classes)} class folders; need at least 2")
        return len(classes)
    raise ConfigError(f"unknown dataset {ds!r}; allowed: cifar10, cifar100, imagefolder")


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    if key == SEED:
        tree[SEED] = value
        return
    group, _, name = key.partition(".")
    if group not in SEARCHABLE_GROUPS or not name or "." in name:
        raise ConfigError(f"unknown search key {key!r}; allowed: seed or <group>.<field> with group in "
                          f"{', '.join(SEARCHABLE_GROUPS)}")
    if name not in tree[group]:
        allowed = ", ".join(f"{group}.{k}" for k in tree[group])
        raise ConfigError(f"unknown search key {key!r}; allowed for {group}: {allowed}")
    tree[group][name] = value


def resolve_trial(base: dict[str, Any], overrides: dict[str, Any], seed: int) -> TrialConfig:
    """Apply a point's dotted overrides to the base config and build the frozen trial config."""
    tree = copy.deepcopy({g: base[g] for g in SEARCHABLE_GROUPS})
    tree[SEED] = seed
    for k, v in overrides.items():
        _set_dotted(tree, k, v)
    m = tree["model"]
    try:
        kw: dict[str, Any] = {"num_classes": num_classes(tree["data"])}
        for f in ("dropout", "activation"):
            if m.get(f) is not None:
                kw[f] = m[f]
        spec = spec_from_name(str(m["name"]), **kw)
        changes: dict[str, Any] = {}
        if m.get("stage_depths") is not None:
            changes["stage_depths"] = parse_depths(m["stage_depths"])
        if m.get("width") is not None:
            changes["width"] = float(m["width"])
        if changes:
            spec = spec.replace(**changes)
    except InvalidModelConfig as e:
        raise ConfigError(str(e)) from None
    seed_v = tree[SEED]
    if isinstance(seed_v, bool) or not isinstance(seed_v, int):
        raise ConfigError(f"seed must be an integer, got {seed_v!r}")
    trial = TrialConfig(model=spec, data=dict(tree["data"]), optimizer=dict(tree["optimizer"]),
                        trainer=dict(tree["trainer"]), seed=int(seed_v))
    validate_trial(trial)
    return trial


def validate_trial(trial: TrialConfig) -> None:
    """Build the core's typed configs once, so bad values fail at planning time, not mid-sweep."""
    try:
        trial.data_config()
        trial.optim_config()
        trial.train_config(None)
    except DSEError as e:
        raise ConfigError(str(e)) from None
    except (TypeError, ValueError) as e:
        raise ConfigError(first_line(e)) from None


def _param_value(v: Any) -> Any:
    """A value Optuna can store as a categorical choice."""
    if isinstance(v, list | tuple):
        return depths_str(v)
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return str(v)


def dashboard_params(trial: TrialConfig, extra_keys: Iterable[str] = ()) -> dict[str, Any]:
    """The flat parameters a person wants to see in optuna-dashboard for a planned trial: one per choice the
    study makes (the model is one choice: its name says its architecture, depths and width)."""
    p: dict[str, Any] = {
        "model": trial.model.name,  # its depths and width are attributes (dse.sweep.record.user_attrs)
        "dropout": float(trial.model.dropout),
        "optimizer": trial.optimizer["name"],
        "lr": trial.optimizer.get("lr"),
        "dataset": trial.data["dataset"],
        SEED: trial.seed,
    }
    tree = {"data": trial.data, "optimizer": trial.optimizer, "trainer": trial.trainer}
    for k in extra_keys:
        group, _, name = k.partition(".")
        if group in tree and name in tree[group]:
            p[k] = _param_value(tree[group][name])
    return p


def base_tree(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def plan_grid(cfg: DictConfig) -> list[PlannedTrial]:
    """The union over blocks of points x product(grid) x seeds, deduplicated by identity, in a stable order."""
    base = base_tree(cfg)
    search = base["search"]
    blocks = search.get("blocks") or {}
    if not blocks:
        raise ConfigError("empty search space: search.blocks is empty (pick an experiment, e.g. "
                          "experiment=table3, or add search.blocks.<name>.points)")
    constraints = search.get("constraints") or {}
    max_seeds = search.get("max_seeds")
    planned: dict[str, PlannedTrial] = {}
    extra_keys: set[str] = set()
    raw: list[tuple[str, dict[str, Any], TrialConfig]] = []
    for bname, block in blocks.items():
        if block is None:
            continue
        unknown = set(block) - {"points", "grid", "seeds"}
        if unknown:
            raise ConfigError(f"search.blocks.{bname}: unknown keys {sorted(unknown)}; allowed: points, grid, seeds")
        points = block.get("points") or [{}]
        grid = block.get("grid") or {}
        for k, vals in grid.items():
            if not isinstance(vals, list) or not vals:
                raise ConfigError(f"search.blocks.{bname}.grid.{k} must be a non-empty list, got {vals!r}")
        seeds = list(block.get("seeds") or search.get("seeds") or [0])
        if max_seeds is not None:
            seeds = seeds[: max(1, int(max_seeds))]
        combos = [dict(zip(grid, vals, strict=True)) for vals in itertools.product(*grid.values())] or [{}]
        for point in points:
            if not isinstance(point, dict):
                raise ConfigError(f"search.blocks.{bname}.points entries must be mappings, got {point!r}")
            for combo in combos:
                over = {**point, **combo}
                extra_keys.update(k for k in over if k.split(".")[0] in ("data", "optimizer", "trainer"))
                for seed in seeds:
                    raw.append((bname, over, resolve_trial(base, over, int(seed))))
    facts_of: dict[ModelSpec, ModelFacts] = {}
    tick = progress_every(5.0, log, "model facts of the planned points (cached per architecture)")
    for i, (_, _, trial) in enumerate(raw):  # a cold cache: ~0.06 s per architecture, a minute for a paper plan
        if trial.model not in facts_of:
            facts_of[trial.model] = model_facts(trial.model)
        tick(i + 1, len(raw))
    latency = latency_of(list(facts_of), base)
    precision = (base.get("target") or {}).get("precision", "int8")
    for bname, over, trial in raw:
        if trial.identity in planned:
            continue
        facts, lat = facts_of[trial.model], latency.get(trial.model)
        planned[trial.identity] = PlannedTrial(
            block=bname, overrides=over, trial=trial, facts=facts, latency=lat,
            rejected=check_constraints(facts, constraints, lat, precision),
            params=dashboard_params(trial, sorted(extra_keys - {"optimizer.name", "optimizer.lr",
                                                                "data.dataset"})))
    if not planned:
        raise ConfigError("empty search space: the blocks produce no trial")
    return list(planned.values())


# -- sample mode -----------------------------------------------------------------------------------------------
_SPEC_KEYS = {"type", "choices", "low", "high", "step", "log"}


def validate_param_spec(key: str, spec: Any) -> None:
    if not isinstance(spec, dict):
        raise ConfigError(f"search.params.{key} must be a mapping like {{type: float, low: 0.1, high: 0.5}}, "
                          f"got {spec!r}")
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise ConfigError(f"search.params.{key}: unknown keys {sorted(unknown)}; allowed: {sorted(_SPEC_KEYS)}")
    kind = spec.get("type", "categorical" if "choices" in spec else None)
    if kind == "categorical":
        if not spec.get("choices"):
            raise ConfigError(f"search.params.{key}: categorical needs a non-empty 'choices' list")
        return
    if kind not in ("int", "float"):
        raise ConfigError(f"search.params.{key}: type {kind!r} unknown; allowed: categorical, int, float")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"search.params.{key}: {kind} needs 'low' and 'high'")
    low, high = spec["low"], spec["high"]
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (low, high)):
        raise ConfigError(f"search.params.{key}: low/high must be numbers, got {low!r}/{high!r}")
    if low > high:
        raise ConfigError(f"search.params.{key}: low {low} > high {high}")
    if spec.get("log") and low <= 0:
        raise ConfigError(f"search.params.{key}: log scale needs low > 0, got {low}")
    if spec.get("log") and spec.get("step") not in (None, 1):
        raise ConfigError(f"search.params.{key}: step and log cannot be combined")
    step = spec.get("step")
    if step is not None and (not isinstance(step, int | float) or step <= 0 or math.isnan(step)):
        raise ConfigError(f"search.params.{key}: step must be > 0, got {step!r}")


def validate_sample_space(cfg: DictConfig) -> None:
    tree = base_tree(cfg)
    search = tree["search"]
    params, cond = search.get("params") or {}, search.get("conditional") or {}
    if not params:
        raise ConfigError("empty search space: search.mode=sample needs search.params")
    if not search.get("n_trials") or search["n_trials"] < 1:
        raise ConfigError(f"search.n_trials must be >= 1 in sample mode, got {search.get('n_trials')!r}")
    scratch = copy.deepcopy({g: tree[g] for g in SEARCHABLE_GROUPS})  # only checks that each key exists
    for key, spec in params.items():
        if key != SEED:
            _set_dotted(scratch, key, None)
        validate_param_spec(key, spec)
    for key, c in cond.items():
        if not isinstance(c, dict) or "parent" not in c or "cases" not in c:
            raise ConfigError(f"search.conditional.{key} needs 'parent: <key>' and 'cases: {{value: spec}}'")
        if c["parent"] not in params:
            raise ConfigError(f"search.conditional.{key}: parent {c['parent']!r} is not in search.params")
        for case, spec in c["cases"].items():
            validate_param_spec(f"{key}[{case}]", spec)


def on_grid(v: float, low: float, step: float) -> float:
    """A value Optuna drew on the grid ``low + k * step``, written as the grid's decimals: Optuna computes it in
    binary floating point (0.1 + 20 * 0.025 = 0.6000000000000001), which would reach model names and the store."""
    places = max(-Decimal(str(x)).normalize().as_tuple().exponent for x in (low, step))
    return round(v, max(0, int(places)))


def suggest(trial: Any, search: dict[str, Any]) -> dict[str, Any]:
    """Draw one point of the space with Optuna's suggest API (conditional keys after their parents)."""
    out: dict[str, Any] = {}

    def draw(key: str, spec: dict[str, Any]) -> Any:
        kind = spec.get("type", "categorical" if "choices" in spec else None)
        if kind == "categorical":
            choices = [_param_value(c) for c in spec["choices"]]
            return trial.suggest_categorical(key, choices)
        if kind == "int":
            return trial.suggest_int(key, int(spec["low"]), int(spec["high"]), step=int(spec.get("step") or 1),
                                     log=bool(spec.get("log", False)))
        v = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), step=spec.get("step"),
                                log=bool(spec.get("log", False)))
        return v if spec.get("step") is None else on_grid(v, spec["low"], spec["step"])

    for key, spec in (search.get("params") or {}).items():
        out[key] = draw(key, spec)
    for key, c in (search.get("conditional") or {}).items():
        parent = out.get(c["parent"])
        cases = {str(k): v for k, v in c["cases"].items()}
        if str(parent) in cases:
            out[key] = draw(key, cases[str(parent)])
    return out


_FIRST_CONSTRAINTS = ("max_checkpoint_bytes", "max_macs", "max_params")  # the budgets of schema 1


def space_fingerprint(cfg: DictConfig, plan: list[PlannedTrial] | None) -> str:
    """What makes two runs 'the same study': the planned identities (grid) or the space + base config."""
    tree = base_tree(cfg)
    if plan is not None:
        payload: Any = sorted(p.identity for p in plan)
    else:
        payload = {"search": {k: tree["search"].get(k) for k in ("params", "conditional", "objectives",
                                                                  "constraints")},
                   "base": {g: tree[g] for g in SEARCHABLE_GROUPS}}
        # budgets added since a study was made count only when set, so its fingerprint stays what it was
        payload["search"]["constraints"] = {k: v for k, v in (payload["search"]["constraints"] or {}).items()
                                            if v is not None or k in _FIRST_CONSTRAINTS}
        for g in ("data",):
            payload["base"][g] = {k: v for k, v in payload["base"][g].items() if k not in _NON_SEMANTIC_DATA}
        payload["base"]["trainer"] = {k: v for k, v in payload["base"]["trainer"].items()
                                      if k not in _NON_SEMANTIC_TRAINER}
    blob = json.dumps(payload, sort_keys=True, default=_jsonable)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


__all__ = ["PlannedTrial", "TrialConfig", "asdict", "dashboard_params", "depths_str",
           "parse_depths", "plan_grid", "resolve_trial", "space_fingerprint", "suggest",
           "validate_sample_space"]
