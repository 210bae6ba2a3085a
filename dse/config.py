"""Typed configuration: the dataclass schemas Hydra checks every YAML and override against.

The config tree is composed from the groups in ``dse/conf/`` (model, data, optimizer, trainer, search, sampler,
pruner, storage, budget) plus one experiment from ``dse/experiments/`` (registered in Hydra's ConfigStore under
the group ``experiment``, so ``python -m dse.sweep experiment=table3`` selects ``dse/experiments/table3.yaml``).
An unknown key or a value of the wrong type is refused by OmegaConf before anything runs; ``check`` then refuses
values of the right type but outside what is allowed (one line naming the value and the allowed ones).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from dse.common import CONF_DIR as PACKAGED_CONF
from dse.common import EXPERIMENTS_DIR as PACKAGED_EXPERIMENTS
from dse.common import ROOT
from dse.errors import ConfigError, first_line
from dse.spec import DataConfig, OptimConfig, TrainConfig

CONF_DIR = Path(os.environ.get("DSE_CONF_DIR", PACKAGED_CONF))
EXPERIMENTS_DIR = Path(os.environ.get("DSE_EXPERIMENTS_DIR", PACKAGED_EXPERIMENTS))
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,119}")  # becomes a folder name: no separators, no ".."


def repo_path(path: str = "") -> str:
    """``${dse.repo:results/runs}``: a path under the root (``dse.common.ROOT``: run folders do not follow the cwd
    of a checkout)."""
    return str(ROOT / path)


if not OmegaConf.has_resolver("dse.repo"):
    OmegaConf.register_new_resolver("dse.repo", repo_path)


@dataclass
class ModelConf:
    """A model by registry name; explicit fields override what the name implies."""

    name: str = "shallow_sqnxt_06_0_4x"
    stage_depths: Any = None  # four block counts, as a list [1, 2, 8, 1] or a string "1-2-8-1"
    width: float | None = None  # width multiplier (> 0)
    dropout: float | None = None  # [0, 1)
    activation: str | None = None  # elu | relu


def hydra_schema(core: type, name: str, *, leave_out: tuple[str, ...] = (), loose: tuple[str, ...] = ()) -> type:
    """The Hydra schema of a config group, derived from the core's dataclass (``dse.spec``) so every field, type
    and default is declared once: a mutable copy (overrides must be able to set it) whose tuples are lists (what
    YAML writes). ``leave_out``: fields the group does not set (the sweep fills them per trial); ``loose``: fields
    typed Any here because a value such as ``auto`` is only resolved later, by measurement (``dse.autotune``)."""
    hints = get_type_hints(core)
    fields = []
    for f in dataclasses.fields(core):
        if f.name in leave_out or not f.init:
            continue
        kind = Any if f.name in loose else hints[f.name]
        if get_origin(kind) is tuple:
            kind = list[get_args(kind)[0]]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, (tuple, list)):
            fields.append((f.name, kind, field(default_factory=lambda d=tuple(default): list(d))))
        else:
            fields.append((f.name, kind, field(default=default)))
    return dataclasses.make_dataclass(name, fields)


DataConf = hydra_schema(DataConfig, "DataConf")
OptimizerConf = hydra_schema(OptimConfig, "OptimizerConf")
# seed, checkpoint_dir and resume are the sweep's, per trial; channels_last is true, false or auto
TrainerConf = hydra_schema(TrainConfig, "TrainerConf", leave_out=("seed", "checkpoint_dir", "resume"),
                           loose=("channels_last",))


@dataclass
class ConstraintsConf:
    """Budgets a configuration must meet before it is trained (None: no budget); the target group sets some."""

    max_checkpoint_bytes: int | None = None  # the paper's "model size" budget, bytes
    max_macs: int | None = None  # per 32x32 image
    max_params: int | None = None
    max_ram_bytes: int | None = None  # peak activations, one image, at target.precision (dse.models.footprint)
    max_flash_bytes: int | None = None  # weights at target.precision: int8 flash, or the float32 checkpoint
    max_latency_ms: float | None = None  # batch-1 p99 of the untrained network on this host (dse.deploy.facts)


@dataclass
class TargetConf:
    """The board a study searches for: its budgets (set in search.constraints by the preset) and how its facts
    are counted. Latency is measured on THIS host's CPU (ONNX Runtime, one thread, batch 1), not on the board."""

    name: str = "host"  # host | arm_board | mcu (dse/conf/target/)
    precision: str = "int8"  # int8 | fp32: the bytes per activation and weight the RAM and flash budgets count
    latency: str = "auto"  # auto (when a constraint or objective needs it) | always | never
    source: str = ""  # where the preset's numbers come from


