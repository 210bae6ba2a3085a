"""Data fixtures shared by the sweep, config and scale-out tests (import them into a test module).

`tiny_imagefolder`: a 10-class ImageFolder of coloured 32x32 PNGs that the tests write themselves: each class
has its own colour and stripe direction plus noise, so a model learns it within an epoch or two.
`real_cifar10`: the real CIFAR-10 copy (../shared/data/cifar10-jpg or $DSE_DATA_DIR); skips when absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def write_imagefolder(root: Path, per_class_train: int = 30, per_class_test: int = 10, classes: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class_train), ("test", per_class_test)):
        for c in range(classes):
            d = root / split / f"class{c:02d}"
            d.mkdir(parents=True, exist_ok=True)
            base = np.zeros((32, 32, 3), np.float32)
            base[..., c % 3] = 120 + 12 * c
            stripes = (np.arange(32) // 4 % 2 * 80).astype(np.float32)
            base += stripes[:, None, None] if c < 5 else stripes[None, :, None]
            for i in range(n):
                img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_imagefolder(tmp_path_factory) -> Path:
    return write_imagefolder(tmp_path_factory.mktemp("tinyfolder"))


def real_cifar10_path() -> Path | None:
    for cand in (os.environ.get("DSE_DATA_DIR"), REPO.parent / "shared" / "data" / "cifar10-jpg"):
        if cand and (Path(cand) / "train").is_dir() and (Path(cand) / "test").is_dir():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def real_cifar10() -> Path:
    p = real_cifar10_path()
    if p is None:
        pytest.skip("the real CIFAR-10 copy (../shared/data/cifar10-jpg or $DSE_DATA_DIR) is not here")
    return p
