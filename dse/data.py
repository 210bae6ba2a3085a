"""The data path: CIFAR-10/100 (official pickles) or any ImageFolder tree, decoded once into uint8 tensors.

Design (after KellerJordan/cifar10-airbench): per-image PIL work and DataLoader worker processes cost more than
the small models' training steps, so the whole dataset sits on the training device
as one uint8 tensor (N, 3, 32, 32); augmentation is batched tensor ops on that device; there is no per-image PIL
work per epoch and no DataLoader worker process in the hot loop. Decoding happens once and is cached on disk as a
.pt of uint8 tensors keyed by a fingerprint of the source, and once per process in an in-memory memo, so a sweep
worker that runs many trials loads a dataset once.

Augmentation is the recipe of the paper's public baseline code (paper README, "Training recipe"): random crop 32
with 4-pixel zero padding chosen per image, horizontal flip with probability 0.5 per image, normalize with
mean (0.4914, 0.4822, 0.4465) and std (0.2023, 0.1994, 0.2010).

Splits: so that the search never selects on the test set, `val_size` images are held out from the official
training set, class-balanced and seeded, for the search; the official test set is only reported.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dse.common import atomic_torch_save
from dse.errors import ConfigError, CorruptDatasetError, DatasetNotFoundError
from dse.spec import DataConfig, is_int

log = logging.getLogger(__name__)
# torchvision 0.29 deprecates its image decoders in favour of TorchCodec (not installed here); they still work and
# are ~5x faster than PIL per CIFAR JPEG. The PIL fallback in _decode_one keeps working if they are removed.
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # per channel, on pixels scaled to [0, 1]
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGE_SIZE = 32  # pixels (height = width); every source is decoded to this size
CROP_PADDING = 4  # pixels of zero padding for the random crop
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
CACHE_FORMAT = 1  # bump when the cached .pt layout changes, so old caches are not reused

_CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_CIFAR_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


# --------------------------------------------------------------------------------------------------------- bundle
@dataclass
class DataBundle:
    """A dataset decoded and split: uint8 images (N, 3, 32, 32) and int64 labels, all on one device.

    `fingerprint` identifies the images actually used: the source's fingerprint plus the split parameters (two
    bundles with equal fingerprints hold the same train/val/test images). `source` is a human description with the
    path, e.g. "imagefolder:/data/cifar10-jpg".
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    classes: list[str]
    source: str
    fingerprint: str
    config: DataConfig | None = field(default=None, compare=False)
    train_pool: int = 0  # training images available after the validation split, before any subset

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of split "train", "val" or "test"."""
        if name not in ("train", "val", "test"):
            raise ConfigError(f"split={name!r} is unknown; allowed: train, val, test")
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")

    def to(self, device: str | torch.device) -> DataBundle:
        """The same bundle with every tensor on `device` (self when already there)."""
        device = torch.device(device)
        if _same_device(self.device, device):
            return self
        moved = {k: getattr(self, k).to(device) for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}
        return replace(self, **moved)

    def sizes(self) -> dict[str, int]:
        """Images per split."""
        return {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cuda":
        idx = lambda d: d.index if d.index is not None else torch.cuda.current_device()  # noqa: E731
        return idx(a) == idx(b)
    return True


@dataclass
class _Decoded:
    """A whole source decoded on the CPU: official train and test sets."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    source: str
    fingerprint: str


# Per-process memo: a sweep worker loads a dataset once for many trials. Keys: source fingerprint (decoded CPU
# tensors) and (fingerprint, split parameters, device) (finished bundles). Small LRUs: each entry can be ~180 MB.
_DECODED_MEMO: OrderedDict[str, _Decoded] = OrderedDict()
_BUNDLE_MEMO: OrderedDict[tuple, DataBundle] = OrderedDict()
_MEMO_LOCK = threading.Lock()
_MEMO_SIZE = 2


def clear_memo() -> None:
    """Forget every dataset loaded in this process (tests; freeing memory between studies)."""
    with _MEMO_LOCK:
        _DECODED_MEMO.clear()
        _BUNDLE_MEMO.clear()


def _memo_put(memo: OrderedDict, key, value) -> None:
    with _MEMO_LOCK:
        memo[key] = value
        memo.move_to_end(key)
        while len(memo) > _MEMO_SIZE:
            memo.popitem(last=False)