@dataclass
class SearchConf:
    """The search space.

    mode=grid: the union over ``blocks`` of (points x product(grid) x seeds), enqueued once each.
    mode=sample: ``params`` (+ ``conditional``) drawn by the sampler, ``n_trials`` in all (global budget).
    Keys are dotted config paths (``model.width``, ``optimizer.name``, ``data.dataset``) or ``seed``.
    """

    mode: str = "grid"  # grid | sample
    blocks: dict[str, Any] = field(default_factory=dict)  # name -> {points: [...], grid: {...}, seeds: [...]}
    params: dict[str, Any] = field(default_factory=dict)  # key -> {type, choices | low, high, step, log}
    conditional: dict[str, Any] = field(default_factory=dict)  # key -> {parent: key, cases: {value: spec}}
    seeds: list[int] = field(default_factory=lambda: [0])  # default seeds of blocks without their own
    max_seeds: int | None = None  # cap on seeds per block (budgets use it: smoke/quick run 1)
    n_trials: int | None = None  # sample mode: the study's global trial budget
    objectives: list[str] = field(default_factory=lambda: ["val_acc"])  # + checkpoint_bytes, sec_per_epoch, macs
    constraints: ConstraintsConf = field(default_factory=ConstraintsConf)


@dataclass
class SamplerConf:
    name: str = "tpe"  # grid (= the planned queue only) | random | tpe | nsga2
    seed: int | None = 0
    n_startup_trials: int = 10
    population_size: int = 20


@dataclass
class PrunerConf:
    name: str = "median"  # none | median | successive_halving | hyperband
    n_startup_trials: int = 5
    n_warmup_steps: int = 1  # epochs
    min_resource: int = 1
    reduction_factor: int = 3


@dataclass
class StorageConf:
    backend: str | None = None  # sqlite | postgresql: refuse a URL of another kind (storage=postgres sets it)
    url: str | None = None  # None -> $DSE_STORAGE_URL -> sqlite:///results/dse.db (relative: from the repo root)
    url_env: str = "DSE_STORAGE_URL"
    password_env: str = "DSE_DB_PASSWORD"  # password from the environment (never on the command line)
    password_file: str | None = None  # or from a file (e.g. ~/.pgpass-like, one line)
    heartbeat_interval: float = 30  # seconds between a running trial's lease renewals
    grace_period: float = 90  # seconds of lease: a trial not renewed for so long is re-queued (worker lost)
    retries: int = 5  # reconnection attempts on an outage, with exponential backoff
    backoff: float = 0.5  # seconds before the first retry


@dataclass
class StudyConf:
    experiment: str = "custom"  # set by each experiment file
    name: str | None = None  # None -> "<experiment>-<budget>"
    checkpoint_dir: str = "results/checkpoints"  # shared between workers: resumes killed trials
    keep_last: bool = False  # keep a completed trial's last.pt (resume state); best.pt is always kept
    wait_for_running: bool = True  # a worker with nothing queued waits for running trials (to retry the dead)
    poll_seconds: float = 5.0
    estimate: bool = True  # before training, calibrate each queued architecture (cached) and print the study's ETA


@dataclass
class Config:
    model: ModelConf = field(default_factory=ModelConf)
    data: DataConf = field(default_factory=DataConf)
    optimizer: OptimizerConf = field(default_factory=OptimizerConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    search: SearchConf = field(default_factory=SearchConf)
    sampler: SamplerConf = field(default_factory=SamplerConf)
    pruner: PrunerConf = field(default_factory=PrunerConf)
    storage: StorageConf = field(default_factory=StorageConf)
    study: StudyConf = field(default_factory=StudyConf)
    target: TargetConf = field(default_factory=TargetConf)
    budget: str = MISSING  # name of the budget preset (smoke | quick | paper)
    dry_run: bool = False  # summarise the planned trials per block, with their cheap facts and cost; train nothing
    dry_run_list: bool = False  # with dry_run: every planned trial too, one line each
    max_trials: int | None = None  # stop each worker after so many trials (the study's budget is global)
    workers: Any = 1  # worker processes on this host (an integer, or auto: measured), over the GPUs, threads split
    retry_failed: bool = False  # put the study's failed trials back in the queue
    verbose: bool = False  # tracebacks and debug logging
    replica: int = 0  # tells copies of one worker apart, e.g. -m replica='range(16)' through a Hydra launcher


def load_experiment(name: str, _seen: tuple[str, ...] = ()) -> DictConfig:
    """One experiment file, with the search blocks of the experiments it ``include``s merged in."""
    path = EXPERIMENTS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml")))
        raise ConfigError(f"unknown experiment {name!r}; known: {known}")
    if name in _seen:
        raise ConfigError(f"experiment {name!r} includes itself (via {' -> '.join(_seen)})")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends
        first = first_line(e)
        raise ConfigError(f"malformed YAML in {path}: {first}") from e
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path} must hold a mapping, got {type(cfg).__name__}")
    includes = cfg.pop("include", None) or []
    blocks: dict[str, Any] = {}
    for inc in includes:
        blocks.update(OmegaConf.to_container(load_experiment(str(inc), (*_seen, name)).search.blocks))
    if blocks:
        own_node = OmegaConf.select(cfg, "search.blocks")
        own = OmegaConf.to_container(own_node) if own_node is not None else {}
        cfg = OmegaConf.merge(cfg, {"search": {"blocks": {**blocks, **own}}})
    return cfg


