"""dse.data: official-format readers, ImageFolder, errors, cache, splits and augmentation (small files, CPU)."""

from __future__ import annotations

import os
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_cifar10, write_jpeg_tree

from dse import data as D
from dse.common import ROOT
from dse.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    DataConfig,
    batches,
    clear_memo,
    load_data,
    normalize,
    random_crop_flip,
    stratified_pick,
)
from dse.errors import ConfigError, CorruptDatasetError, DatasetNotFoundError, DSEError


@pytest.fixture(autouse=True)
def _fresh_memo():
    clear_memo()
    yield
    clear_memo()


def cfg(root: Path, **kw) -> DataConfig:
    kw.setdefault("val_size", 0)
    kw.setdefault("download", False)
    return DataConfig(root=str(root), **kw)


# ------------------------------------------------------------------------------------------ official readers
def test_cifar10_pickles_read_exactly(cifar10_root: Path) -> None:
    b = load_data(cfg(cifar10_root))
    assert b.train_x.shape == (100, 3, 32, 32) and b.train_x.dtype == torch.uint8
    assert b.test_x.shape == (20, 3, 32, 32) and b.train_y.dtype == torch.int64
    assert b.num_classes == 10 and b.classes == [f"class_{i}" for i in range(10)]
    assert b.source == f"cifar10:{cifar10_root / 'cifar-10-batches-py'}"
    with open(cifar10_root / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    # image 3 of batch 2 is training image 23 (batches concatenated in order); rows are R, G, B planes
    assert torch.equal(b.train_x[23], torch.from_numpy(raw[b"data"][3].reshape(3, 32, 32)))
    assert b.train_y[23].item() == raw[b"labels"][3]
    assert len(b.val_y) == 0


def test_cifar10_root_may_be_the_batches_folder(cifar10_root: Path) -> None:
    b = load_data(cfg(cifar10_root / "cifar-10-batches-py"))
    assert len(b.train_y) == 100


def test_cifar100_uses_fine_labels(cifar100_root: Path) -> None:
    b = load_data(cfg(cifar100_root, dataset="cifar100"))
    assert b.num_classes == 100 and b.classes[7] == "fine_7"
    assert b.train_x.shape == (200, 3, 32, 32) and b.test_x.shape == (100, 3, 32, 32)
    assert b.train_y.tolist() == [i % 100 for i in range(200)]


def test_missing_dataset_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as e:
        load_data(cfg(tmp_path / "nowhere"))
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and "DSE_DATA_DIR" in msg and "imagefolder" in msg
    assert isinstance(e.value, DSEError) and isinstance(e.value, FileNotFoundError)
    with pytest.raises(DatasetNotFoundError, match="ImageFolder"):
        load_data(cfg(tmp_path / "nowhere", dataset="imagefolder"))


def test_failed_download_is_dataset_not_found(tmp_path: Path, monkeypatch) -> None:
    import torchvision

    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DatasetNotFoundError, match="download failed") as e:
        load_data(DataConfig(root=str(tmp_path / "dl"), val_size=0, download=True))
    assert str(tmp_path / "dl") in str(e.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "code", "shape", "missing"])
def test_corrupt_batch_names_the_file(cifar10_root: Path, damage: str) -> None:
    path = cifar10_root / "cifar-10-batches-py" / "data_batch_3"
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(5000))
    elif damage == "code":  # a pickle that would run a command: refused, never executed
        path.write_bytes(pickle.dumps({b"data": _Evil(f"touch {cifar10_root / 'pwned'}"), b"labels": []}))
    elif damage == "shape":
        path.write_bytes(pickle.dumps({b"data": np.zeros((20, 3000), np.uint8), b"labels": [0] * 20}))
    else:
        path.unlink()
    with pytest.raises(CorruptDatasetError, match="data_batch_3"):
        load_data(cfg(cifar10_root))
    assert not (cifar10_root / "pwned").exists()


class _Evil:
    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


# ------------------------------------------------------------------------------------------------ ImageFolder
def test_imagefolder_reader(jpeg_root: Path) -> None:
    b = load_data(cfg(jpeg_root, dataset="imagefolder"))
    assert b.classes == ["cat", "dog", "frog"] and b.num_classes == 3
    assert b.train_x.shape == (12, 3, 32, 32) and b.test_x.shape == (6, 3, 32, 32)
    assert b.train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # dog, image 2: colour (120, 150, 20); JPEG keeps a flat colour within a few levels
    px = b.train_x[4 + 2, :, 16, 16].int()
    assert (px - torch.tensor([120, 150, 20])).abs().max() <= 3
    assert b.source == f"imagefolder:{jpeg_root}"


def test_cifar10_autodetects_imagefolder(jpeg_root: Path) -> None:
    b = load_data(cfg(jpeg_root))  # dataset="cifar10" with a train/ test/ tree
    assert b.source.startswith("imagefolder:") and len(b.train_y) == 12


