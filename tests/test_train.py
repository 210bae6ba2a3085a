"""dse.train: optimizers, schedules, fit, resume, divergence, checkpoints and config errors (small, CPU)."""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

import dse.models
import dse.train
from dse.errors import CheckpointError, ConfigError, DivergedError, DSEError
from dse.models import spec_from_name
from dse.train import (
    DEFAULT_LR,
    OPTIMIZERS,
    SCHEDULES,
    EpochMetrics,
    OptimConfig,
    TrainConfig,
    build_optimizer,
    build_scheduler,
    evaluate,
    fit,
    load_checkpoint,
    load_model,
    steps_per_epoch,
)

SPEC = spec_from_name("shallow_sqnxt_06_0_4x")
TIMING = ("train_seconds", "eval_seconds", "warmup_seconds")


def quick(**kw) -> TrainConfig:
    kw.setdefault("epochs", 2)
    kw.setdefault("batch_size", 32)
    kw.setdefault("eval_batch_size", 40)
    kw.setdefault("device", "cpu")
    kw.setdefault("progress", "none")
    kw.setdefault("threads", 1)  # tiny batches on a shared 2-core machine: 2 OpenMP threads only wait
    return TrainConfig(**kw)


def numbers(m: EpochMetrics) -> dict:
    return {k: v for k, v in dataclasses.asdict(m).items() if k not in TIMING}


# ------------------------------------------------------------------------------------------ optimizers
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_lowers_the_loss(name: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(32, 3, 4, 4), torch.arange(32) % 4
    opt = build_optimizer(model.parameters(), OptimConfig(name=name))
    assert opt.param_groups[0]["lr"] == DEFAULT_LR[name]
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.01, f"{name}: {losses[0]:.4f} -> {losses[-1]:.4f}"


def test_optimizer_settings() -> None:
    p = [nn.Parameter(torch.zeros(2))]
    sgd = build_optimizer(p, OptimConfig())
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9 and sgd.defaults["lr"] == 0.01
    assert sgd.defaults["weight_decay"] == 5e-4
    ab = build_optimizer(p, OptimConfig(name="adabound"))
    assert ab.defaults["lr"] == 1e-3 and ab.defaults["betas"] == (0.9, 0.999) and ab.defaults["final_lr"] == 0.1
    assert ab.defaults["gamma"] == 1e-3
    assert build_optimizer(p, OptimConfig(name="adam", lr=0.3)).defaults["lr"] == 0.3
    assert not build_optimizer(p, OptimConfig(name="sgd")).defaults["nesterov"]


# --------------------------------------------------------------------------------------------- schedules
def lrs(schedule: str, epochs: int = 8, steps: int = 3, name: str = "sgd_nesterov") -> list[float]:
    opt = build_optimizer([nn.Parameter(torch.zeros(1))], OptimConfig(name=name, schedule=schedule, lr=0.1))
    sched = build_scheduler(opt, OptimConfig(name=name, schedule=schedule, lr=0.1), epochs, steps)
    out = []
    for _ in range(epochs):
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            if schedule == "onecycle":
                sched.step()
        if schedule != "onecycle":
            sched.step()
    return out


def test_step_schedule_decays_at_half_and_three_quarters() -> None:
    per_epoch = lrs("step")[::3]
    assert per_epoch == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2)


def test_other_schedules() -> None:
    cos = lrs("cosine")[::3]
    assert cos[0] == pytest.approx(0.1) and cos == sorted(cos, reverse=True) and len(set(cos)) == 8 and cos[-1] < 0.01
    one = lrs("onecycle")
    peak = max(range(len(one)), key=one.__getitem__)
    assert one[peak] == pytest.approx(0.1, rel=0.01) and 0 < peak < len(one) - 1 and one[-1] < one[0]
    assert lrs("none") == [0.1] * 24
    assert len(lrs("onecycle", name="adagrad")) == 24  # no momentum to cycle: still works
    assert set(SCHEDULES) == {"step", "cosine", "onecycle", "none"}


def test_steps_per_epoch_matches_batches() -> None:
    assert steps_per_epoch(160, 32) == 5 and steps_per_epoch(161, 32) == 5 and steps_per_epoch(162, 32) == 6


