"""What a trial is, typed: the data, optimizer and training dataclasses the core takes and Hydra's schema derives.

One declaration per field, with its default and its check (``__post_init__``: one line naming the bad value and
what is allowed). ``dse.config`` builds the Hydra schema of the ``data``, ``optimizer`` and ``trainer`` groups from
these classes, and ``dse.data.load_data`` and ``dse.train.fit`` take them as they are. No torch in here, so
composing a config (``--help``, ``--cfg``) never waits for it.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dse import optimizers
from dse.common import ROOT, cache_root
from dse.errors import ConfigError

DATASETS = ("cifar10", "cifar100", "imagefolder")
OPTIMIZERS = optimizers.NAMES  # one entry each in dse.optimizers.TABLE
#: Learning rate (parameter units per unit gradient) when OptimConfig.lr is None, by optimizer
DEFAULT_LR = {name: o.lr for name, o in optimizers.TABLE.items()}
SCHEDULES = ("step", "cosine", "onecycle", "none")
PER_ITERATION_SCHEDULES = ("onecycle",)  # stepped after every batch; the others after every epoch
PRECISIONS = ("fp32", "bf16", "amp")
PROGRESS = ("auto", "bar", "log", "none")
FAST_PATHS = ("auto", "graph", "compile", "eager")  # dse.fastpath says what each one runs


# --------------------------------------------------------------------------------------------------------- configs
def is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule (paper section 2.4, Table 6).

    lr: step size (parameter units per unit of gradient; for adadelta a multiplier of its own step);
      None -> DEFAULT_LR[name]. momentum: SGD momentum (sgd_nesterov needs > 0); other optimizers ignore it.
    weight_decay: L2 coefficient added to the gradient (rprop has none in PyTorch and ignores it).
    betas: Adam/Adamax/AdaBound moment decays. final_lr: AdaBound's final SGD-like lr (scaled with lr).
    schedule: "step" (the paper's: lr x gamma at each fraction of `step_epochs` of the epochs), "cosine" (to 0
      over the epochs), "onecycle" (per batch, peak = lr), "none". label_smoothing: in [0, 1).
    """

    name: str = "sgd_nesterov"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    final_lr: float = 0.1
    schedule: str = "step"
    step_epochs: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        # YAML gives lists; store tuples so the config stays hashable and compares equal either way
        object.__setattr__(self, "betas", tuple(self.betas) if isinstance(self.betas, (list, tuple)) else self.betas)
        object.__setattr__(
            self,
            "step_epochs",
            tuple(self.step_epochs) if isinstance(self.step_epochs, (list, tuple)) else self.step_epochs,
        )
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optim.name={self.name!r} is unknown; allowed: {', '.join(OPTIMIZERS)}")
        if self.lr is not None and (not is_number(self.lr) or self.lr <= 0):
            raise ConfigError(
                f"optim.lr={self.lr!r} must be a number > 0 (or null for the default "
                f"{DEFAULT_LR[self.name]} of {self.name})"
            )
        if not is_number(self.momentum) or not 0 <= self.momentum < 1:
            raise ConfigError(f"optim.momentum={self.momentum!r} must be in [0, 1)")
        if self.name == "sgd_nesterov" and self.momentum == 0:
            raise ConfigError(
                "optim.momentum=0 is not allowed with sgd_nesterov (Nesterov needs momentum > 0); "
                "use name=sgd for plain SGD"
            )
        if not is_number(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay={self.weight_decay!r} must be a number >= 0")
        if (
            not isinstance(self.betas, tuple)
            or len(self.betas) != 2
            or not all(is_number(b) and 0 <= b < 1 for b in self.betas)
        ):
            raise ConfigError(f"optim.betas={self.betas!r} must be two numbers in [0, 1)")
        if not is_number(self.final_lr) or self.final_lr <= 0:
            raise ConfigError(f"optim.final_lr={self.final_lr!r} must be a number > 0")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"optim.schedule={self.schedule!r} is unknown; allowed: {', '.join(SCHEDULES)}")
        if (
            not isinstance(self.step_epochs, tuple)
            or not all(is_number(f) and 0 < f <= 1 for f in self.step_epochs)
            or list(self.step_epochs) != sorted(self.step_epochs)
        ):
            raise ConfigError(f"optim.step_epochs={self.step_epochs!r} must be ascending fractions in (0, 1]")
        if not is_number(self.gamma) or not 0 < self.gamma <= 1:
            raise ConfigError(f"optim.gamma={self.gamma!r} must be in (0, 1] (lr multiplier per step)")
        if not is_number(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"optim.label_smoothing={self.label_smoothing!r} must be in [0, 1)")

    @property
    def resolved_lr(self) -> float:
        """The learning rate used: `lr`, or the default of the optimizer."""
        return float(self.lr) if self.lr is not None else DEFAULT_LR[self.name]

    def to_dict(self) -> dict[str, Any]:
        return plain(asdict(self))