def test_imagefolder_png_grey_and_odd_sizes(jpeg_root: Path) -> None:
    from PIL import Image

    Image.new("L", (32, 32), 77).save(jpeg_root / "train" / "cat" / "grey.png")
    Image.new("RGB", (48, 40), (10, 20, 30)).save(jpeg_root / "train" / "dog" / "big.jpg", quality=95)
    b = load_data(cfg(jpeg_root, dataset="imagefolder"))
    assert b.train_x.shape == (14, 3, 32, 32)
    grey = b.train_x[4]  # cat: 0000..0003.jpg then grey.png (sorted by name)
    assert grey.min() == grey.max() == 77


def test_corrupt_image_names_the_file(jpeg_root: Path) -> None:
    bad = jpeg_root / "train" / "dog" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(CorruptDatasetError, match="0001.jpg") as e:
        load_data(cfg(jpeg_root, dataset="imagefolder"))
    assert "dog" in str(e.value)


def test_test_class_without_train_folder(jpeg_root: Path) -> None:
    write_jpeg_tree(jpeg_root, classes=("yak",), train=0, test=1)
    (jpeg_root / "train" / "yak").rmdir()
    with pytest.raises(CorruptDatasetError, match="yak"):
        load_data(cfg(jpeg_root, dataset="imagefolder"))


# -------------------------------------------------------------------------------------------- cache and memo
def test_cache_written_reused_and_invalidated(jpeg_root: Path, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    c = cfg(jpeg_root, dataset="imagefolder", cache_dir=str(cache))
    first = load_data(c)
    files = list(cache.glob("*.pt"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))
    assert load_data(c) is first  # in-process memo

    clear_memo()
    decode = D._read_imagefolder
    monkeypatch.setattr(D, "_read_imagefolder", _fail)
    again = load_data(c)  # from the disk cache: decoding would fail
    assert torch.equal(again.train_x, first.train_x)

    # change one source image: new content, new size and mtime -> new fingerprint -> decoded again
    from PIL import Image

    img = jpeg_root / "train" / "cat" / "0000.jpg"
    Image.new("RGB", (32, 32), (250, 5, 5)).save(img, quality=50)
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))
    clear_memo()
    with pytest.raises(AssertionError, match="decoded"):
        load_data(c)
    monkeypatch.setattr(D, "_read_imagefolder", decode)
    changed = load_data(c)
    assert changed.fingerprint != first.fingerprint
    assert changed.train_x[0, 0].float().mean() > 200 and first.train_x[0, 0].float().mean() < 100
    assert len(list(cache.glob("*.pt"))) == 2


def _fail(*a, **k):
    raise AssertionError("decoded although a valid cache exists")


def test_damaged_cache_is_rebuilt(cifar10_root: Path, tmp_path: Path) -> None:
    c = cfg(cifar10_root, cache_dir=str(tmp_path / "cache"))
    first = load_data(c)
    (cache_file,) = (tmp_path / "cache").glob("*.pt")
    cache_file.write_bytes(b"not a cache")
    clear_memo()
    assert torch.equal(load_data(c).train_x, first.train_x)
    assert cache_file.stat().st_size > 1000


# --------------------------------------------------------------------------------------------------- splits
def test_validation_split_and_subset_are_class_balanced(cifar10_root: Path) -> None:
    # 100 training images, 10 per class
    b = load_data(cfg(cifar10_root, val_size=20, subset_size=30))
    assert torch.bincount(b.val_y, minlength=10).tolist() == [2] * 10
    assert torch.bincount(b.train_y, minlength=10).tolist() == [3] * 10
    full = load_data(cfg(cifar10_root, val_size=0))
    # val and train are disjoint images of the official training set
    rows = {bytes(x.numpy().tobytes()) for x in full.train_x}
    val_rows = {bytes(x.numpy().tobytes()) for x in b.val_x}
    train_rows = {bytes(x.numpy().tobytes()) for x in b.train_x}
    assert val_rows <= rows and train_rows <= rows and not val_rows & train_rows
    frac = load_data(cfg(cifar10_root, val_size=20, subset=0.5))
    assert torch.bincount(frac.train_y, minlength=10).tolist() == [4] * 10
    assert len({b.fingerprint, full.fingerprint, frac.fingerprint}) == 3


def test_splits_are_seeded(cifar10_root: Path) -> None:
    a = load_data(cfg(cifar10_root, val_size=30, val_seed=1))
    clear_memo()
    b = load_data(cfg(cifar10_root, val_size=30, val_seed=1))
    c = load_data(cfg(cifar10_root, val_size=30, val_seed=2))
    assert torch.equal(a.val_x, b.val_x) and a.fingerprint == b.fingerprint
    assert not torch.equal(a.val_x, c.val_x)


def test_stratified_pick_uneven() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    idx = stratified_pick(labels, 10, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[idx]).tolist() == [5, 3, 2] and len(set(idx.tolist())) == 10
    idx = stratified_pick(labels, 11, torch.Generator().manual_seed(0))
    assert len(idx) == 11


