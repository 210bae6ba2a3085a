"""How long a study will take: a short timed run per architecture, cached on disk, and the study's estimate.

`calibrate(spec, train)` times the trial's own training step (the same `fit`, trainer settings and fast path) on
this device: epoch 1 holds the warm-up (cuDNN autotuning, graph capture or compilation), epoch 2 is timed as the
steady state, on `steps` batches of images plus one evaluation batch. The pixels are uniform random uint8: the
time of a step does not depend on their values, and the probe then needs no dataset. Results are cached as JSON
(written atomically) keyed by everything that changes the speed: model spec, device name, precision, batch sizes,
threads, memory format, fast-path mode and PyTorch version.

`estimate_study(trial_configs, workers)`: per trial warm-up + epochs x (training images / training img/s +
evaluation images / evaluation img/s), packed onto `workers` parallel workers longest-first (LPT: each trial goes
to the worker that frees up first; within 4/3 of the best packing), in seconds.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from dse.common import atomic_write, cache_root
from dse.data import DataBundle
from dse.errors import ConfigError
from dse.models import ModelSpec
from dse.train import OptimConfig, TrainConfig, fast_path_mode, fit, resolve_device

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: evaluation timed on one probe batch
CIFAR_TRAIN_IMAGES = 50_000  # the official CIFAR-10/100 training set
CIFAR_TEST_IMAGES = 10_000
PROBE_EVAL_IMAGES = 128  # evaluation images per probe epoch (one batch)


@dataclass(frozen=True)
class Calibration:
    """Measured speeds of one (architecture, trainer settings, device): images per second of training (steady
    state, augmentation included) and of evaluation, the warm-up seconds of one fit, and the cache key."""

    train_img_per_s: float
    eval_img_per_s: float
    warmup_seconds: float
    key: dict[str, Any]
    cached: bool = False
    warmup_epoch_seconds: float = 0.0  # the first probe epoch in all (what dse.autotune compares to abandon)
    measured_unix: float = 0.0  # when it was measured (seconds since the epoch): a cached one may be hours old

    def scaled(self, factor: float) -> Calibration:
        """The same calibration on a host `factor` times as fast (both rates x factor, warm-up / factor)."""
        return replace(self, train_img_per_s=self.train_img_per_s * factor, eval_img_per_s=self.eval_img_per_s *
                       factor, warmup_seconds=self.warmup_seconds / factor)

    def trial_seconds(self, epochs: int, train_images: int, eval_images: int) -> float:
        return self.warmup_seconds + epochs * (train_images / self.train_img_per_s + eval_images / self.eval_img_per_s)


def device_name(device: torch.device) -> str:
    """What the speed depends on: the GPU's name, or the CPU's model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu} x{os.cpu_count()}"


def calibration_key(spec: ModelSpec, train: TrainConfig, optim: OptimConfig) -> dict[str, Any]:
    """Everything a calibration's speed depends on. `train` must be concrete (no "auto": dse.autotune resolves
    it first). The device name carries the core count; the threads per process and the cores imply how many
    workers shared the machine while it was measured (dse.probe measures with the study's workers side by side)."""
    device = resolve_device(train.device)
    return {
        "version": CACHE_VERSION,
        "spec": spec.to_dict(),
        "device": device_name(device),
        "precision": train.precision,
        "batch_size": train.batch_size,
        "eval_batch_size": probe_eval_batch(train),
        "threads": train.threads or torch.get_num_threads(),
        "channels_last": train.channels_last,
        "fast_path": fast_path_mode(train, optim, device),
        "optimizer": optim.name,
        "torch": str(torch.__version__),
    }


def default_cache_dir() -> Path:
    """<DSE_CACHE_DIR or ~/.cache/dse>/calibration."""
    return cache_root() / "calibration"


def default_steps(device: torch.device) -> int:
    """Batches per probe epoch: the CPU needs one warm-up batch and times the second epoch; a CUDA graph needs
    dse.fastpath.WARMUP_STEPS eager batches plus the capture inside the first epoch."""
    return 8 if device.type == "cuda" else 2


def probe_eval_batch(train: TrainConfig) -> int:
    """Evaluation images of a probe (one batch): evaluation speed per image hardly depends on the batch beyond
    this size on a CPU, and a 1,000-image forward pass of a 12 M-MAC model costs seconds."""
    return min(train.eval_batch_size, PROBE_EVAL_IMAGES)


