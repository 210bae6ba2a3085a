"""The default study's promises, checked on its plan (composition and dry-run planning; nothing is trained).

`python -m dse.sweep` = experiment=cpu budget=quick: the CIFAR-10 rows a 2-core CPU trains to a meaningful accuracy
in about a quarter of an hour; every other row of the paper's tables is planned by experiment=cpu_gpu with the
command its YAML states. The measurements behind the numbers below are in the README ("What the default study
costs and shows"), taken on this project's 2-core VMs: an AMD EPYC Zen 3 without native bf16 (float32, as `auto`
chose there) for the accuracies of the 16,000 x 2 recipe and the costs below.
"""

from __future__ import annotations

import re
import shlex

import pytest

from dse.config import EXPERIMENTS_DIR, compose
from dse.space import plan_grid

# Measured (one thread, one-cycle peak lr 0.2, test accuracy on 2,000 class-balanced test images): the weakest
# row, Shallow SqueezeNext-06-0.125x, reached 34.7-35.5 % after 10,000 images x 2 epochs and 36.8 % after
# 15,000 x 2 in bf16 on the Intel Xeon with AMX; in float32 on the AMD EPYC Zen 3 (what auto chose there),
# 34.70 % after 15,000 x 2, 37.35 % after 16,000 x 2, 39.05 % after 17,500 x 2 (2026-12-02). So every default row
# needs at least 32,000 image-epochs with that schedule.
MIN_IMAGE_EPOCHS = 32_000
MIN_PEAK_LR = 0.2

# Cost of one training image (forward + backward + SGD step, batch 128, float32; channels_last from 1.7 M MACs up,
# as auto chose), in wall milliseconds: each row's seconds per epoch / 16,000 images in the default study's fresh
# run on the 2-core AMD EPYC (family 25 model 1, Zen 3, no avx512_bf16), two one-thread workers side by side
# (workers=auto), quiet, 2026-12-02. Evaluation (validation + test images, forward only) counts as a third of a
# training image.
MEASURED_MS = {
    "shallow_sqnxt_06_0_125x": 1.29, "shallow_sqnxt_06_0_15x": 1.53, "shallow_sqnxt_06_0_2x": 1.72,
    "shallow_sqnxt_06_0_3x": 2.21, "shallow_sqnxt_12_0_4x": 4.35, "shallow_sqnxt_14_0_5x": 5.14,
    "shallow_sqnxt_06_0_6x": 4.55, "shallow_sqnxt_07_0_7x": 6.15,
}
MS_PER_IMAGE = 1.7  # fixed cost per image (small layers are bound by per-op overheads)
MS_PER_MMAC = 1.2  # per million forward MACs (an envelope: deep, narrow rows cost more per MAC)
WORKERS = 2  # what workers=auto chose on the 2-core machine (2 x 1 thread against 1 x 2 threads)
STARTUP_S = 90  # start to first training step: planning, the settings probe and calibration (<= 60 s), workers
# The promise is `make sweep` in at most 15 minutes including the install (128 s on a fresh clone of this project,
# pip's cache warm, 2026-12-02; README).
INSTALL_S = 128
BUDGET_S = 15 * 60 - INSTALL_S
CPU_MAX_MACS = 9e6  # the default study trains Table 3's widths up to this many MACs per image


def row(p) -> tuple:
    """A paper-table row: model, dropout, optimizer, dataset (the seed and the budget are not part of a row)."""
    return (p.trial.model.name, p.trial.model.dropout, p.trial.optimizer["name"], p.trial.data["dataset"])


def stated_command(experiment: str) -> list[str]:
    """The `python -m dse.sweep ...` overrides an experiment file's header comment tells the user to run."""
    text = (EXPERIMENTS_DIR / f"{experiment}.yaml").read_text()
    commands = re.findall(r"^#\s+python -m dse\.sweep (.+)$", text, re.M)
    assert commands, f"dse/experiments/{experiment}.yaml states no `python -m dse.sweep` command"
    return shlex.split(commands[0])


@pytest.fixture(scope="module")
def default_plan():
    cfg = compose([])
    assert (cfg.study.experiment, cfg.budget) == ("cpu", "quick")
    return plan_grid(cfg)


def test_default_study_trains_only_cifar10_rows(default_plan):
    assert len(default_plan) >= 8
    assert {p.trial.data["dataset"] for p in default_plan} == {"cifar10"}
    assert {p.trial.model.num_classes for p in default_plan} == {10}
    assert not any(p.rejected for p in default_plan)