# ---------------------------------------------------------------------------------------------------- fit
def test_fit_learns_and_reports(tiny_bundle) -> None:
    seen = []
    r = fit(SPEC, tiny_bundle, OptimConfig(lr=0.05, schedule="none"), quick(epochs=3), on_epoch=seen.append)
    assert [m.epoch for m in r.epochs] == [1, 2, 3] and seen == r.epochs
    assert r.epochs[-1].train_loss < r.epochs[0].train_loss
    assert max(m.val_acc for m in r.epochs) > 20  # 10 classes: chance is 10 %
    best = max(r.epochs, key=lambda m: m.val_acc)
    assert r.best_val_acc == best.val_acc and r.best_epoch == best.epoch and r.test_acc == best.test_acc
    assert r.final_val_acc == r.epochs[-1].val_acc and r.final_test_acc == r.epochs[-1].test_acc
    facts = dse.models.model_facts(SPEC)
    assert (r.params, r.macs, r.checkpoint_bytes) == (facts.params, facts.macs, facts.checkpoint_bytes)
    assert r.device == "cpu" and r.precision == "fp32" and r.torch_version == torch.__version__
    assert r.best_checkpoint is None and r.resumed_from_epoch == 0
    assert r.sec_per_epoch == pytest.approx(sum(m.train_seconds for m in r.epochs) / 3)
    assert all(0 <= m.train_acc <= 100 and 0 <= m.test_acc <= 100 for m in r.epochs)
    assert r.to_dict()["epochs"][0]["epoch"] == 1


def test_fit_is_seeded(tiny_bundle) -> None:
    a = fit(SPEC, tiny_bundle, OptimConfig(), quick(epochs=1, seed=3))
    b = fit(SPEC, tiny_bundle, OptimConfig(), quick(epochs=1, seed=3))
    c = fit(SPEC, tiny_bundle, OptimConfig(), quick(epochs=1, seed=4))
    assert numbers(a.epochs[0]) == numbers(b.epochs[0]) != numbers(c.epochs[0])


@pytest.mark.parametrize("kw", [{"precision": "bf16"}, {"channels_last": True}, {"deterministic": True}])
def test_fit_options(tiny_bundle, kw: dict) -> None:
    r = fit(SPEC, tiny_bundle, OptimConfig(), quick(epochs=1, **kw))
    assert math.isfinite(r.epochs[0].train_loss) and r.precision == kw.get("precision", "fp32")
    assert not torch.are_deterministic_algorithms_enabled()  # restored after fit


def test_threads_apply_during_fit_only(tiny_bundle) -> None:
    before = torch.get_num_threads()
    seen = []
    fit(
        SPEC,
        tiny_bundle,
        OptimConfig(),
        quick(epochs=1, threads=1),
        on_epoch=lambda m: seen.append(torch.get_num_threads()),
    )
    assert seen == [1] and torch.get_num_threads() == before


def test_no_validation_split_picks_last_epoch(tiny_bundle) -> None:
    empty = dataclasses.replace(tiny_bundle, val_x=tiny_bundle.val_x[:0], val_y=tiny_bundle.val_y[:0])
    r = fit(SPEC, empty, OptimConfig(), quick(epochs=2))
    assert math.isnan(r.best_val_acc) and r.best_epoch == 2 and r.test_acc == r.final_test_acc


# ------------------------------------------------------------------------------------------ resume
class Stop(Exception):
    pass


@pytest.mark.parametrize(
    "optim",
    [OptimConfig(lr=0.05), OptimConfig(name="adabound", schedule="onecycle")],  # step: decays at epoch 2
    ids=["sgd_nesterov-step", "adabound-onecycle"],
)
def test_killed_and_resumed_trial_matches_uninterrupted(tiny_bundle, tmp_path: Path, optim: OptimConfig) -> None:
    whole = fit(SPEC, tiny_bundle, optim, quick(epochs=4, checkpoint_dir=str(tmp_path / "a")))

    def die_at_2(m: EpochMetrics) -> None:
        if m.epoch == 2:
            raise Stop

    cfg = quick(epochs=4, checkpoint_dir=str(tmp_path / "b"))
    with pytest.raises(Stop):
        fit(SPEC, tiny_bundle, optim, cfg, on_epoch=die_at_2)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 2
    resumed_epochs = []
    resumed = fit(SPEC, tiny_bundle, optim, cfg, on_epoch=lambda m: resumed_epochs.append(m.epoch))
    assert resumed.resumed_from_epoch == 2 and resumed_epochs == [3, 4]
    assert [numbers(m) for m in resumed.epochs] == [numbers(m) for m in whole.epochs]
    assert (resumed.best_epoch, resumed.test_acc) == (whole.best_epoch, whole.test_acc)

    # a finished trial is not trained again
    done = fit(SPEC, tiny_bundle, optim, cfg, on_epoch=lambda m: pytest.fail("trained again"))
    assert done.resumed_from_epoch == 4 and [numbers(m) for m in done.epochs] == [numbers(m) for m in whole.epochs]