def load_data(cfg: DataConfig, device: str | torch.device = "cpu") -> DataBundle:
    """Load, decode (once; cached on disk and in memory), split and place a dataset on `device`.

    Raises DatasetNotFoundError (nothing at the root and no download possible), CorruptDatasetError (a source file
    cannot be read; names the file) and ConfigError (a split that does not fit the data).
    """
    device = torch.device(device)
    kind, path = _locate(cfg)
    fingerprint = _fingerprint(kind, path, cfg.dataset)
    bundle_key = (
        fingerprint,
        cfg.val_size,
        cfg.val_seed,
        cfg.subset,
        cfg.subset_size,
        cfg.subset_seed,
        cfg.test_size,
        str(device),
    )
    with _MEMO_LOCK:
        if bundle_key in _BUNDLE_MEMO:
            _BUNDLE_MEMO.move_to_end(bundle_key)
            return _BUNDLE_MEMO[bundle_key]
        decoded = _DECODED_MEMO.get(fingerprint)
    if decoded is None:
        decoded = _load_cached_or_decode(cfg, kind, path, fingerprint)
        _memo_put(_DECODED_MEMO, fingerprint, decoded)
    bundle = _split(decoded, cfg).to(device)
    _memo_put(_BUNDLE_MEMO, bundle_key, bundle)
    sizes = bundle.sizes()
    log.info(
        "data %s: %d train / %d val / %d test images, %d classes, on %s",
        bundle.source,
        sizes["train"],
        sizes["val"],
        sizes["test"],
        bundle.num_classes,
        device,
    )
    return bundle


# --------------------------------------------------------------------------------------------------------- sources
def _is_imagefolder(root: Path) -> bool:
    """True when root has train/ and test/ folders that each contain at least one class folder."""
    try:
        return all((root / s).is_dir() and any(p.is_dir() for p in (root / s).iterdir()) for s in ("train", "test"))
    except OSError:
        return False


def _locate(cfg: DataConfig) -> tuple[str, Path]:
    """Find the source: ("pickle", folder of the official batches) or ("imagefolder", tree root)."""
    root = cfg.resolved_root()
    if cfg.dataset == "imagefolder":
        if _is_imagefolder(root):
            return "imagefolder", root
        raise DatasetNotFoundError(
            f"no ImageFolder tree at {root} (expected {root}/train/<class>/* and {root}/test/<class>/*); "
            "set data.root or DSE_DATA_DIR to such a folder"
        )
    sub = _CIFAR_DIRS[cfg.dataset]
    for cand in (root / sub, root):
        if cand.name == sub and cand.is_dir():
            return "pickle", cand
    if cfg.dataset == "cifar10" and _is_imagefolder(root):
        return "imagefolder", root
    if cfg.download:
        _download(cfg.dataset, root)
        return "pickle", root / sub
    raise DatasetNotFoundError(
        f"{cfg.dataset} not found: looked for {root / sub} (official python pickles)"
        + (" or an ImageFolder tree (train/, test/)" if cfg.dataset == "cifar10" else "")
        + f" in {root}; set data.root or DSE_DATA_DIR, set data.download=true, or use data.dataset=imagefolder"
    )


def _download(dataset: str, root: Path) -> None:
    """Fetch the official pickles with torchvision; any failure (e.g. no network) -> DatasetNotFoundError."""
    import torchvision

    cls = torchvision.datasets.CIFAR10 if dataset == "cifar10" else torchvision.datasets.CIFAR100
    log.info("downloading %s into %s", dataset, root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        cls(str(root), train=True, download=True)
    except Exception as e:  # URLError, checksum errors, permission errors: all mean "not available"
        raise DatasetNotFoundError(
            f"{dataset} not found in {root / _CIFAR_DIRS[dataset]} and the download failed ({type(e).__name__}: {e}); "
            "set data.root or DSE_DATA_DIR to a folder holding it, or use data.dataset=imagefolder with a local "
            "ImageFolder tree"
        ) from e


def _pickle_files(dataset: str, folder: Path) -> tuple[list[Path], list[Path], Path]:
    if dataset == "cifar10":
        return ([folder / f"data_batch_{i}" for i in range(1, 6)], [folder / "test_batch"], folder / "batches.meta")
    return [folder / "train"], [folder / "test"], folder / "meta"


def _scan_imagefolder(root: Path) -> tuple[list[str], dict[str, list[tuple[str, int]]], list[tuple[str, int, int]]]:
    """Classes (train's sorted folder names), per split a list of (path, label), and (relpath, bytes, mtime_ns)."""
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    index = {c: i for i, c in enumerate(classes)}
    files: dict[str, list[tuple[str, int]]] = {}
    stats: list[tuple[str, int, int]] = []
    for split in ("train", "test"):
        files[split] = []
        for cdir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            if cdir.name not in index:
                raise CorruptDatasetError(
                    f"class folder {cdir} has no counterpart in {root / 'train'}; classes there: {', '.join(classes)}"
                )
            with os.scandir(cdir) as it:
                entries = sorted((e for e in it if e.name.lower().endswith(IMAGE_EXTENSIONS)), key=lambda e: e.name)
            for e in entries:
                st = e.stat()
                files[split].append((e.path, index[cdir.name]))
                stats.append((f"{split}/{cdir.name}/{e.name}", st.st_size, st.st_mtime_ns))
        if not files[split]:
            raise CorruptDatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root / split}")
    return classes, files, stats


