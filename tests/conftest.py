"""Shared fixtures: datasets written by the tests in the official formats, and a small in-memory bundle.

Official formats (what dse.data reads):
- CIFAR-10 python: cifar-10-batches-py/data_batch_1..5, test_batch (pickled dicts: b"data" uint8 (N, 3072),
  b"labels" list of int) and batches.meta (b"label_names").
- CIFAR-100 python: cifar-100-python/train, test (b"data", b"fine_labels", b"coarse_labels") and meta
  (b"fine_label_names").
- ImageFolder: root/train/<class>/*.jpg, root/test/<class>/*.jpg.

Every test gets its own DSE_CACHE_DIR (so no test writes into ~/.cache/dse) except tests marked e2e, which use
the real cache so the 60,000 JPEGs are decoded once per machine, not once per run.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end tests on real data (../shared/data/cifar10-jpg); slower")
    # torchvision 0.29 deprecates its decoders (dse.data uses them, with a PIL fallback); not the tests' concern
    config.addinivalue_line(
        "filterwarnings", "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning"
    )
    # under pytest-xdist (make test), each test process trains on its share of the cores: with every process on
    # every core, OpenMP threads that lose their core spin and wait (the sweep's own rule, dse/sweep/launch.py)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


@pytest.fixture(autouse=True)
def _isolated_data_cache(request: pytest.FixtureRequest, tmp_path_factory, monkeypatch) -> None:
    # run folders (Hydra's .hydra/ and sweep.log) of the sweeps the tests start go to a temporary folder
    monkeypatch.setenv("DSE_RUNS_DIR", str(tmp_path_factory.mktemp("runs")))
    if request.node.get_closest_marker("e2e") is None:
        monkeypatch.setenv("DSE_CACHE_DIR", str(tmp_path_factory.mktemp("dse-cache")))


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    # code under test may set the process-wide thread count (the RTMaps component sets 1, as it should inside
    # RTMaps); left behind, every later in-process test would train on one core (measured: e2e training 2.7x slower)
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def class_images(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """uint8 images (N, 3, 32, 32) a small CNN can tell apart: a colour per class plus noise."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    base = np.zeros((n, 3, 32, 32), np.float32)
    base[np.arange(n), labels % 3] = 60 + 18 * (labels % 10)[:, None, None]
    stripes = (np.arange(32) // 4 % 2 * 90).astype(np.float32)
    base += np.where((labels % 2 == 0)[:, None, None, None], stripes[None, None, :, None], stripes[None, None, None, :])
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def write_cifar10(root: Path, per_batch: int = 20, test: int = 20, seed: int = 0) -> Path:
    """root/cifar-10-batches-py with five training batches of `per_batch` images (classes cycling 0..9)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    names = [f"class_{i}".encode() for i in range(10)]
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch}, f)
    batches = [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]
    for k, (name, n) in enumerate(batches):
        labels = np.arange(n) % 10
        x = class_images(labels, seed + k)
        with open(d / name, "wb") as f:
            pickle.dump(
                {
                    b"batch_label": name.encode(),
                    b"labels": labels.tolist(),
                    b"data": x.reshape(n, -1),
                    b"filenames": [b"x.png"] * n,
                },
                f,
            )
    return root


def write_cifar100(root: Path, train: int = 200, test: int = 100) -> Path:
    """root/cifar-100-python with `train`/`test` images, fine labels cycling 0..99."""
    d = root / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "meta", "wb") as f:
        pickle.dump(
            {
                b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)],
            },
            f,
        )
    for k, (name, n) in enumerate((("train", train), ("test", test))):
        fine = np.arange(n) % 100
        with open(d / name, "wb") as f:
            pickle.dump(
                {
                    b"filenames": [b"x.png"] * n,
                    b"fine_labels": fine.tolist(),
                    b"coarse_labels": (fine // 5).tolist(),
                    b"data": class_images(fine, k).reshape(n, -1),
                },
                f,
            )
    return root


def write_jpeg_tree(
    root: Path, classes: tuple[str, ...] = ("cat", "dog", "frog"), train: int = 4, test: int = 2
) -> Path:
    """root/{train,test}/<class>/NNNN.jpg: flat colour per class (JPEG keeps flat colours almost exactly)."""
    from PIL import Image

    for split, n in (("train", train), ("test", test)):
        for ci, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                colour = (40 + 80 * ci, 200 - 50 * ci, 10 * i)
                Image.new("RGB", (32, 32), colour).save(d / f"{i:04d}.jpg", quality=95)
    return root


@pytest.fixture
def cifar10_root(tmp_path: Path) -> Path:
    return write_cifar10(tmp_path / "data")


@pytest.fixture
def cifar100_root(tmp_path: Path) -> Path:
    return write_cifar100(tmp_path / "data")


@pytest.fixture
def jpeg_root(tmp_path: Path) -> Path:
    return write_jpeg_tree(tmp_path / "jpg")


@pytest.fixture(scope="session")
def tiny_bundle():
    """A learnable 10-class DataBundle in memory: 160 train, 40 val, 40 test images (CPU)."""
    from dse.data import DataBundle

    def split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = np.arange(n) % 10
        return torch.from_numpy(class_images(y, seed)), torch.from_numpy(y.astype(np.int64))

    (tx, ty), (vx, vy), (sx, sy) = split(160, 1), split(40, 2), split(40, 3)
    return DataBundle(
        train_x=tx,
        train_y=ty,
        val_x=vx,
        val_y=vy,
        test_x=sx,
        test_y=sy,
        num_classes=10,
        classes=[f"class_{i}" for i in range(10)],
        source="synthetic:tiny",
        fingerprint="tiny0001",
    )


def real_cifar10_dir() -> Path | None:
    """The real CIFAR-10 ImageFolder copy: $DSE_DATA_DIR, else ../shared/data/cifar10-jpg; None if absent."""
    cand = Path(os.environ.get("DSE_DATA_DIR") or REPO.parent / "shared" / "data" / "cifar10-jpg")
    return cand if (cand / "train").is_dir() and (cand / "test").is_dir() else None