def test_resume_ignores_a_different_config(tiny_bundle, tmp_path: Path, caplog) -> None:
    d = str(tmp_path / "c")
    fit(SPEC, tiny_bundle, OptimConfig(), quick(epochs=1, checkpoint_dir=d))
    r = fit(SPEC, tiny_bundle, OptimConfig(lr=0.02), quick(epochs=1, checkpoint_dir=d))
    assert r.resumed_from_epoch == 0 and "different optim" in caplog.text
    r = fit(SPEC, tiny_bundle, OptimConfig(lr=0.02), quick(epochs=1, checkpoint_dir=d, resume=False))
    assert r.resumed_from_epoch == 0


def test_damaged_last_checkpoint_restarts(tiny_bundle, tmp_path: Path, caplog) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "last.pt").write_bytes(b"\x00" * 100)
    r = fit(SPEC, tiny_bundle, OptimConfig(), quick(epochs=1, checkpoint_dir=str(d)))
    assert r.resumed_from_epoch == 0 and "not resuming" in caplog.text
    assert load_checkpoint(d / "last.pt")["epoch"] == 1


# -------------------------------------------------------------------------------------------- divergence
def test_huge_lr_diverges_without_checkpoint(tiny_bundle, tmp_path: Path) -> None:
    with pytest.raises(DivergedError) as e:
        fit(SPEC, tiny_bundle, OptimConfig(name="sgd", lr=1e6), quick(checkpoint_dir=str(tmp_path)))
    assert e.value.epoch == 1 and not math.isfinite(e.value.loss) and "epoch 1" in str(e.value)
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()
    assert pickle.loads(pickle.dumps(e.value)).epoch == 1


def test_nan_injected_in_epoch_2(tiny_bundle, tmp_path: Path, monkeypatch) -> None:
    real_build = dse.train.build_model
    calls = {"n": 0}

    def poisoned(spec):
        model = real_build(spec)

        def hook(module, inp, out):
            if module.training:
                calls["n"] += 1
                if calls["n"] > 6:  # 160 images / 32 = 5 batches per epoch: batch 2 of epoch 2
                    return out * float("nan")
            return out

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(dse.train, "build_model", poisoned)
    with pytest.raises(DivergedError) as e:
        fit(SPEC, tiny_bundle, OptimConfig(), quick(epochs=3, checkpoint_dir=str(tmp_path)))
    assert e.value.epoch == 2 and math.isnan(e.value.loss)
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


# ------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def trained(tiny_bundle, tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    r = fit(SPEC, tiny_bundle, OptimConfig(lr=0.05), quick(epochs=2, checkpoint_dir=str(d)))
    return r, d


def test_checkpoint_round_trip(trained, tiny_bundle) -> None:
    r, d = trained
    assert r.best_checkpoint == str(d / "best.pt")
    best = load_checkpoint(d / "best.pt")
    assert best["kind"] == "best" and best["epoch"] == r.best_epoch and best["spec"] == SPEC.to_dict()
    assert best["metrics"]["val_acc"] == r.best_val_acc
    model, spec = load_model(d / "best.pt")
    assert spec == SPEC and not model.training
    _, test_acc = evaluate(model, tiny_bundle, "test", 40)
    assert test_acc == pytest.approx(r.test_acc)
    last = load_checkpoint(d / "last.pt")
    assert last["kind"] == "last" and last["epoch"] == 2 and len(last["history"]) == 2
    assert {"optimizer", "scheduler", "rng", "config"} <= set(last)
    assert load_model(d / "last.pt")[1] == SPEC
    assert not list(d.glob("*.tmp"))