def _fingerprint(kind: str, path: Path, dataset: str) -> str:
    """sha256 over the source's file names, sizes and modification times (cheap: no file contents read)."""
    h = hashlib.sha256(f"dse-data/{CACHE_FORMAT}/{kind}/{dataset}\n".encode())
    if kind == "imagefolder":
        _, _, stats = _scan_imagefolder(path)
    else:
        train, test, meta = _pickle_files(dataset, path)
        stats = []
        for p in [*train, *test, meta]:
            try:
                st = p.stat()
            except FileNotFoundError:
                if p == meta:
                    continue  # class names then fall back to defaults
                raise CorruptDatasetError(f"incomplete {dataset} folder {path}: {p.name} is missing") from None
            stats.append((p.name, st.st_size, st.st_mtime_ns))
    h.update(str(path.resolve()).encode() + b"\n")
    for rel, size, mtime in stats:
        h.update(f"{rel}\t{size}\t{mtime}\n".encode())
    return h.hexdigest()


def _load_cached_or_decode(cfg: DataConfig, kind: str, path: Path, fingerprint: str) -> _Decoded:
    cache = cfg.resolved_cache_dir() / f"{cfg.dataset}-{kind}-{fingerprint[:20]}.pt"
    if cache.is_file():
        try:
            d = torch.load(cache, map_location="cpu", weights_only=True)
            if d.get("format") == CACHE_FORMAT and d.get("fingerprint") == fingerprint:
                log.info("data cache hit: %s", cache)
                return _Decoded(
                    d["train_x"], d["train_y"], d["test_x"], d["test_y"], list(d["classes"]), d["source"], fingerprint
                )
        except Exception as e:  # a damaged cache is not an error: decode again and overwrite it
            log.warning("ignoring unreadable data cache %s (%s: %s)", cache, type(e).__name__, e)
    t0 = time.perf_counter()
    if kind == "imagefolder":
        decoded = _read_imagefolder(path, fingerprint)
    else:
        decoded = _read_pickles(cfg.dataset, path, fingerprint)
    log.info("decoded %s in %.1f s", decoded.source, time.perf_counter() - t0)
    _write_cache(cache, decoded)
    return decoded


def _write_cache(cache: Path, d: _Decoded) -> None:
    payload = {
        "format": CACHE_FORMAT,
        "fingerprint": d.fingerprint,
        "source": d.source,
        "classes": d.classes,
        "train_x": d.train_x,
        "train_y": d.train_y,
        "test_x": d.test_x,
        "test_y": d.test_y,
    }
    try:
        atomic_torch_save(payload, cache)
    except OSError as e:  # a read-only cache folder costs time, not correctness
        log.warning("could not write data cache %s: %s", cache, e)