@dataclass(frozen=True)
class TrainConfig:
    """How to train: epochs, batch size, device and speed knobs, checkpoints, progress display.

    device: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:N". precision: "fp32", "bf16" (autocast to
    bfloat16; fast on CPUs with AMX/AVX512-BF16 and on Ampere+ GPUs, 3x slower on CPUs without) or "amp" (CUDA
    float16 autocast + GradScaler). precision="auto" and channels_last="auto" are decided by measurement on this
    machine (dse.autotune.resolve) before `fit`, which takes concrete values only.
    threads: CPU threads for this fit (None: env DSE_THREADS, else PyTorch's default, one per core). With several
    workers or other load on the machine use cores // workers: an OpenMP thread that loses its core makes every
    op wait (measured 10-30x slower with 2 threads on 2 shared cores). checkpoint_dir: where last.pt and
    best.pt go (None: no checkpoints). resume: continue from a matching last.pt. progress: "auto" (a bar when stderr
    is a terminal, else one log line per epoch), "bar", "log", "none".
    fast_path: "auto" (CUDA: the whole step in one CUDA graph when the optimizer allows it; else eager), "graph",
    "compile" (torch.compile reduce-overhead), "eager"; see dse.fastpath. gpu_memory_fraction: cap on this
    process's share of the CUDA device's memory, in (0, 1] (None: no cap), so several workers can share one GPU.
    tensorboard_dir: write TensorBoard event files with per-epoch scalars there (None: off; needs the tensorboard
    package).
    """

    epochs: int = 200
    batch_size: int = 128
    eval_batch_size: int = 1000
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool | str = False
    seed: int = 0
    deterministic: bool = False
    checkpoint_dir: str | None = None
    resume: bool = True
    progress: str = "auto"
    threads: int | None = None
    fast_path: str = "auto"
    gpu_memory_fraction: float | None = None
    tensorboard_dir: str | None = None

    def __post_init__(self) -> None:
        if self.fast_path not in FAST_PATHS:
            raise ConfigError(
                f"train.fast_path={self.fast_path!r} is unknown; allowed: {', '.join(FAST_PATHS)}"
            )
        f = self.gpu_memory_fraction
        if f is not None and (not is_number(f) or not 0 < f <= 1):
            raise ConfigError(f"train.gpu_memory_fraction={f!r} must be a fraction in (0, 1] or null")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            v = getattr(self, name)
            if not is_int(v) or v < 1:
                raise ConfigError(f"train.{name}={v!r} must be an integer >= 1")
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")
        ):
            raise ConfigError(f"train.device={self.device!r} is unknown; allowed: auto, cpu, cuda, cuda:N, mps")
        if self.precision not in (*PRECISIONS, "auto"):
            raise ConfigError(f"train.precision={self.precision!r} is unknown; allowed: {', '.join(PRECISIONS)}, auto")
        if self.channels_last not in (True, False, "auto"):
            raise ConfigError(f"train.channels_last={self.channels_last!r} is unknown; allowed: true, false, auto")
        if self.progress not in PROGRESS:
            raise ConfigError(f"train.progress={self.progress!r} is unknown; allowed: {', '.join(PROGRESS)}")
        if not is_int(self.seed) or self.seed < 0:
            raise ConfigError(f"train.seed={self.seed!r} must be an integer >= 0")
        if self.threads is not None and (not is_int(self.threads) or self.threads < 1):
            raise ConfigError(f"train.threads={self.threads!r} must be an integer >= 1 or null")

    def to_dict(self) -> dict[str, Any]:
        return plain(asdict(self))

    def semantic_dict(self) -> dict[str, Any]:
        """The fields that change what is computed (resume matches on these); speed and display knobs excluded."""
        return {k: getattr(self, k) for k in ("epochs", "batch_size", "precision", "seed")}