def test_truncated_and_garbage_checkpoints(trained, tmp_path: Path) -> None:
    _, d = trained
    blob = (d / "best.pt").read_bytes()
    cases = {"truncated.pt": blob[: len(blob) // 2], "garbage.pt": os.urandom(4096), "empty.pt": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=name):
            load_checkpoint(tmp_path / name)
        with pytest.raises(CheckpointError):
            load_model(tmp_path / name)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")


def test_wrong_structure_and_mismatched_state_dict(trained, tmp_path: Path) -> None:
    _, d = trained
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a dse checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    ck = load_checkpoint(d / "best.pt")
    torch.save({**ck, "spec": {**ck["spec"], "width": 0.5}}, tmp_path / "wide.pt")
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(tmp_path / "wide.pt")
    torch.save({**ck, "spec": {**ck["spec"], "arch": "nope"}}, tmp_path / "spec.pt")
    with pytest.raises(CheckpointError, match="invalid model spec"):
        load_model(tmp_path / "spec.pt")


class _Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_pickle_with_code_is_refused(trained, tmp_path: Path) -> None:
    _, d = trained
    marker = tmp_path / "pwned"
    ck = load_checkpoint(d / "best.pt")
    torch.save({**ck, "extra": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "evil.pt")
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: OptimConfig(name="lbfgs"), "lbfgs.*sgd_nesterov, sgd, adam"),
        (lambda: OptimConfig(lr=0), "lr=0 must be"),
        (lambda: OptimConfig(lr=-0.1), "lr=-0.1"),
        (lambda: OptimConfig(lr=float("nan")), "lr=nan"),
        (lambda: OptimConfig(schedule="exp"), "exp.*step, cosine, onecycle, none"),
        (lambda: OptimConfig(momentum=0), "sgd_nesterov"),
        (lambda: OptimConfig(step_epochs=(0.75, 0.5)), "ascending"),
        (lambda: OptimConfig(betas=(0.9,)), "betas"),
        (lambda: TrainConfig(batch_size=0), "batch_size=0"),
        (lambda: TrainConfig(epochs=0), "epochs=0"),
        (lambda: TrainConfig(precision="fp8"), "fp8.*fp32, bf16, amp"),
        (lambda: TrainConfig(device="tpu"), "tpu"),
        (lambda: TrainConfig(progress="loud"), "loud"),
    ],
)
def test_config_errors(make, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        make()
    assert isinstance(e.value, DSEError) and "\n" not in str(e.value)


def test_fit_rejects_before_training(tiny_bundle, tmp_path: Path) -> None:
    never = lambda m: pytest.fail("trained")  # noqa: E731
    with pytest.raises(ConfigError, match="amp"):
        fit(SPEC, tiny_bundle, OptimConfig(), quick(precision="amp", checkpoint_dir=str(tmp_path)), never)
    with pytest.raises(ConfigError, match="num_classes=100"):
        fit(spec_from_name("shallow_sqnxt_06_0_4x", num_classes=100), tiny_bundle, OptimConfig(), quick(), never)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            fit(SPEC, tiny_bundle, OptimConfig(), quick(device="cuda"), never)
    assert not list(tmp_path.iterdir())


def test_lists_from_yaml_are_accepted() -> None:
    c = OptimConfig(betas=[0.8, 0.99], step_epochs=[0.3, 0.6, 0.9])
    assert c.betas == (0.8, 0.99) and c.step_epochs == (0.3, 0.6, 0.9) and hash(c)
    assert c.to_dict()["betas"] == [0.8, 0.99]


# ------------------------------------------------------------------------------------- CUDA devices, on the CPU
def test_cuda_devices_are_always_indexed(monkeypatch) -> None:
    from dse.train import resolve_device

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("cuda") == torch.device("cuda", 2)
    assert resolve_device("auto") == torch.device("cuda", 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"cuda:7.*4 GPUs \(cuda:0..cuda:3\)"):
        resolve_device("cuda:7")


def test_runtime_makes_the_trial_device_current_and_caps_it_by_index(monkeypatch) -> None:
    # torch.cuda.set_per_process_memory_fraction raises ValueError for a device without an index, and a graph
    # captured while another device is current records nothing: both need the indexed, current device
    import dse.train as T

    calls = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", torch.device(d))))

    def fraction(f, device):
        if torch.device(device).index is None:
            raise ValueError("Expected a cuda device with a specified index")
        calls.append(("fraction", f, torch.device(device)))

    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", fraction)
    train = TrainConfig(device="cpu", gpu_memory_fraction=0.25)
    with T._runtime(train, torch.device("cuda", 3)):
        assert calls == [("set_device", torch.device("cuda", 3)), ("fraction", 0.25, torch.device("cuda", 3))]
    assert calls[-1] == ("set_device", torch.device("cuda", 0))  # the caller's current device restored