# ----------------------------------------------------------------------------------------------- official pickles
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the official CIFAR batches (dicts of bytes, lists and numpy arrays) and nothing that runs code."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are expected)")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise CorruptDatasetError(f"dataset file {path} is missing") from None
    except Exception as e:  # EOFError (truncated), UnpicklingError (garbage), ValueError, ...
        raise CorruptDatasetError(f"cannot read dataset file {path}: {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise CorruptDatasetError(f"dataset file {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def _read_batch(path: Path, label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    d = _unpickle(path)
    if b"data" not in d or label_key not in d:
        raise CorruptDatasetError(f"dataset file {path} lacks {b'data'!r} or {label_key!r}; keys: {sorted(d)}")
    try:
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[label_key], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise CorruptDatasetError(f"dataset file {path} has malformed arrays: {e}") from e
    n = IMAGE_SIZE * IMAGE_SIZE * 3
    if data.ndim != 2 or data.shape[1] != n or labels.shape != (data.shape[0],):
        raise CorruptDatasetError(
            f"dataset file {path} is truncated or malformed: data {data.shape}, labels {labels.shape}; "
            f"expected (N, {n}) and (N,)"
        )
    x = torch.from_numpy(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).copy())
    return x, torch.from_numpy(labels.copy())


def _read_pickles(dataset: str, folder: Path, fingerprint: str) -> _Decoded:
    train_files, test_files, meta = _pickle_files(dataset, folder)
    label_key = b"labels" if dataset == "cifar10" else b"fine_labels"
    parts = {
        s: [_read_batch(p, label_key) for p in files] for s, files in (("train", train_files), ("test", test_files))
    }
    if meta.is_file():
        m = _unpickle(meta)
        names = m.get(b"label_names" if dataset == "cifar10" else b"fine_label_names")
        if not isinstance(names, list):
            raise CorruptDatasetError(f"dataset file {meta} lacks the class names list")
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    else:
        classes = _CIFAR10_CLASSES if dataset == "cifar10" else [str(i) for i in range(100)]
    xs = {s: torch.cat([x for x, _ in p]) for s, p in parts.items()}
    ys = {s: torch.cat([y for _, y in p]) for s, p in parts.items()}
    for s in ys:
        if len(ys[s]) and (ys[s].min() < 0 or ys[s].max() >= len(classes)):
            raise CorruptDatasetError(f"labels in {folder} ({s}) outside 0..{len(classes) - 1}")
    return _Decoded(xs["train"], ys["train"], xs["test"], ys["test"], classes, f"{dataset}:{folder}", fingerprint)


# ----------------------------------------------------------------------------------------------- ImageFolder trees
_DECODE_CHUNK = 500  # files per thread-pool task; each task reads its files then decodes them in one batch call


def _tv_decoders():
    """torchvision's (decode_jpeg, decode_image, ImageReadMode), or None where they are unavailable."""
    try:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg

        return decode_jpeg, decode_image, ImageReadMode
    except ImportError:
        return None


def _decode_one(path: str, raw: bytes) -> torch.Tensor:
    """Decode one image file's bytes to uint8 (3, 32, 32); torchvision first, PIL for what it cannot read."""
    tv = _tv_decoders()
    try:
        if tv is None:
            raise ImportError("torchvision.io decoders unavailable")
        img = tv[1](torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=tv[2].RGB)
    except Exception:
        try:
            from PIL import Image

            with Image.open(io.BytesIO(raw)) as im:
                img = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
        except Exception as e:
            raise CorruptDatasetError(f"cannot decode image {path}: {type(e).__name__}: {e}") from e
    return _to_size(img)


def _to_size(img: torch.Tensor) -> torch.Tensor:
    if img.shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE):
        return img.contiguous()
    out = F.interpolate(
        img[None].float(), size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False
    )
    return out[0].round().clamp(0, 255).to(torch.uint8)


def _decode_chunk(paths: list[str]) -> torch.Tensor:
    raws = []
    for p in paths:
        try:
            with open(p, "rb") as f:
                raws.append(f.read())
        except OSError as e:
            raise CorruptDatasetError(f"cannot read image {p}: {e}") from e
    tv = _tv_decoders()
    jpeg = [i for i, p in enumerate(paths) if p.lower().endswith((".jpg", ".jpeg"))] if tv else []
    out: list[torch.Tensor | None] = [None] * len(paths)
    if jpeg:
        try:  # the batched decoder is ~5x faster than PIL per image; it fails as a whole on one bad file
            imgs = tv[0]([torch.frombuffer(bytearray(raws[i]), dtype=torch.uint8) for i in jpeg], mode=tv[2].RGB)
            for i, img in zip(jpeg, imgs, strict=True):
                out[i] = _to_size(img)
        except Exception:
            pass  # find the bad file (or decode what PIL can) one by one below
    return torch.stack([o if o is not None else _decode_one(p, r) for o, p, r in zip(out, paths, raws, strict=True)])


def _read_imagefolder(root: Path, fingerprint: str) -> _Decoded:
    classes, files, _ = _scan_imagefolder(root)
    result = {}
    workers = min(8, 2 * (os.cpu_count() or 1))  # threads overlap file reads (I/O) with decoding (releases the GIL)
    with ThreadPoolExecutor(workers) as pool:
        for split, items in files.items():
            paths = [p for p, _ in items]
            chunks = [paths[i : i + _DECODE_CHUNK] for i in range(0, len(paths), _DECODE_CHUNK)]
            x = torch.cat(list(pool.map(_decode_chunk, chunks)))
            y = torch.tensor([label for _, label in items], dtype=torch.int64)
            result[split] = (x, y)
    return _Decoded(
        result["train"][0],
        result["train"][1],
        result["test"][0],
        result["test"][1],
        classes,
        f"imagefolder:{root}",
        fingerprint,
    )


# --------------------------------------------------------------------------------------------------------- splits
def stratified_pick(labels: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of `n` items drawn without replacement so each class keeps its share (largest remainders).

    On a balanced set every class gets n // C items (the first n % C classes of a seeded order one more).
    """
    labels = labels.cpu()
    classes, counts = torch.unique(labels, return_counts=True)
    total = int(counts.sum())
    if not 0 <= n <= total:
        raise ConfigError(f"cannot draw {n} images from a set of {total}")
    exact = counts.double() * n / total
    quota = exact.floor().long()
    rest = n - int(quota.sum())
    if rest:
        # largest fractional parts first; ties broken by a seeded random order so no class is always favoured
        tie = torch.rand(len(classes), generator=generator, dtype=torch.float64)
        order = sorted(range(len(classes)), key=lambda i: (-(exact[i] - quota[i]).item(), tie[i].item()))
        for i in order[:rest]:
            quota[i] += 1
    picked = []
    for c, q in zip(classes.tolist(), quota.tolist(), strict=True):
        idx = (labels == c).nonzero().flatten()
        picked.append(idx[torch.randperm(len(idx), generator=generator)[:q]])
    return torch.cat(picked).sort().values if picked else torch.empty(0, dtype=torch.long)


def split_indices(train_labels: torch.Tensor, cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, validation indices) into the official training set that `cfg` selects.

    Validation: `val_size` images, class-balanced, seeded by val_seed. Training: the rest, or a class-balanced
    seeded subset of it (subset / subset_size). Public so a reference pipeline can train on the same images.
    """
    n_train = len(train_labels)
    if cfg.val_size >= n_train:
        raise ConfigError(f"data.val_size={cfg.val_size} leaves no training images; the source has {n_train}")
    val_idx = stratified_pick(train_labels, cfg.val_size, torch.Generator().manual_seed(cfg.val_seed))
    keep = torch.ones(n_train, dtype=torch.bool)
    keep[val_idx] = False
    rest = keep.nonzero().flatten()
    if cfg.subset is not None or cfg.subset_size is not None:
        n = cfg.subset_size if cfg.subset_size is not None else max(1, round(cfg.subset * len(rest)))
        if n > len(rest):
            raise ConfigError(
                f"data.subset_size={n} exceeds the {len(rest)} training images left after val_size={cfg.val_size}"
            )
        rest = rest[stratified_pick(train_labels[rest], n, torch.Generator().manual_seed(cfg.subset_seed))]
    return rest, val_idx


def _split(d: _Decoded, cfg: DataConfig) -> DataBundle:
    rest, val_idx = split_indices(d.train_y, cfg)
    h = hashlib.sha256(d.fingerprint.encode())
    h.update(repr((cfg.val_size, cfg.val_seed, cfg.subset, cfg.subset_size, cfg.subset_seed)).encode())
    test_x, test_y = d.test_x, d.test_y
    if cfg.test_size is not None and cfg.test_size < len(test_y):
        h.update(repr(("test_size", cfg.test_size)).encode())
        idx = stratified_pick(test_y, cfg.test_size, torch.Generator().manual_seed(0))
        test_x, test_y = test_x[idx], test_y[idx]
    return DataBundle(
        train_x=d.train_x[rest],
        train_y=d.train_y[rest],
        val_x=d.train_x[val_idx],
        val_y=d.train_y[val_idx],
        test_x=test_x,
        test_y=test_y,
        num_classes=len(d.classes),
        classes=list(d.classes),
        source=d.source,
        fingerprint=h.hexdigest()[:16],
        config=cfg,
        train_pool=len(d.train_y) - len(val_idx),
    )


# ---------------------------------------------------------------------------------------------- augmentation
_NORM_CACHE: dict[tuple[str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def normalize(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> `dtype`, (x / 255 - mean) / std per channel, as one fused multiply-add."""
    key = (str(x.device), dtype)
    if key not in _NORM_CACHE:
        std = torch.tensor(CIFAR_STD, dtype=torch.float64)
        mean = torch.tensor(CIFAR_MEAN, dtype=torch.float64)
        scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1)
        shift = (-mean / std).view(1, 3, 1, 1)
        _NORM_CACHE[key] = (scale.to(x.device, dtype), shift.to(x.device, dtype))
    scale, shift = _NORM_CACHE[key]
    return torch.addcmul(shift, x.to(dtype), scale)


def random_crop_flip(
    x: torch.Tensor, generator: torch.Generator | None = None, padding: int = CROP_PADDING
) -> torch.Tensor:
    """Per-image random crop (zero padding `padding` pixels) and horizontal flip (p = 0.5) of a uint8 batch.

    One gather on the device: the padded batch is flattened to (B, C, Hp*Wp) and each output pixel reads from
    (row offset + i, col offset + j), with the column index mirrored for flipped images. The 3 x B random draws
    are made on the generator's device (None: the global CPU RNG) and moved to x's device when that differs; with
    a generator on x's device (`device_generator`) nothing crosses between host and device and nothing waits.
    """
    b, c, h, w = x.shape
    hp, wp = h + 2 * padding, w + 2 * padding
    rng_device = generator.device if generator is not None else torch.device("cpu")
    dy = torch.randint(0, 2 * padding + 1, (b, 1, 1), generator=generator, device=rng_device)
    dx = torch.randint(0, 2 * padding + 1, (b, 1, 1), generator=generator, device=rng_device)
    flip = torch.rand(b, 1, 1, generator=generator, device=rng_device) < 0.5
    dy, dx, flip = (t.to(x.device, non_blocking=True) for t in (dy, dx, flip))  # no-ops on the same device
    i = torch.arange(h, device=x.device).view(1, h, 1)
    j = torch.arange(w, device=x.device).view(1, 1, w)
    cols = dx + torch.where(flip, w - 1 - j, j)
    index = ((dy + i) * wp + cols).view(b, 1, h * w)
    xp = F.pad(x, (padding, padding, padding, padding)).view(b, c, hp * wp)
    return torch.gather(xp, 2, index.expand(b, c, h * w)).view(b, c, h, w)


def device_generator(seed: int, device: str | torch.device) -> torch.Generator:
    """A torch.Generator on `device` seeded with `seed`: `batches` then draws order, crops and flips there.

    On the CPU it is the generator `batches` always used (same draws as before); on CUDA the draws come from the
    device's Philox stream, reproducible for a seed on that device but different from the CPU's.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return torch.Generator(device=device).manual_seed(int(seed))


def batches(
    bundle: DataBundle,
    split: str,
    batch_size: int,
    train: bool = False,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (normalized images `dtype` (B, 3, 32, 32), int64 labels) of `split` on the bundle's device.

    train=True: a random order and per-image crop + flip, all drawn from `generator` (None uses the global CPU RNG;
    a generator on the bundle's device, see `device_generator`, keeps every draw there, so no batch waits on a
    host-device copy), so seeding it per epoch makes the epoch reproducible. A final training batch of a
    single image is dropped (BatchNorm cannot train on one). train=False: the split in order, unaugmented.
    """
    if not is_int(batch_size) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be an integer >= 1")
    x, y = bundle.split(split)
    n = len(y)
    if train:
        rng_device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=rng_device).to(x.device, non_blocking=True)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:
                break
            xb = random_crop_flip(x[idx], generator)
            yield normalize(xb, dtype).contiguous(memory_format=memory_format), y[idx]
    else:
        for start in range(0, n, batch_size):
            xb = x[start : start + batch_size]
            yield normalize(xb, dtype).contiguous(memory_format=memory_format), y[start : start + batch_size]