def plain(obj: Any) -> Any:
    """Tuples -> lists, recursively: the JSON-like form stored in checkpoints and compared on resume."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where it lives, and how the training set is split.

    dataset: "cifar10", "cifar100" (fine labels, 100 classes) or "imagefolder" (root/train/<class>/*,
      root/test/<class>/*). For "cifar10", a root holding train/ and test/ class folders is read as an ImageFolder
      tree (e.g. a JPEG copy of CIFAR-10 in ImageFolder layout).
    root: folder holding the data; None -> env DSE_DATA_DIR -> <repo>/data.
    val_size: images (count) held out from the training set for validation, class-balanced; 0 = no validation.
    val_seed: seed of the validation draw.
    subset / subset_size: keep only a fraction (0, 1] / a count of the remaining training images, class-balanced,
      seeded by subset_seed. At most one of them may be set.
    test_size: evaluate on a class-balanced seeded (seed 0) subset of this many test images; None = the whole
      test set. For cheap budgets only: test accuracy every epoch on 10,000 images costs more than a small
      training epoch on a CPU. Tables report the test images used.
    download: fetch official CIFAR via torchvision when missing (needs internet).
    cache_dir: where decoded tensors are cached; None -> env DSE_CACHE_DIR -> ~/.cache/dse.
    """

    dataset: str = "cifar10"
    root: str | None = None
    val_size: int = 5000
    val_seed: int = 0
    subset: float | None = None
    subset_size: int | None = None
    subset_seed: int = 0
    test_size: int | None = None
    download: bool = True
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.test_size is not None and (not is_int(self.test_size) or self.test_size < 1):
            raise ConfigError(f"data.test_size={self.test_size!r} must be an integer >= 1 (images) or null")
        if self.dataset not in DATASETS:
            raise ConfigError(f"data.dataset={self.dataset!r} is unknown; allowed: {', '.join(DATASETS)}")
        if not is_int(self.val_size) or self.val_size < 0:
            raise ConfigError(f"data.val_size={self.val_size!r} must be an integer >= 0 (images)")
        if not is_int(self.val_seed) or not is_int(self.subset_seed):
            raise ConfigError(f"data.val_seed={self.val_seed!r} / subset_seed={self.subset_seed!r} must be integers")
        if self.subset is not None and self.subset_size is not None:
            raise ConfigError(
                f"data.subset={self.subset!r} and data.subset_size={self.subset_size!r} are both set; set at most one"
            )
        if self.subset is not None and (
            isinstance(self.subset, bool) or not isinstance(self.subset, (int, float)) or not 0 < self.subset <= 1
        ):
            raise ConfigError(f"data.subset={self.subset!r} must be a fraction in (0, 1]")
        if self.subset_size is not None and (not is_int(self.subset_size) or self.subset_size < 1):
            raise ConfigError(f"data.subset_size={self.subset_size!r} must be an integer >= 1 (images)")

    def resolved_root(self) -> Path:
        """The data folder: `root`, else env DSE_DATA_DIR, else <repo>/data."""
        return Path(self.root or os.environ.get("DSE_DATA_DIR") or ROOT / "data").expanduser()

    def resolved_cache_dir(self) -> Path:
        """The cache folder: `cache_dir`, else env DSE_CACHE_DIR, else ~/.cache/dse."""
        return cache_root(self.cache_dir)


__all__ = [
    "DATASETS", "DEFAULT_LR", "FAST_PATHS", "OPTIMIZERS", "PER_ITERATION_SCHEDULES", "PRECISIONS", "PROGRESS",
    "SCHEDULES", "DataConfig", "OptimConfig", "TrainConfig", "is_int", "is_number", "plain",
]
