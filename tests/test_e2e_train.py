"""End to end on the real CIFAR-10 JPEG copy: decode, split, train Shallow SqueezeNext-06-0.4x, checkpoint.

Data: $DSE_DATA_DIR, else ../shared/data/cifar10-jpg beside the repository (skipped with the reason when absent).
Budget: about a minute on 2 quiet CPU cores (10,000 training images x 2 epochs, float32, NCHW, every core; each
epoch evaluates 2,000 validation and a class-balanced 2,000 of the 10,000 test images). float32 and
the default memory format are fixed on purpose: they are safe and reasonably fast on every CPU of the pool, while
bf16 is 3x slower on CPUs without native bf16 (AMD Zen 3) and channels_last crashed one of them (see
dse/autotune.py); which settings are fastest is the probe's business, not this test's. Run: `make test-e2e` or
`pytest -m e2e -s tests/test_e2e_train.py` (-s prints the per-epoch accuracies).
"""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import real_cifar10_dir

from dse.data import DataConfig, load_data
from dse.models import spec_from_name
from dse.train import OptimConfig, TrainConfig, evaluate, fit, load_model

pytestmark = pytest.mark.e2e

DATA = real_cifar10_dir()
needs_data = pytest.mark.skipif(
    DATA is None,
    reason="real CIFAR-10 not found: set DSE_DATA_DIR or provide "
    "../shared/data/cifar10-jpg (ImageFolder train/ and test/)",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    logging.getLogger("dse").setLevel(logging.INFO)
    bundle = load_data(DataConfig(root=str(DATA), val_size=2000, subset_size=10_000, test_size=2000))
    ckpt = tmp_path_factory.mktemp("e2e-ckpt")
    spec = spec_from_name("shallow_sqnxt_06_0_4x")
    train = TrainConfig(
        epochs=2, precision="fp32", channels_last=False, checkpoint_dir=str(ckpt), progress="log"
    )
    result = fit(spec, bundle, OptimConfig(lr=0.05, schedule="none"), train)
    for m in result.epochs:
        print(
            f"epoch {m.epoch}: train loss {m.train_loss:.3f} acc {m.train_acc:.2f}%  val {m.val_acc:.2f}%  "
            f"test {m.test_acc:.2f}%  ({m.train_seconds:.1f} s train, {m.eval_seconds:.1f} s eval)"
        )
    return bundle, result


@needs_data
def test_real_data_is_cifar10(run) -> None:
    bundle, _ = run
    assert bundle.sizes() == {"train": 10_000, "val": 2000, "test": 2000}
    assert bundle.classes[:3] == ["airplane", "automobile", "bird"] and bundle.num_classes == 10
    assert torch.bincount(bundle.train_y).tolist() == [1000] * 10
    assert torch.bincount(bundle.val_y).tolist() == [200] * 10
    assert torch.bincount(bundle.test_y).tolist() == [200] * 10
    assert bundle.train_x.dtype == torch.uint8 and bundle.train_x.shape[1:] == (3, 32, 32)


@needs_data
def test_shallow_squeezenext_learns(run) -> None:
    _, r = run
    val = [m.val_acc for m in r.epochs]
    assert val[-1] > 30 and val[-1] > val[0], val  # chance is 10 %
    assert r.epochs[-1].train_loss < r.epochs[0].train_loss
    assert r.best_val_acc == max(val) and r.test_acc > 25


@needs_data
def test_best_checkpoint_reproduces_test_accuracy(run) -> None:
    bundle, r = run
    model, spec = load_model(r.best_checkpoint)
    assert spec.name == "shallow_sqnxt_06_0_4x"
    _, acc = evaluate(model, bundle, "test", 1000, precision="fp32")
    assert abs(acc - r.test_acc) < 0.2  # float32 both times: at most a rounding-level flip of an image or two
