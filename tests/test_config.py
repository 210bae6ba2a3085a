"""Every config group and every experiment composes and plans (dry run: resolve and count, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dse_testdata import tiny_imagefolder  # noqa: F401  (fixture)

from dse.config import CONF_DIR, EXPERIMENTS_DIR, compose, experiment_names, study_name
from dse.errors import ConfigError
from dse.space import plan_grid, resolve_trial, validate_sample_space

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]


def test_groups_are_the_documented_ones():
    assert set(GROUPS) == {"model", "data", "optimizer", "trainer", "search", "sampler", "pruner", "storage",
                           "budget", "logger", "target"}


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes_and_plans(group, option, tiny_imagefolder):
    overrides = [f"{group}={option}", "experiment=custom"]
    if option == "imagefolder":
        overrides.append(f"data.root={tiny_imagefolder}")
    cfg = compose(overrides)
    plan = plan_grid(cfg)
    assert len(plan) == 1
    assert plan[0].facts.params > 0


@pytest.mark.parametrize("name", experiment_names())
def test_every_experiment_plans(name):
    cfg = compose([f"experiment={name}", "budget=paper"])
    assert cfg.study.experiment == name
    assert study_name(cfg) == f"{name}-paper"
    if cfg.search.mode == "sample":
        validate_sample_space(cfg)
        return
    plan = plan_grid(cfg)
    assert len({p.identity for p in plan}) == len(plan) > 0


def test_experiment_trial_counts():
    count = {n: len(plan_grid(compose([f"experiment={n}", "budget=paper"])))
             for n in ("table1", "table3", "table4", "table6", "tables", "paper")}
    assert count["table1"] == 27  # 9 models x the paper's 3 runs
    assert count["table3"] == 13 and count["table4"] == 5 and count["table6"] == 10
    assert 500 <= count["paper"] <= 700  # "about 600 trials"
    # the budget caps seeds for cheap studies but keeps every configuration
    assert len(plan_grid(compose(["experiment=table1", "budget=smoke"]))) == 9


def test_table6_runs_on_cifar100_with_each_optimizer():
    plan = plan_grid(compose(["experiment=table6", "budget=paper"]))
    assert {p.trial.data["dataset"] for p in plan} == {"cifar100"}
    assert {p.trial.model.num_classes for p in plan} == {100}
    assert len({p.trial.optimizer["name"] for p in plan}) == 9


def test_identity_ignores_machine_settings_but_not_semantics():
    base = compose(["experiment=custom"])
    from omegaconf import OmegaConf

    tree = OmegaConf.to_container(base, resolve=True)
    a = resolve_trial(tree, {}, 0)
    b = resolve_trial(tree, {"trainer.device": "cuda", "data.root": "/elsewhere"}, 0)
    c = resolve_trial(tree, {"model.dropout": 0.1}, 0)
    d = resolve_trial(tree, {}, 1)
    assert a.identity == b.identity
    assert len({a.identity, c.identity, d.identity}) == 3


def test_a_row_of_an_older_version_keeps_its_identity_without_the_retired_compile_key():
    from omegaconf import OmegaConf

    from dse.space import TrialConfig

    trial = resolve_trial(OmegaConf.to_container(compose(["experiment=custom"]), resolve=True), {}, 0)
    old = trial.to_dict()
    old["trainer"] = {**old["trainer"], "compile": False}  # what older versions stored in config_json
    back = TrialConfig.from_dict(old)
    assert "compile" not in back.trainer and back.identity == trial.identity
    back.train_config(None)  # the core takes it


def test_the_hydra_schema_is_the_core_dataclasses():
    """Every field of the core's data, optimizer and trainer configs is a key of its Hydra group with the same
    default (declared once, in dse.spec), except what the sweep sets per trial."""
    import dataclasses

    from dse.config import Config
    from dse.spec import DataConfig, OptimConfig, TrainConfig

    cfg = compose([])
    schema = {f.name: f.default_factory() for f in dataclasses.fields(Config) if f.name in ("data", "optimizer",
                                                                                         "trainer")}
    per_trial = {"seed", "checkpoint_dir", "resume"}
    for group, core in (("data", DataConfig), ("optimizer", OptimConfig), ("trainer", TrainConfig)):
        fields = {f.name: f for f in dataclasses.fields(core)}
        assert set(cfg[group]) == set(fields) - per_trial, group
        for name in set(fields) - per_trial:
            f = fields[name]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            mine = getattr(schema[group], name)
            assert (list(mine) if isinstance(mine, list) else mine) == (
                list(default) if isinstance(default, tuple) else default), (group, name)


def test_budget_is_an_override_of_the_same_experiment():
    smoke = compose(["experiment=table3", "budget=smoke"])
    paper = compose(["experiment=table3", "budget=paper"])
    assert smoke.trainer.epochs < paper.trainer.epochs == 200
    assert [p.trial.model.name for p in plan_grid(smoke)] == [p.trial.model.name for p in plan_grid(paper)]


def test_constraints_reject_before_training():
    cfg = compose(["experiment=table3", "search.constraints.max_checkpoint_bytes=300000"])
    plan = plan_grid(cfg)
    rejected = [p for p in plan if p.rejected]
    assert rejected and all(p.facts.checkpoint_bytes > 300000 for p in rejected)
    assert all(p.facts.checkpoint_bytes <= 300000 for p in plan if not p.rejected)


@pytest.mark.parametrize(("overrides", "needle"), [
    (["trainer.nonsense=1"], "nonsense"),
    (["trainer.epochs=abc"], "abc"),
    (["experiment=nope"], "nope"),
    (["optimizer.name=sgdd"], "sgdd"),
    (["model.name=resnet50"], "resnet50"),
    (["model.width=-1"], "-1"),
    (["trainer.batch_size=0"], "batch"),
    (["optimizer.lr=-0.1"], "-0.1"),
    (["workers=many"], "workers='many' is not allowed; allowed: an integer >= 1, or auto"),
    (["experiment=custom", "~search.blocks.single"], "empty search space"),
    (["experiment=dse", "search.params={model.width: {type: float, low: 3.0, high: 2.0}}"], "low 3.0 > high 2.0"),
])
def test_bad_input_is_one_clear_line(overrides, needle, capsys):
    from dse.sweep import main

    rc = main([*overrides, "dry_run=true"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:")
    assert needle in err


def test_low_greater_than_high_is_refused():
    cfg = compose(["experiment=dse"])
    cfg.search.params["model.width"]["low"] = 3.0
    with pytest.raises(ConfigError, match="low 3.0 > high 2.0"):
        validate_sample_space(cfg)


def test_dry_run_lists_trials_and_rejections(capsys):
    from dse.sweep import main

    args = ["experiment=table3", "dry_run=true", "search.constraints.max_checkpoint_bytes=300000"]
    assert main(args) == 0
    out = capsys.readouterr().out
    # one line per block, in human units; no trial list unless asked
    assert "13 planned trials" in out and "rejected" in out and "estimated cost:" in out
    assert " M " in out and ("KB" in out or "MB" in out) and "Shallow SqueezeNext-06-0.125x" not in out
    assert len(out.splitlines()) < 13 and "dry_run_list=true" in out
    assert main([*args, "dry_run_list=true"]) == 0
    out = capsys.readouterr().out
    assert "Shallow SqueezeNext-06-0.125x" in out and len(out.splitlines()) > 13


def test_the_dry_run_cost_comes_from_this_machine_s_calibrations():
    from dse.sweep.dryrun import cost_line
    from dse.sweep.plan import make_plan

    plan = make_plan(compose(["experiment=table4"]), check_data=False)
    seconds = {p.identity: 60.0 * (i + 1) for i, p in enumerate(plan.trials[:3])}
    line = cost_line(plan.trials, 2, lambda row: seconds.get(row.identity))
    n = len(plan.trials)
    assert line.startswith("estimated cost: 6 min") and f"the 3 of {n} trials calibrated" in line
    assert "about 3 min" in line and "on 2 workers" in line
    assert "unknown" in cost_line(plan.trials, 1, lambda row: None)


def test_planning_validates_everything_before_storage(tmp_path):
    from dse.sweep.plan import make_plan
    from dse.sweep.record import make_pruner, make_sampler

    db = tmp_path / "never.db"
    cfg = compose(["experiment=table4", f"storage.url=sqlite:///{db}"])
    make_plan(cfg, check_data=False)
    make_sampler(cfg), make_pruner(cfg)
    assert not db.exists()


def test_experiment_files_are_where_the_design_says():
    assert EXPERIMENTS_DIR.name == "experiments" and (EXPERIMENTS_DIR / "paper_tables").is_dir()
    assert {f"table{i}" for i in range(1, 8)} <= set(experiment_names())
    assert Path(CONF_DIR / "config.yaml").is_file()


def test_malformed_yaml_is_one_clear_line(tmp_path, monkeypatch, capsys):
    import shutil

    import dse.config as config
    from dse.sweep import main

    exp = tmp_path / "experiments"
    shutil.copytree(EXPERIMENTS_DIR, exp)
    (exp / "broken.yaml").write_text("search:\n  blocks: {a: [1, 2\n  mode: grid\n")
    monkeypatch.setattr(config, "EXPERIMENTS_DIR", exp)
    with pytest.raises(ConfigError, match="malformed YAML in .*broken.yaml"):
        config.load_experiment("broken")
    assert main(["experiment=table4", "dry_run=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.yaml" in err


def test_worker_children_get_a_slim_plan():
    """workers=N children get the study's settings and the runnable identities, not the trial list (each queued
    row carries its config): what is sent to each child stays small however large the study."""
    import pickle

    from dse.sweep.plan import make_plan

    plan = make_plan(compose(["experiment=table3", "budget=paper"]), check_data=False)
    slim = plan.slim()
    assert slim.trials == [] and slim.runnable == []
    assert slim.runnable_identities() == [p.identity for p in plan.runnable] and len(plan.runnable) == 13
    assert (slim.name, slim.mode, slim.fingerprint, slim.objectives) == (plan.name, plan.mode, plan.fingerprint,
                                                                        plan.objectives)
    assert b"PlannedTrial" in pickle.dumps(plan) and b"PlannedTrial" not in pickle.dumps(slim)


def test_the_command_line_loads_only_the_experiments_it_names():
    """Hydra deep-copies its ConfigStore for every option it looks up (about a hundred times for --help), so the
    command line loads in full only the experiments its overrides name (the default's when none); the others are
    there by name, and composing one of those is refused in one line rather than run as an empty study."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from dse.config import check, register_configs, wanted_experiments
    from dse.errors import ConfigError

    assert wanted_experiments([]) == {"cpu"}  # dse/conf/config.yaml's default
    assert wanted_experiments(["experiment=table3,table4", "budget=smoke"]) == {"table3", "table4"}
    assert wanted_experiments(["+experiment=dse"]) == {"dse"}
    assert wanted_experiments(["experiment=glob(table*)"]) is None  # only Hydra can expand it: load every one
    try:
        register_configs(["experiment=table3"])
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="dse"):
            named = hydra_compose(config_name="config", overrides=["experiment=table3"])
            other = hydra_compose(config_name="config", overrides=["experiment=table4"])
        check(named)
        assert named.study.experiment == "table3" and named.search.blocks
        with pytest.raises(ConfigError, match="experiment was not loaded; name it on the command line"):
            check(other)
    finally:
        register_configs()  # every experiment in full again, for the tests after this one
        GlobalHydra.instance().clear()
    assert compose(["experiment=table4"]).study.experiment == "table4"