#: study.experiment of an experiment registered by name only (``register_configs``): composing it is refused
UNLOADED = "(not loaded)"
_PLAIN_NAMES = re.compile(r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*")


def wanted_experiments(overrides: list[str]) -> set[str] | None:
    """The experiments an override list composes (the default's when it names none); None when it says so in a
    way only Hydra can expand (``glob(...)``, ``choice(...)``, ranges), so every experiment must be there."""
    given = [o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=", 1)[0] == "experiment" and "=" in o]
    if not given:
        defaults = OmegaConf.load(CONF_DIR / "config.yaml").get("defaults", [])
        given = [str(d["experiment"]) for d in defaults if isinstance(d, DictConfig) and "experiment" in d]
    if not all(_PLAIN_NAMES.fullmatch(v) for v in given):
        return None
    return {name for v in given for name in v.split(",")}


def register_configs(overrides: list[str] | None = None) -> None:
    """Register the schema and the experiments in Hydra's ConfigStore. Every experiment file is read (and
    checked); those ``overrides`` composes are stored in full, the others by name only (so ``--help`` and shell
    completion list them): Hydra deep-copies the whole store once per option it looks up, about a hundred times
    for ``--help``, so every full experiment there costs (measured: 15 of 17 s of a profiled ``--help`` with all
    of them, 1 s without). None: all in full."""
    cs = ConfigStore.instance()
    cs.store(name="dse_schema", node=Config)
    wanted = wanted_experiments(overrides) if overrides is not None else None
    for path in sorted(EXPERIMENTS_DIR.glob("*.yaml")):
        node: Any = load_experiment(path.stem)  # every file is read: a malformed one is said whichever runs
        if wanted is not None and path.stem not in wanted:
            node = {"study": {"experiment": UNLOADED}}
        cs.store(group="experiment", name=path.stem, node=node, package="_global_")


def experiment_names() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose the config like ``python -m dse.sweep`` does (also for tests and library use)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="dse"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides or []))
    return cfg


def study_name(cfg: DictConfig) -> str:
    """The study's name, checked: it names a checkpoint folder, so no path separators and no "..";"""
    name = cfg.study.name or f"{cfg.study.experiment}-{cfg.budget}"
    if not STUDY_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"study.name={name!r} is not allowed; use 1-120 letters, digits and -_. (starting with a "
                          "letter or digit, no '..', no path separators)")
    return name


def check(cfg: DictConfig) -> None:
    """Values of the right type that are still not allowed: one line each, before anything runs."""
    if cfg.study.experiment == UNLOADED:  # a name-only experiment: the override list did not name it plainly
        raise ConfigError("the experiment was not loaded; name it on the command line as experiment=NAME "
                          f"(one of: {', '.join(experiment_names())})")
    s = cfg.storage
    rules = [
        (s.backend in (None, "sqlite", "postgresql"), f"storage.backend={s.backend!r}", "sqlite, postgresql"),
        (s.heartbeat_interval > 0, f"storage.heartbeat_interval={s.heartbeat_interval}", "seconds > 0"),
        (s.grace_period > s.heartbeat_interval, f"storage.grace_period={s.grace_period}",
         f"seconds > storage.heartbeat_interval ({s.heartbeat_interval}): the lease must outlive a renewal"),
        (s.retries >= 0, f"storage.retries={s.retries}", "an integer >= 0"),
        (s.backoff >= 0, f"storage.backoff={s.backoff}", "seconds >= 0"),
        (cfg.workers == "auto" or isinstance(cfg.workers, int) and not isinstance(cfg.workers, bool)
         and cfg.workers >= 1, f"workers={cfg.workers!r}", "an integer >= 1, or auto"),
        (cfg.trainer.channels_last in (True, False, "auto"), f"trainer.channels_last={cfg.trainer.channels_last!r}",
         "true, false, auto"),
        (cfg.max_trials is None or cfg.max_trials >= 1, f"max_trials={cfg.max_trials}", "an integer >= 1 or null"),
        (cfg.study.poll_seconds > 0, f"study.poll_seconds={cfg.study.poll_seconds}", "seconds > 0"),
        (cfg.search.mode in ("grid", "sample"), f"search.mode={cfg.search.mode!r}", "grid, sample"),
        (cfg.target.precision in ("int8", "fp32"), f"target.precision={cfg.target.precision!r}", "int8, fp32"),
        (cfg.target.latency in ("auto", "always", "never"), f"target.latency={cfg.target.latency!r}",
         "auto, always, never"),
        (cfg.target.latency != "never" or cfg.search.constraints.max_latency_ms is None
         and "latency_ms" not in cfg.search.objectives, "target.latency='never'",
         "auto or always while search.constraints.max_latency_ms or the latency_ms objective needs it"),
        *((v is None or v > 0, f"search.constraints.{k}={v}", "a number > 0, or null")
          for k, v in cfg.search.constraints.items()),
    ]
    for ok, what, allowed in rules:
        if not ok:
            raise ConfigError(f"{what} is not allowed; allowed: {allowed}")
    study_name(cfg)
