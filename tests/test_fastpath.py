"""dse.fastpath and the fast path of dse.train.fit: device-side augmentation draws, mode selection and its
logged fallbacks, the graph mode's step (run uncaptured on the CPU) against the eager step, the lr tensor under
every schedule, TensorBoard files. CUDA-only checks (capture equality, warm-up reuse, no host sync) are marked
`cuda` and skip without a GPU."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import pytest
import torch

import dse.train
from dse import fastpath
from dse.data import batches, device_generator, random_crop_flip
from dse.models import build_model, spec_from_name
from dse.train import OPTIMIZERS, SCHEDULES, OptimConfig, TrainConfig, fit, load_checkpoint

SPEC = spec_from_name("shallow_sqnxt_06_0_4x")
TIMING = ("train_seconds", "eval_seconds", "warmup_seconds")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def quick(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=48, eval_batch_size=40, device="cpu", progress="none", threads=1)
    return TrainConfig(**{**base, **kw})


def numbers(r) -> list[dict]:
    return [{k: v for k, v in dataclasses.asdict(m).items() if k not in TIMING} for m in r.epochs]


def assert_close(a: list[dict], b: list[dict], rel: float) -> None:
    assert len(a) == len(b)
    for ma, mb in zip(a, b, strict=True):
        assert ma.keys() == mb.keys()
        for k in ma:
            assert ma[k] == pytest.approx(mb[k], rel=rel, abs=1e-6), (k, ma, mb)


# ------------------------------------------------------------------------------------- augmentation on the device
def test_device_generator_on_cpu_draws_what_the_cpu_generator_draws(tiny_bundle) -> None:
    a = list(batches(tiny_bundle, "train", 64, train=True, generator=device_generator(7, "cpu")))
    b = list(batches(tiny_bundle, "train", 64, train=True, generator=torch.Generator().manual_seed(7)))
    c = list(batches(tiny_bundle, "train", 64, train=True, generator=device_generator(8, "cpu")))
    assert [len(y) for _, y in a] == [64, 64, 32]
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True))
    assert not torch.equal(a[0][0], c[0][0])


def test_device_draws_are_crops_and_flips_of_the_padded_image() -> None:
    x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    out = random_crop_flip(x, device_generator(0, x.device))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flips = 0
    for i in range(len(x)):
        found = None
        for dy in range(9):
            for dx in range(9):
                crop = padded[i, :, dy : dy + 32, dx : dx + 32]
                if torch.equal(out[i], crop):
                    found = "plain"
                elif torch.equal(out[i], crop.flip(-1)):
                    found = "flip"
        assert found is not None, i
        flips += found == "flip"
    assert 80 < flips < 176  # p = 0.5 over 256 images: far outside +-6 sigma otherwise


# ------------------------------------------------------------------------------------------------ mode selection
def test_choose_modes_and_fallbacks_logged_once(caplog) -> None:
    fastpath._LOGGED.clear()
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    for name in ("sgd_nesterov", "sgd", "adam", "adamax", "adadelta", "asgd", "rmsprop", "rprop"):
        assert fastpath.choose("auto", gpu, name, "step", 0.9, "bf16") == "graph", name
    assert fastpath.choose("auto", cpu, "sgd", "step", 0.9, "fp32") == "eager"
    assert fastpath.choose("compile", cpu, "adagrad", "step", 0.9, "fp32") == "compile"
    assert fastpath.choose("eager", gpu, "sgd", "step", 0.9, "fp32") == "eager"
    with caplog.at_level(logging.WARNING, logger="dse.fastpath"):
        for _ in range(3):
            assert fastpath.choose("graph", gpu, "adabound", "step", 0.9, "bf16") == "eager"
            assert fastpath.choose("auto", gpu, "adagrad", "cosine", 0.9, "fp32") == "eager"
            assert fastpath.choose("auto", gpu, "sgd", "step", 0.9, "amp") == "eager"
            assert fastpath.choose("auto", gpu, "sgd_nesterov", "onecycle", 0.9, "fp32") == "eager"
            assert fastpath.choose("graph", cpu, "sgd", "step", 0.9, "fp32") == "eager"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 5, messages
    assert any("adabound" in m for m in messages) and any("Adagrad" in m for m in messages)
    assert fastpath.choose("auto", gpu, "rmsprop", "onecycle", 0.0, "fp32") == "graph"  # nothing to cycle
    with pytest.raises(ValueError, match="fast_path='fastest'"):
        fastpath.choose("fastest", gpu, "sgd", "step", 0.9, "fp32")


def test_every_optimizer_has_a_graph_flag_or_a_reason() -> None:
    for name in OPTIMIZERS:
        reason = fastpath.graph_blocker(name, "step", 0.9, "fp32")
        assert (name in fastpath.GRAPH_FLAGS) == (reason is None), (name, reason)


def test_bad_fast_path_and_memory_fraction_are_config_errors() -> None:
    from dse.errors import ConfigError

    with pytest.raises(ConfigError, match="fast_path='fast'.*allowed: auto, graph, compile, eager"):
        TrainConfig(fast_path="fast")
    with pytest.raises(ConfigError, match="gpu_memory_fraction=1.5"):
        TrainConfig(gpu_memory_fraction=1.5)


# ------------------------------------------------------------------------- the graph mode's step, uncaptured
@pytest.mark.parametrize(
    "optim",
    [
        OptimConfig(),  # sgd_nesterov, step: fused SGD with a tensor lr
        OptimConfig(name="adam", schedule="cosine"),
        OptimConfig(name="rmsprop", schedule="onecycle", lr=0.001),
        OptimConfig(name="adadelta", schedule="step", step_epochs=(0.5,)),
        OptimConfig(name="asgd"),
        OptimConfig(name="rprop", weight_decay=0.0, lr=0.001),
    ],
    ids=lambda o: f"{o.name}-{o.schedule}",
)
def test_graph_step_uncaptured_matches_eager(tiny_bundle, monkeypatch, optim: OptimConfig) -> None:
    # 160 images in batches of 48: three full batches and a partial one of 16 per epoch
    eager = fit(SPEC, tiny_bundle, optim, quick(epochs=3, fast_path="eager"))
    monkeypatch.setattr(dse.train, "fast_path_mode", lambda *a: "graph")
    graph = fit(SPEC, tiny_bundle, optim, quick(epochs=3))
    assert eager.fast_path == "eager" and graph.fast_path == "graph"
    assert_close(numbers(graph), numbers(eager), rel=2e-4)


# the reference scheduler below is never stepped with its optimizer: PyTorch warns about that order
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_lr_tensor_follows_every_schedule(schedule: str) -> None:
    optim = OptimConfig(name="adam", schedule=schedule)
    train = quick(epochs=8)
    ref = dse.train.build_scheduler(
        dse.train.build_optimizer(build_model(SPEC).parameters(), optim), optim, train.epochs, 5
    )
    tr = dse.train._make_trainer(SPEC, build_model(SPEC), optim, train, "graph", torch.device("cpu"), 5)
    lr = tr.opt.param_groups[0]["lr"]
    assert torch.is_tensor(lr) and lr.dim() == 0
    per_iteration = schedule in dse.train.PER_ITERATION_SCHEDULES
    seen = set()
    for _ in range(train.epochs * (5 if per_iteration else 1)):
        assert float(tr.opt.param_groups[0]["lr"]) == pytest.approx(ref.get_last_lr()[0], rel=1e-6)
        assert tr.opt.param_groups[0]["lr"] is lr  # the same tensor the graph reads
        seen.add(round(float(lr), 12))
        tr.schedule_step()
        ref.step()
    assert len(seen) > 1 or schedule == "none"


def test_graph_checkpoint_resumes_in_either_mode(tiny_bundle, tmp_path: Path, monkeypatch) -> None:
    optim = OptimConfig(name="adam", schedule="cosine")
    full = fit(SPEC, tiny_bundle, optim, quick(epochs=3, fast_path="eager"))
    monkeypatch.setattr(dse.train, "fast_path_mode", lambda *a: "graph")
    with pytest.raises(_Stop):
        fit(SPEC, tiny_bundle, optim, quick(epochs=3, checkpoint_dir=str(tmp_path)), on_epoch=_stop_after(2))
    monkeypatch.undo()  # the rest of the run trains eagerly from the graph mode's checkpoint
    saved = load_checkpoint(tmp_path / "last.pt")
    assert all(isinstance(g["lr"], float) for g in saved["optimizer"]["param_groups"])
    resumed = fit(SPEC, tiny_bundle, optim, quick(epochs=3, checkpoint_dir=str(tmp_path)))
    assert resumed.resumed_from_epoch == 2
    assert_close(numbers(resumed), numbers(full), rel=2e-4)


class _Stop(Exception):
    pass


def _stop_after(epoch: int):
    def hook(m) -> None:
        if m.epoch == epoch:
            raise _Stop  # as a pruned or killed trial: the epoch's checkpoints are already written

    return hook


def test_tensorboard_scalars_per_epoch(tiny_bundle, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = tmp_path / "tb"
    r = fit(SPEC, tiny_bundle, OptimConfig(), quick(epochs=2, tensorboard_dir=str(board)))
    assert list(board.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(board))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/train", "loss/val", "accuracy/val", "accuracy/test", "lr", "seconds/train"} <= tags
    # the hparams view: what was trained and what it reached, in the same run folder
    assert {"hparam/best_val_acc", "hparam/test_acc"} <= tags and acc.PluginTagToContent("hparams")
    assert acc.Scalars("hparam/best_val_acc")[0].value == pytest.approx(r.best_val_acc, abs=1e-4)
    val = [e.value for e in acc.Scalars("accuracy/val")]
    assert [e.step for e in acc.Scalars("accuracy/val")] == [1, 2]
    assert val == pytest.approx([m.val_acc for m in r.epochs], abs=1e-4)


# --------------------------------------------------------------------------------------------------- CUDA only
@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("name", ["sgd_nesterov", "adam", "rmsprop"])
def test_captured_graph_matches_uncaptured_step_on_cuda(tiny_bundle, monkeypatch, name: str) -> None:
    optim = OptimConfig(name=name, schedule="cosine")
    base = dict(device="cuda", precision="fp32", epochs=3, batch_size=16)
    monkeypatch.setattr(dse.train, "fast_path_mode", lambda *a: "graph")
    captured = fit(SPEC, tiny_bundle, optim, quick(**base))
    assert captured.fast_path == "graph" and captured.warmup_seconds > 0
    real_step = fastpath.TrainStep

    def uncaptured(*a, **kw):
        kw["capture"] = False
        return real_step(*a, **kw)

    monkeypatch.setattr(fastpath, "TrainStep", uncaptured)
    plain = fit(SPEC, tiny_bundle, optim, quick(**base))
    assert_close(numbers(captured), numbers(plain), rel=1e-3)


@pytest.mark.cuda
@cuda
def test_augmentation_makes_no_host_sync_on_cuda(tiny_bundle) -> None:
    data = tiny_bundle.to("cuda")
    gen = device_generator(0, "cuda")
    next(batches(data, "train", 32, train=True, generator=gen))  # builds normalize's per-device constants once
    torch.cuda.set_sync_debug_mode("error")
    try:
        for xb, _ in batches(data, "train", 32, train=True, generator=gen):
            assert xb.is_cuda
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.cuda
@cuda
def test_compiled_code_is_reused_for_the_same_architecture(tiny_bundle) -> None:
    train = quick(device="cuda", epochs=1, batch_size=32, fast_path="compile")
    first = fit(SPEC, tiny_bundle, OptimConfig(), train)
    second = fit(SPEC, tiny_bundle, OptimConfig(), dataclasses.replace(train, seed=1))
    assert first.fast_path == second.fast_path == "compile"
    assert math.isfinite(second.epochs[0].train_loss)
    assert second.warmup_seconds < first.warmup_seconds / 2  # no recompilation of the same architecture


def test_trainer_keys_reach_fit_without_changing_trial_identity() -> None:
    from dse.space import TrialConfig

    def trial(**trainer) -> TrialConfig:
        return TrialConfig(SPEC, {"val_size": 500}, OptimConfig().to_dict(), {"epochs": 1, **trainer}, seed=0)

    plain = trial()
    fast = trial(fast_path="graph", gpu_memory_fraction=0.25, tensorboard_dir="results/tb")
    assert fast.identity == plain.identity  # speed and logging knobs: the same trial
    train = fast.train_config("ckpt")
    assert (train.fast_path, train.gpu_memory_fraction) == ("graph", 0.25)
    from dse.common import ROOT

    assert train.tensorboard_dir == str(ROOT / "results/tb" / fast.identity[:16])  # relative: the repository's
    assert plain.train_config(None).tensorboard_dir is None
    named = fast.train_config("ckpt", run="table4-smoke/t3-shallow_sqnxt_06_0_2x")  # the sweep's: study/trial
    assert named.tensorboard_dir == str(ROOT / "results/tb/table4-smoke/t3-shallow_sqnxt_06_0_2x")


def test_logger_group_turns_tensorboard_on() -> None:
    from dse.config import compose

    assert compose([]).trainer.tensorboard_dir is None
    assert compose(["logger=tensorboard"]).trainer.tensorboard_dir == "results/tensorboard"


def test_compile_mode_plumbing(tiny_bundle, monkeypatch) -> None:
    # torch.compile itself is exercised on CUDA (test_compiled_code_is_reused_...); here the step's compile branch
    # with the model standing in for its compiled version: the first full step is timed as warm-up, the partial
    # batch goes through the uncompiled model, the numbers are the eager ones
    keys = []
    monkeypatch.setattr(fastpath, "compile_model", lambda model: keys.append(model) or model)
    monkeypatch.setattr(fastpath, "release_compiled", lambda: keys.append("released"))
    eager = fit(SPEC, tiny_bundle, OptimConfig(), quick(fast_path="eager"))
    compiled = fit(SPEC, tiny_bundle, OptimConfig(), quick(fast_path="compile"))
    assert compiled.fast_path == "compile" and len(keys) == 2 and keys[-1] == "released"
    assert compiled.epochs[0].warmup_seconds > 0 and compiled.epochs[1].warmup_seconds == 0
    assert compiled.warmup_seconds == compiled.epochs[0].warmup_seconds
    assert numbers(compiled) == numbers(eager)


# -------------------------------------------------------------------------------- a failed capture falls back
def test_a_failing_capture_falls_back_to_eager_logged_once(tiny_bundle, monkeypatch, caplog) -> None:
    # the graph mode's step with capture on, on the CPU: the warm-up steps run, then the capture fails (injected,
    # as a capture error on a GPU would); the trial goes on eagerly and its numbers are the eager run's
    def failing_capture(self) -> None:
        raise RuntimeError("injected capture failure\nsecond line")

    monkeypatch.setattr(fastpath.TrainStep, "_capture", failing_capture)
    monkeypatch.setattr(dse.train, "fast_path_mode", lambda *a: "graph")
    real_step = fastpath.TrainStep

    def capturing(*a, **kw):
        kw["capture"] = True
        return real_step(*a, **kw)

    monkeypatch.setattr(fastpath, "TrainStep", capturing)
    fastpath._LOGGED.clear()
    with caplog.at_level(logging.WARNING, logger="dse.fastpath"):
        fell = fit(SPEC, tiny_bundle, OptimConfig(schedule="cosine"), quick(batch_size=16))
        fit(SPEC, tiny_bundle, OptimConfig(schedule="cosine"), quick(batch_size=16))
    said = [r.message for r in caplog.records if "capture failed" in r.message]
    assert len(said) == 1 and "injected capture failure" in said[0] and "second line" not in said[0]
    assert fell.fast_path == "eager"  # what ran is recorded
    monkeypatch.setattr(fastpath, "TrainStep", real_step)
    monkeypatch.setattr(dse.train, "fast_path_mode", lambda *a: "graph")
    uncaptured = fit(SPEC, tiny_bundle, OptimConfig(schedule="cosine"), quick(batch_size=16))
    assert_close(numbers(fell), numbers(uncaptured), rel=1e-4)  # every batch trained once, none skipped


def test_a_failing_compilation_falls_back_to_eager(tiny_bundle, monkeypatch) -> None:
    class Broken(torch.nn.Module):  # stands in for a compiled model whose first call fails to compile
        def forward(self, x):
            raise RuntimeError("injected compilation failure")

    monkeypatch.setattr(fastpath, "compile_model", lambda model: Broken())
    released = []
    monkeypatch.setattr(fastpath, "release_compiled", lambda: released.append(True))
    r = fit(SPEC, tiny_bundle, OptimConfig(), quick(fast_path="compile"))
    eager = fit(SPEC, tiny_bundle, OptimConfig(), quick(fast_path="eager"))
    assert r.fast_path == "eager" and released == [True]
    assert numbers(r) == numbers(eager)