def test_default_rows_include_every_table3_width_a_cpu_can_train(default_plan):
    # the Spearman check compares these rows with a 4x longer budget: they must all be in the default study
    table3 = {p.trial.model.name for p in plan_grid(compose(["experiment=table3"]))}
    trained = {p.trial.model.name for p in default_plan}
    assert len(table3 & trained) >= 8
    light = {p.trial.model.name for p in plan_grid(compose(["experiment=table3"])) if p.facts.macs < CPU_MAX_MACS}
    assert light <= trained


def test_each_default_row_gets_what_the_weakest_model_needed(default_plan):
    for p in default_plan:
        images, epochs = p.trial.data["subset_size"], p.trial.trainer["epochs"]
        assert images * epochs >= MIN_IMAGE_EPOCHS, (p.trial.model.name, images, epochs)
        assert p.trial.optimizer["schedule"] == "onecycle"
        assert p.trial.optimizer["lr"] >= MIN_PEAK_LR
        # speed settings chosen by measurement on the machine at hand, never fixed to what one CPU does well
        assert p.trial.trainer["precision"] == "auto" and p.trial.trainer["channels_last"] == "auto"
    assert compose([]).workers == "auto"


def test_paper_budget_keeps_the_paper_recipe():
    for p in [*plan_grid(compose(["experiment=table3", "budget=paper"])),
              *plan_grid(compose(["experiment=cpu", "budget=paper"]))]:
        assert p.trial.optimizer["schedule"] == "step" and p.trial.trainer["epochs"] == 200
        assert p.trial.optimizer["lr"] is None  # the paper's lr per optimizer, not the quick budget's peak
        assert p.trial.data["subset_size"] is None and p.trial.data["test_size"] is None


def test_every_paper_row_is_trained_on_the_cpu_or_listed_for_a_gpu(default_plan):
    cpu = {row(p) for p in default_plan}
    gpu = {row(p) for p in plan_grid(compose(["experiment=cpu_gpu"]))}
    tables = {row(p) for p in plan_grid(compose(["experiment=tables"]))}
    assert cpu.isdisjoint(gpu)
    assert cpu | gpu == tables
    assert {r for r in gpu if r[3] == "cifar100"}, "Table 6 (CIFAR-100) is a GPU-budget table"


@pytest.mark.parametrize("experiment", ["cpu", "cpu_gpu"])
def test_the_stated_gpu_command_composes_and_plans_the_gpu_rows(experiment):
    overrides = stated_command(experiment)
    cfg = compose(overrides)
    assert cfg.study.experiment == "cpu_gpu" and cfg.budget == "paper" and cfg.trainer.device == "cuda"
    plan = plan_grid(cfg)
    heavy = {"squeezenet_1_0", "squeezenet_1_1", "sqnxt_23_1x", "sqnxt_23_2x", "shallow_sqnxt_06_2x",
             "shallow_sqnxt_12_1x", "shallow_sqnxt_06_1_5x"}
    assert heavy <= {p.trial.model.name for p in plan}


def test_cost_model_bounds_every_measured_row(default_plan):
    assert {p.trial.model.name for p in default_plan} == set(MEASURED_MS)
    for p in default_plan:
        assert MS_PER_IMAGE + MS_PER_MMAC * p.facts.macs / 1e6 >= MEASURED_MS[p.trial.model.name]


def estimated_seconds(plan) -> float:
    """The measured rows, each row's training + evaluation seconds packed longest-first on the workers (the
    envelope above bounds the rows; it overestimates the wide ones by up to 1.5x, too loose to sum)."""
    from dse.calibrate import lpt_makespan

    rows = []
    for p in plan:
        per_image = MEASURED_MS[p.trial.model.name]
        data, epochs = p.trial.data, p.trial.trainer["epochs"]
        rows.append(epochs * per_image * (data["subset_size"] + (data["val_size"] + data["test_size"]) / 3) / 1e3)
    return lpt_makespan(rows, WORKERS)


def test_estimated_cpu_cost_stays_under_the_quarter_hour(default_plan):
    seconds = STARTUP_S + estimated_seconds(default_plan)
    assert seconds > 5 * 60, "the cost model lost its rows"
    assert seconds <= BUDGET_S, f"estimated {seconds:.0f} s on {WORKERS} workers"