def test_split_errors(cifar10_root: Path) -> None:
    with pytest.raises(ConfigError, match="val_size=100"):
        load_data(cfg(cifar10_root, val_size=100))
    with pytest.raises(ConfigError, match="subset_size=95"):
        load_data(cfg(cifar10_root, val_size=10, subset_size=95))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"dataset": "svhn"}, "svhn.*cifar10, cifar100, imagefolder"),
        ({"val_size": -1}, "val_size=-1"),
        ({"subset": 1.5}, r"subset=1.5.*\(0, 1\]"),
        ({"subset": 0}, "subset=0"),
        ({"subset": 0.5, "subset_size": 10}, "at most one"),
        ({"subset_size": 0}, "subset_size=0"),
    ],
)
def test_data_config_validation(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DataConfig(**kw)


def test_root_and_cache_resolution(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DSE_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("DSE_CACHE_DIR", str(tmp_path / "c"))
    assert DataConfig().resolved_root() == tmp_path / "d"
    assert DataConfig().resolved_cache_dir() == tmp_path / "c"
    assert DataConfig(root="/x", cache_dir="/y").resolved_root() == Path("/x")
    monkeypatch.delenv("DSE_DATA_DIR")
    assert DataConfig().resolved_root() == ROOT / "data"


# ------------------------------------------------------------------------------------------------ augmentation
def test_crop_flip_matches_a_per_image_reference() -> None:
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = random_crop_flip(x, torch.Generator().manual_seed(5))
    # the same draws, in the same order, applied image by image
    g = torch.Generator().manual_seed(5)
    dy = torch.randint(0, 9, (16, 1, 1), generator=g).flatten()
    dx = torch.randint(0, 9, (16, 1, 1), generator=g).flatten()
    flip = (torch.rand(16, 1, 1, generator=g) < 0.5).flatten()
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(16):
        ref = padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32]
        if flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert 0 < flip.sum() < 16 and len(set(dy.tolist())) > 1


def test_augmentation_is_deterministic_per_generator() -> None:
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    a = random_crop_flip(x, torch.Generator().manual_seed(1))
    b = random_crop_flip(x, torch.Generator().manual_seed(1))
    c = random_crop_flip(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_normalize() -> None:
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    y = normalize(x)
    want = [(1 - m) / s for m, s in zip(CIFAR_MEAN, CIFAR_STD, strict=True)]
    assert torch.allclose(y[0, :, 0, 0], torch.tensor(want), atol=1e-5) and y.dtype == torch.float32
    assert normalize(x, torch.bfloat16).dtype == torch.bfloat16


def test_batches(tiny_bundle) -> None:
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    out = list(batches(tiny_bundle, "train", 64, train=True, generator=gen()))
    assert [len(y) for _, y in out] == [64, 64, 32]
    assert all(x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32) for x, _ in out)
    assert sorted(torch.cat([y for _, y in out]).tolist()) == sorted(tiny_bundle.train_y.tolist())
    again = list(batches(tiny_bundle, "train", 64, train=True, generator=gen()))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(out, again, strict=True))
    # a final batch of one image is dropped (BatchNorm cannot train on it)
    assert [len(y) for _, y in batches(tiny_bundle, "train", 53, train=True, generator=gen())] == [53, 53, 53]
    ev = list(batches(tiny_bundle, "test", 32))
    assert torch.equal(torch.cat([y for _, y in ev]), tiny_bundle.test_y)
    assert torch.allclose(torch.cat([x for x, _ in ev]), normalize(tiny_bundle.test_x))
    cl = next(batches(tiny_bundle, "val", 8, memory_format=torch.channels_last))[0]
    assert cl.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ConfigError, match="batch_size=0"):
        next(batches(tiny_bundle, "train", 0, train=True))
    with pytest.raises(ConfigError, match="split='dev'"):
        next(batches(tiny_bundle, "dev", 8))


def test_bundle_to_device_is_identity_on_same_device(tiny_bundle) -> None:
    assert tiny_bundle.to("cpu") is tiny_bundle
    assert tiny_bundle.sizes() == {"train": 160, "val": 40, "test": 40}


def test_writes_official_format_helper_roundtrip(tmp_path: Path) -> None:
    # guards the fixture itself: the pickles carry exactly the official keys
    root = write_cifar10(tmp_path, per_batch=10, test=10)
    with open(root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        d = pickle.load(f, encoding="bytes")
    assert {b"data", b"labels", b"batch_label", b"filenames"} <= set(d) and d[b"data"].shape == (10, 3072)


def test_each_copy_of_a_dataset_is_named_as_the_copy_read(tmp_path: Path) -> None:
    """Provenance: two identical copies, the second loaded after the first filled the decode cache; each bundle
    (and so the store, the report and the model card) names the copy it read."""
    import shutil

    from dse_testdata import write_imagefolder

    first = write_imagefolder(tmp_path / "a", per_class_train=4, per_class_test=2)
    second = tmp_path / "b"
    shutil.copytree(first, second, copy_function=shutil.copy2)
    sources = []
    for root in (first, second, first):
        D.clear_memo()
        cfg = DataConfig(dataset="imagefolder", root=str(root), val_size=10, cache_dir=str(tmp_path / "cache"))
        sources.append(D.load_data(cfg).source)
    assert sources == [f"imagefolder:{first}", f"imagefolder:{second}", f"imagefolder:{first}"]