def cache_path(key: dict[str, Any], cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / f"{_digest(key)}.json"


def load_cached(key: dict[str, Any], cache_dir: str | os.PathLike | None = None) -> Calibration | None:
    """The cached calibration of `key`, or None (absent, damaged: warned, or of another key)."""
    path = cache_path(key, cache_dir)
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
        if d["key"] == key:
            return Calibration(d["train_img_per_s"], d["eval_img_per_s"], d["warmup_seconds"], key, cached=True,
                               warmup_epoch_seconds=float(d.get("warmup_epoch_seconds", 0.0)),
                               measured_unix=float(d.get("measured_unix") or path.stat().st_mtime))
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring unreadable calibration %s (%s); measuring again", path, e)
    return None


def save(cal: Calibration, cache_dir: str | os.PathLike | None = None) -> None:
    d = {**asdict(cal), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write(cache_path(cal.key, cache_dir), json.dumps(d, indent=1))


def calibrate(
    spec: ModelSpec,
    train: TrainConfig,
    optim: OptimConfig | None = None,
    *,
    steps: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    refresh: bool = False,
) -> Calibration:
    """The speeds of `spec` trained with `train` (concrete settings) and `optim` (default the paper's SGD) on
    train.device, measured in this process; from the cache when a measurement with the same key exists (unless
    `refresh`), else measured on `steps` batches per epoch and cached. A damaged cache file is measured again.
    dse.autotune measures in child processes instead (crash-safe, several side by side)."""
    optim = optim or OptimConfig()
    steps = default_steps(resolve_device(train.device)) if steps is None else steps
    if not isinstance(steps, int) or steps < 2:
        raise ConfigError(f"calibration steps={steps!r} must be an integer >= 2 (batches timed)")
    key = calibration_key(spec, train, optim)
    cal = None if refresh else load_cached(key, cache_dir)
    if cal is None:
        cal = from_measurement(_measure(spec, train, optim, steps), key)
        save(cal, cache_dir)
    return cal


class Abandoned(Exception):  # noqa: N818 - not an error: the candidate was too slow to be worth timing further
    def __init__(self, seconds: float) -> None:
        super().__init__(f"warm-up epoch took {seconds:.2f} s")
        self.seconds = seconds


def measure(spec: ModelSpec, train: TrainConfig, optim: OptimConfig, steps: int,
            abandon_after_s: float | None = None) -> dict[str, float]:
    """Two probe epochs of `steps` batches through `fit` on random pixels: {train_img_per_s, eval_img_per_s,
    warmup_seconds, warmup_epoch_seconds}. Raises Abandoned after the first epoch when it took longer than
    `abandon_after_s` seconds."""
    n_train, n_eval = steps * train.batch_size, probe_eval_batch(train)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_train + n_eval, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n_train + n_eval) % spec.num_classes
    probe = DataBundle(
        train_x=images[:n_train],
        train_y=labels[:n_train],
        val_x=images[n_train:],
        val_y=labels[n_train:],
        test_x=images[:0],
        test_y=labels[:0],
        num_classes=spec.num_classes,
        classes=[str(i) for i in range(spec.num_classes)],
        source="calibration:random-uint8",
        fingerprint="calibration",
    )
    timed = replace(train, epochs=2, eval_batch_size=n_eval, checkpoint_dir=None, tensorboard_dir=None,
                    progress="none", resume=False)

    def check(m: Any) -> None:
        first = m.train_seconds + m.warmup_seconds + m.eval_seconds
        if m.epoch == 1 and abandon_after_s is not None and first > abandon_after_s:
            raise Abandoned(first)

    # a step's time does not depend on the learning rate (same kernels), but a trial's own lr may diverge on
    # random pixels and end the probe: time it with a small one (lr is not part of the cache key either)
    r = fit(spec, probe, replace(optim, lr=1e-4), timed, on_epoch=check)
    first, steady = r.epochs
    warmup = first.train_seconds + r.warmup_seconds - steady.train_seconds  # epoch 1's extra time
    return {
        "train_img_per_s": n_train / max(steady.train_seconds, 1e-9),
        "eval_img_per_s": n_eval / max(steady.eval_seconds, 1e-9),
        "warmup_seconds": max(warmup, 0.0),
        "warmup_epoch_seconds": first.train_seconds + r.warmup_seconds + first.eval_seconds,
    }


def from_measurement(m: dict[str, float], key: dict[str, Any]) -> Calibration:
    return Calibration(m["train_img_per_s"], m["eval_img_per_s"], m["warmup_seconds"], key,
                       warmup_epoch_seconds=m.get("warmup_epoch_seconds", 0.0), measured_unix=time.time())


def _measure(spec: ModelSpec, train: TrainConfig, optim: OptimConfig, steps: int) -> dict[str, float]:
    return measure(spec, train, optim, steps)


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def lpt_makespan(durations: Sequence[float], workers: int) -> float:
    """Seconds until the last of `durations` finishes on `workers` parallel workers, longest first, each to the
    worker that frees up first (what a shared queue of trials does when the longest are queued first)."""
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r} must be an integer >= 1")
    loads = [0.0] * workers
    for d in sorted(durations, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + d)
    return max(loads)


def trial_images(data: dict[str, Any], train_pool: int = CIFAR_TRAIN_IMAGES) -> tuple[int, int]:
    """(training images, evaluation images per epoch) a trial's data config selects, without loading the data.
    train_pool: images of the official training set (CIFAR: 50,000)."""
    rest = train_pool - int(data.get("val_size", 0))
    if data.get("subset_size") is not None:
        n_train = int(data["subset_size"])
    elif data.get("subset") is not None:
        n_train = max(1, round(float(data["subset"]) * rest))
    else:
        n_train = rest
    n_test = data.get("test_size") or CIFAR_TEST_IMAGES
    return n_train, int(data.get("val_size", 0)) + int(n_test)


def estimate_study(
    trial_configs: Iterable[Any],
    workers: int,
    *,
    calibrate_fn: Callable[[ModelSpec, TrainConfig, OptimConfig], Calibration] = calibrate,
    train_pool: int = CIFAR_TRAIN_IMAGES,
) -> float:
    """Seconds the trials (dse.space.TrialConfig) take on `workers` parallel workers of this machine.

    Each architecture/trainer combination is calibrated once (cached on disk); a trial costs its warm-up plus
    epochs x (training images / img/s + evaluation images / img/s); the trials are packed longest-first.
    """
    durations = []
    for tc in trial_configs:
        train, optim = tc.train_config(None), tc.optim_config()
        cal = calibrate_fn(tc.model, train, optim)
        n_train, n_eval = trial_images(tc.data, train_pool)
        durations.append(cal.trial_seconds(train.epochs, n_train, n_eval))
    return lpt_makespan(durations, workers) if durations else 0.0


__all__ = ["Calibration", "calibrate", "calibration_key", "estimate_study", "lpt_makespan", "trial_images"]
