"""The training core: `fit(spec, data, optim, train) -> TrialResult`, a pure function of typed inputs.

No Hydra, Optuna or SQL in here, so the core can be called, tested and benchmarked on its own: the sweep
adapts configs into the dataclasses below, and `on_epoch` is its hook for reporting and pruning. Every one of the
~600 trials of the design-space exploration runs through `fit`, so its speed is the sweep's speed: data sits on
the device as uint8 (dse.data), augmentation is batched and drawn on the device, the loop avoids per-step host
syncs, and on CUDA the whole training step runs as one captured CUDA graph (dse.fastpath).

Recipe (Duggal & El-Sharkawy 2020, section 3 and Table 1 footnote): SGD with momentum 0.9 and Nesterov, LR 0.01,
step decay; AdaBound with lr 0.001, betas (0.9, 0.999) (section 2.4.1); the other optimizers of Table 6 with
PyTorch's default learning rates. Batch 128, 200 epochs (the authors' public baseline code).

Checkpoints (so that a killed worker loses at most one epoch): `last.pt` each epoch (everything needed to
resume bit-exactly on the same device) and `best.pt` at the best validation epoch, written atomically, holding
only tensors and primitives so they load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dse import fastpath, optimizers
from dse.common import atomic_torch_save
from dse.data import DataBundle, batches, device_generator
from dse.errors import CheckpointError, ConfigError, DivergedError, first_line
from dse.models import ModelSpec, build_model, model_facts
from dse.spec import (
    DEFAULT_LR,
    OPTIMIZERS,
    PER_ITERATION_SCHEDULES,
    PRECISIONS,
    SCHEDULES,
    OptimConfig,
    TrainConfig,
    is_int,
    plain,
)

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "dse.checkpoint"
CHECKPOINT_VERSION = 1
DIVERGENCE_CHECK_EVERY = 25  # batches between host syncs that check the running loss for NaN/inf


@dataclass
class EpochMetrics:
    """One epoch's numbers. Accuracies in percent (0-100); losses are mean cross-entropy per image (nats);
    lr is the learning rate at the start of the epoch; seconds are wall-clock (train: the training pass incl.
    augmentation, without warm-up; eval: the validation and test passes; warmup: CUDA-graph capture or
    compilation during this epoch, dse.fastpath)."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    test_acc: float
    lr: float
    train_seconds: float
    eval_seconds: float
    warmup_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrialResult:
    """Outcome of `fit`. Accuracies in percent; test_acc is the test accuracy at the best-validation epoch (with no
    validation split, the last epoch); sec_per_epoch is the mean training seconds per epoch (the paper's "model
    speed"); params, macs (per 32x32 image) and checkpoint_bytes come from dse.models.model_facts."""

    best_val_acc: float
    best_epoch: int
    final_val_acc: float
    test_acc: float
    final_test_acc: float
    sec_per_epoch: float
    params: int
    macs: int
    checkpoint_bytes: int
    device: str
    precision: str
    torch_version: str
    epochs: list[EpochMetrics] = field(default_factory=list)
    best_checkpoint: str | None = None
    resumed_from_epoch: int = 0
    threads: int = 0  # CPU threads used by the training ops (timings compare like for like only at equal threads)
    fast_path: str = "eager"  # the mode that ran: graph, compile or eager (dse.fastpath)
    warmup_seconds: float = 0.0  # capture / compilation seconds of this fit, not in sec_per_epoch
    channels_last: bool = False  # the memory format that ran (NCHW when False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["epochs"] = [m.to_dict() for m in self.epochs]
        return d


# ------------------------------------------------------------------------------------------ optimizers, schedules
def build_optimizer(
    params: Iterable[torch.Tensor] | Iterable[dict], cfg: OptimConfig, **flags: bool
) -> torch.optim.Optimizer:
    """The optimizer `cfg.name` over `params` (paper Table 6's nine plus plain SGD).

    flags: extra constructor flags of PyTorch's optimizers (e.g. capturable=True, fused=True; dse.fastpath's
    GRAPH_FLAGS); AdaBound takes none.
    """
    entry = optimizers.TABLE.get(cfg.name)
    if entry is None:
        raise ConfigError(f"optim.name={cfg.name!r} is unknown; allowed: {', '.join(OPTIMIZERS)}")
    if flags and entry.graph_flags is None:
        raise ConfigError(f"optimizer {cfg.name} takes no extra flags, got {sorted(flags)}")
    if cfg.weight_decay and "weight_decay" not in entry.options:
        log.info("%s has no weight decay in PyTorch; optim.weight_decay=%g is ignored", cfg.name, cfg.weight_decay)
    if cfg.name == "adabound":
        # adabound 0.0.5 uses add_(Number, Tensor) overloads that PyTorch deprecates; the maths is unaffected
        warnings.filterwarnings("ignore", message=r".*overload of add", module="adabound")
        warnings.filterwarnings("ignore", message=r".*overload of addcmul", module="adabound")
    return entry.build(params, cfg, **flags)


def build_scheduler(
    opt: torch.optim.Optimizer, cfg: OptimConfig, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The lr schedule; call .step() once per epoch, or once per batch when cfg.schedule is in
    PER_ITERATION_SCHEDULES ("onecycle"). "step" decays by cfg.gamma after round(f * epochs) epochs for each
    f in cfg.step_epochs (defaults: at 50 % and 75 % of training)."""
    s = torch.optim.lr_scheduler
    if not is_int(epochs) or epochs < 1 or not is_int(steps_per_epoch) or steps_per_epoch < 1:
        raise ConfigError(f"epochs={epochs!r} and steps_per_epoch={steps_per_epoch!r} must be integers >= 1")
    if cfg.schedule == "step":
        milestones = sorted({max(1, round(f * epochs)) for f in cfg.step_epochs})
        return s.MultiStepLR(opt, milestones=milestones, gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return s.CosineAnnealingLR(opt, T_max=epochs)
    if cfg.schedule == "onecycle":
        cycle = "betas" in opt.defaults or opt.defaults.get("momentum", 0) > 0
        return s.OneCycleLR(
            opt,
            max_lr=[g["lr"] for g in opt.param_groups],
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            cycle_momentum=cycle,
        )
    if cfg.schedule == "none":
        return s.LambdaLR(opt, lambda _: 1.0)
    raise ConfigError(f"optim.schedule={cfg.schedule!r} is unknown; allowed: {', '.join(SCHEDULES)}")


# ------------------------------------------------------------------------------------------------- checkpoints
def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a last.pt/best.pt with weights_only=True (tensors and primitives only; nothing that runs code).

    Raises CheckpointError for a missing, truncated or garbage file, a pickle holding other objects, or a file
    that is not a dse checkpoint (needs keys format, kind, state_dict, spec).
    """
    path = Path(path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and primitives "
            f"(weights_only=True): {first_line(e)}"
        ) from e
    except Exception as e:  # truncated zip (RuntimeError), random bytes (UnpicklingError/EOFError), ...
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or garbage?): "
            f"{type(e).__name__}: {first_line(e)}"
        ) from e
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a dse checkpoint (expected a dict with format={CHECKPOINT_FORMAT!r})")
    missing = [k for k in ("kind", "state_dict", "spec", "epoch") if k not in ck]
    if missing or not isinstance(ck["state_dict"], dict) or not isinstance(ck["spec"], dict):
        raise CheckpointError(f"{path} has the wrong structure: missing or malformed {missing or ['state_dict/spec']}")
    if ck.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {ck['version']}; this dse reads up to {CHECKPOINT_VERSION}"
        )
    return ck


def load_model(path: str | os.PathLike) -> tuple[nn.Module, ModelSpec]:
    """(model in eval mode on the CPU, its ModelSpec) from a best.pt or last.pt.

    Raises CheckpointError when the file is unreadable or its state_dict does not match its spec.
    """
    ck = load_checkpoint(path)
    try:
        spec = ModelSpec.from_dict(ck["spec"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} holds an invalid model spec {ck['spec']!r}: {e}") from e
    with torch.random.fork_rng(devices=[]):  # building initialises weights: leave the caller's RNG alone
        model = build_model(spec)
    try:
        model.load_state_dict(ck["state_dict"], strict=True)
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(
            f"{path}: state_dict does not match {spec.name}: {' '.join(line.strip() for line in first[:3])}"
        ) from e
    return model.eval(), spec


def _state_dict_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    # contiguous CPU copies: portable across devices and memory formats, and safe to save while training goes on
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def _rng_state() -> dict[str, Any]:
    cuda = (
        [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    )
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------------------------------------- fit
def resolve_device(name: str) -> torch.device:
    """ "auto" -> cuda if available, else cpu; "cuda" -> the current CUDA device with its index (cuda:0 unless
    set otherwise); anything else as given (ConfigError if unavailable)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={name!r} but CUDA is not available here; use device=auto or cpu")
        # always indexed: set_per_process_memory_fraction, set_device and the capture stream need the index
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        elif dev.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device={name!r} but this machine has {torch.cuda.device_count()} GPUs "
                              f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device={name!r} but MPS is not available here; use device=auto or cpu")
    return dev


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Training batches per epoch as dse.data.batches yields them (a final batch of one image is dropped)."""
    return n_images // batch_size + (1 if n_images % batch_size >= 2 else 0)


def _epoch_seed(seed: int, epoch: int) -> int:
    # an independent stream per (seed, epoch): resuming at epoch e reproduces e's order and augmentation
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


def _env_threads() -> int:
    raw = os.environ.get("DSE_THREADS", "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"DSE_THREADS={raw!r} must be an integer >= 1 (CPU threads per fit)")
    return int(raw)


@contextlib.contextmanager
def _runtime(train: TrainConfig, device: torch.device) -> Iterator[None]:
    """Threads, determinism and cuDNN autotuning for the duration of one fit; restored afterwards."""
    prev_threads = torch.get_num_threads()
    prev_device = torch.cuda.current_device() if device.type == "cuda" else None
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_bench, prev_cudnn_det = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        threads = train.threads or _env_threads()
        if threads:
            torch.set_num_threads(threads)
        if train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed 32x32 shapes: autotuning pays off after one batch
        if device.type == "cuda":
            # the trial's GPU is the current one: streams, captures and allocations without an explicit device
            # go there (a worker on cuda:3 would otherwise capture on cuda:0's stream: an empty graph)
            torch.cuda.set_device(device)
        if device.type == "cuda" and train.gpu_memory_fraction is not None:
            # several workers per GPU: each allocates at most this share (an allocation beyond it is an OOM error)
            torch.cuda.set_per_process_memory_fraction(train.gpu_memory_fraction, device)
        yield
    finally:
        torch.set_num_threads(prev_threads)
        if prev_device is not None:
            torch.cuda.set_device(prev_device)
        torch.use_deterministic_algorithms(prev_det)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = prev_bench, prev_cudnn_det


class _Progress:
    """A tqdm bar over all training batches (when asked or stderr is a tty), else one log line per epoch."""

    def __init__(self, mode: str, name: str, epochs: int, steps: int, start_epoch: int) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode, self.epochs, self.bar = mode, epochs, None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(
                total=epochs * steps,
                initial=(start_epoch - 1) * steps,
                desc=name,
                unit="batch",
                dynamic_ncols=True,
                mininterval=0.5,
                file=sys.stderr,
            )

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def epoch(self, m: EpochMetrics) -> None:
        if self.bar is not None:
            self.bar.set_postfix(
                epoch=m.epoch,
                loss=f"{m.train_loss:.3f}",
                val=f"{m.val_acc:.2f}",
                test=f"{m.test_acc:.2f}",
                refresh=False,
            )
        elif self.mode == "log":
            log.info(
                "epoch %d/%d  train loss %.4f acc %.2f%%  val loss %.4f acc %.2f%%  test acc %.2f%%  "
                "lr %.3g  %.1f s train + %.1f s eval",
                m.epoch,
                self.epochs,
                m.train_loss,
                m.train_acc,
                m.val_loss,
                m.val_acc,
                m.test_acc,
                m.lr,
                m.train_seconds,
                m.eval_seconds,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: DataBundle,
    split: str,
    batch_size: int,
    precision: str = "fp32",
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy in percent) of `model` on a split, in eval mode; (nan, nan) if it is empty."""
    x, _ = data.split(split)
    if len(x) == 0:
        return float("nan"), float("nan")
    device = x.device
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float32)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    try:
        for xb, yb in batches(data, split, batch_size, train=False, memory_format=memory_format):
            with fastpath.autocast(device, precision):
                out = model(xb)
            loss_sum += F.cross_entropy(out.float(), yb, reduction="sum")
            correct += (out.argmax(1) == yb).sum()
    finally:
        model.train(was_training)
    n = len(x)
    return loss_sum.item() / n, 100.0 * correct.item() / n


def _all_finite(model: nn.Module) -> bool:
    params = [p.detach() for p in model.parameters()]
    if not params:
        return True
    # one host sync: a per-tensor sum is non-finite iff some element is (or the sum overflows: diverged anyway)
    return bool(torch.isfinite(torch.stack([p.float().sum() for p in params])).all())


def _check_inputs(spec: ModelSpec, data: DataBundle, optim: OptimConfig, train: TrainConfig) -> torch.device:
    """The device of the fit; ConfigError for anything inconsistent (before any training)."""
    if not isinstance(spec, ModelSpec):
        raise ConfigError(f"fit needs a ModelSpec (e.g. dse.models.spec_from_name(name)), got {spec!r}")
    if not isinstance(optim, OptimConfig) or not isinstance(train, TrainConfig):
        raise ConfigError(
            f"fit needs an OptimConfig and a TrainConfig, got {type(optim).__name__} and {type(train).__name__}"
        )
    for name in ("precision", "channels_last"):
        if getattr(train, name) == "auto":
            raise ConfigError(f"train.{name}='auto' must be decided before fit: dse.autotune.resolve(spec, optim, "
                              "train) measures it on this machine")
    device = resolve_device(train.device)
    if train.precision == "amp" and device.type != "cuda":
        raise ConfigError(f"train.precision='amp' needs CUDA (device is {device}); use bf16 or fp32")
    if train.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"train.precision='bf16' is not supported by {torch.cuda.get_device_name(device)}; use amp or fp32"
        )
    if getattr(spec, "num_classes", None) != data.num_classes:
        raise ConfigError(
            f"model {getattr(spec, 'name', spec)} has num_classes={getattr(spec, 'num_classes', None)} "
            f"but the data ({data.source}) has {data.num_classes} classes"
        )
    n_train = len(data.train_y)
    if n_train < 2:
        raise ConfigError(f"the training split has {n_train} images; at least 2 are needed")
    return device


def fast_path_mode(train: TrainConfig, optim: OptimConfig, device: torch.device) -> str:
    """The step mode a fit with these configs runs on `device`: "graph", "compile" or "eager" (dse.fastpath)."""
    return fastpath.choose(train.fast_path, device, optim.name, optim.schedule, optim.momentum, train.precision)


@dataclass
class _Trainer:
    """What one fit trains with: the optimizer, the schedule (driven on `schedule_opt`: the optimizer itself, or in
    graph mode its CPU shadow whose float lr is copied into the graph's lr tensor), the step and the scaler."""

    model: nn.Module
    opt: torch.optim.Optimizer
    schedule_opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    step: fastpath.TrainStep
    scaler: torch.amp.GradScaler
    mode: str
    flags: dict[str, bool]

    def lr(self) -> float:
        return float(self.schedule_opt.param_groups[0]["lr"])

    def schedule_step(self) -> None:
        if self.schedule_opt is self.opt:
            self.sched.step()
            return
        with warnings.catch_warnings():  # the shadow optimizer is never stepped; PyTorch warns about that order
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            self.sched.step()
        fastpath.copy_lr(self.opt, self.schedule_opt)

    def load(self, state: dict[str, Any]) -> None:
        """Optimizer, schedule and scaler state from a last.pt (written by any mode)."""
        self.opt.load_state_dict(state["optimizer"])
        if self.mode == "graph":
            for group, saved in zip(self.schedule_opt.param_groups, state["optimizer"]["param_groups"], strict=True):
                group["lr"] = float(saved["lr"])
            for group in self.opt.param_groups:
                group.update(self.flags)
            fastpath.install_lr_tensor(self.opt, next(self.model.parameters()).device)
        self.sched.load_state_dict(state["scheduler"])
        fastpath.copy_lr(self.opt, self.schedule_opt)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def _make_trainer(
    spec: ModelSpec, model: nn.Module, optim: OptimConfig, train: TrainConfig, mode: str, device: torch.device,
    steps: int, capture: bool | None = None,
) -> _Trainer:
    """Optimizer, schedule and step for `mode`; capture=False runs the graph mode's step uncaptured (tests)."""
    flags = fastpath.graph_flags(optim.name, device) if mode == "graph" else {}
    opt = build_optimizer(model.parameters(), optim, **flags)
    schedule_opt = opt
    if mode == "graph":
        fastpath.install_lr_tensor(opt, device)
        schedule_opt = build_optimizer([torch.zeros(1, requires_grad=True)], optim)  # never stepped
    sched = build_scheduler(schedule_opt, optim, train.epochs, steps)
    fastpath.copy_lr(opt, schedule_opt)
    scaler = torch.amp.GradScaler("cuda", enabled=train.precision == "amp")
    step_model = None
    if mode == "compile":
        step_model = fastpath.compile_model(model)
    step = fastpath.TrainStep(
        model,
        nn.CrossEntropyLoss(label_smoothing=optim.label_smoothing),
        opt,
        device=device,
        precision=train.precision,
        batch_size=train.batch_size,
        mode=mode,
        step_model=step_model,
        scaler=scaler,
        capture=capture,
    )
    return _Trainer(model, opt, schedule_opt, sched, step, scaler, mode, flags)


def _train_epoch(
    tr: _Trainer, data: DataBundle, train: TrainConfig, epoch: int, per_iteration: bool, progress: _Progress
) -> tuple[float, float, float, float]:
    """One training pass: (mean loss in nats, accuracy %, training seconds without warm-up, warm-up seconds)."""
    device = data.device
    memory_format = torch.channels_last if train.channels_last else torch.contiguous_format
    gen = device_generator(_epoch_seed(train.seed, epoch), device)
    tr.model.train()
    tr.step.reset_epoch()
    warm0 = tr.step.warmup_seconds
    t0 = time.perf_counter()
    seen = 0
    for i, (xb, yb) in enumerate(
        batches(data, "train", train.batch_size, train=True, generator=gen, memory_format=memory_format)
    ):
        tr.step(xb, yb)
        if per_iteration:
            tr.schedule_step()
        seen += len(yb)
        progress.step()
        if (i + 1) % DIVERGENCE_CHECK_EVERY == 0 and not torch.isfinite(tr.step.loss_sum).item():
            raise DivergedError(epoch, tr.step.loss_sum.item() / seen)
    train_loss = tr.step.loss_sum.item() / seen  # the epoch's one sync
    train_acc = 100.0 * tr.step.correct.item() / seen
    _sync(device)
    warmup = tr.step.warmup_seconds - warm0
    return train_loss, train_acc, time.perf_counter() - t0 - warmup, warmup


def _write_checkpoints(
    tr: _Trainer, meta: dict[str, Any], m: EpochMetrics, improved: bool, history: list[EpochMetrics],
    best_path: Path, last_path: Path,
) -> None:
    sd = _state_dict_cpu(tr.model)
    if improved:  # best first: a kill between the two writes re-runs this epoch on resume
        atomic_torch_save(
            {**meta, "kind": "best", "epoch": m.epoch, "state_dict": sd, "metrics": m.to_dict()}, best_path
        )
    atomic_torch_save(
        {
            **meta,
            "kind": "last",
            "epoch": m.epoch,
            "state_dict": sd,
            "optimizer": fastpath.portable_state_dict(tr.opt),
            "scheduler": tr.sched.state_dict(),
            "scaler": tr.scaler.state_dict() if tr.scaler.is_enabled() else {},
            "rng": _rng_state(),
            "history": [h.to_dict() for h in history],
        },
        last_path,
    )


class _TensorBoard:
    """Per-epoch scalars as TensorBoard event files in `folder` (None: does nothing)."""

    def __init__(self, folder: str | None) -> None:
        self.writer = None
        if folder is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ConfigError(
                f"train.tensorboard_dir={folder!r} needs the tensorboard package (pip install tensorboard): {e}"
            ) from None
        self.writer = SummaryWriter(log_dir=folder)

    def epoch(self, m: EpochMetrics) -> None:
        if self.writer is None:
            return
        for tag, value in (
            ("loss/train", m.train_loss),
            ("loss/val", m.val_loss),
            ("accuracy/train", m.train_acc),
            ("accuracy/val", m.val_acc),
            ("accuracy/test", m.test_acc),
            ("lr", m.lr),
            ("seconds/train", m.train_seconds),
            ("seconds/eval", m.eval_seconds),
            ("seconds/warmup", m.warmup_seconds),
        ):
            self.writer.add_scalar(tag, value, m.epoch)
        self.writer.flush()

    def hparams(self, spec: ModelSpec, optim: OptimConfig, train: TrainConfig, best: EpochMetrics) -> None:
        """This run's row in TensorBoard's hparams view: what was trained, and what it reached at its best
        validation epoch (percent)."""
        if self.writer is None:
            return
        lr = optim.lr if optim.lr is not None else DEFAULT_LR[optim.name]
        h = {"model": spec.name, "arch": spec.arch, "width": float(spec.width), "dropout": float(spec.dropout),
             "optimizer": optim.name, "lr": float(lr), "batch_size": train.batch_size, "epochs": train.epochs,
             "seed": train.seed}
        metrics = {"hparam/best_val_acc": best.val_acc, "hparam/test_acc": best.test_acc}
        self.writer.add_hparams(h, metrics, run_name=".")  # ".": beside the scalars, not in a timestamped run

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _evaluate_epoch(
    model: nn.Module, data: DataBundle, train: TrainConfig, epoch: int
) -> tuple[float, float, float, float]:
    """(val loss, val acc %, test acc %, seconds) in eval mode; DivergedError when the validation loss is not finite."""
    memory_format = torch.channels_last if train.channels_last else torch.contiguous_format
    t1 = time.perf_counter()
    val_loss, val_acc = evaluate(model, data, "val", train.eval_batch_size, train.precision, memory_format)
    if len(data.val_y) and not math.isfinite(val_loss):
        # weights can stay finite while BatchNorm's running statistics overflow
        raise DivergedError(epoch, val_loss, "validation loss")
    _, test_acc = evaluate(model, data, "test", train.eval_batch_size, train.precision, memory_format)
    return val_loss, val_acc, test_acc, time.perf_counter() - t1


def _checkpoint_meta(
    spec: ModelSpec, optim: OptimConfig, train: TrainConfig, data: DataBundle, device: torch.device
) -> dict[str, Any]:
    """What every checkpoint carries; its "config" must match for a resume."""
    config = plain(
        {
            "spec": spec.to_dict(),
            "optim": optim.to_dict(),
            "train": train.semantic_dict(),
            "data": {"fingerprint": data.fingerprint, "source": data.source, "sizes": data.sizes()},
        }
    )
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "spec": spec.to_dict(),
        "config": config,
        "torch_version": str(torch.__version__),
        "device": str(device),
        "precision": train.precision,
    }


def _resume(tr: _Trainer, last_path: Path, config: dict[str, Any], name: str) -> list[EpochMetrics]:
    """Load a matching last.pt into the model, optimizer, schedule and RNG; its epoch history ([] if unusable)."""
    state = _try_load_last(last_path, config)
    if state is None:
        return []
    tr.model.load_state_dict(state["state_dict"])
    tr.load(state)
    _set_rng_state(state["rng"])
    log.info("resuming %s from %s after epoch %d", name, last_path, int(state["epoch"]))
    return [EpochMetrics(**m) for m in state["history"]]


def fit(spec: ModelSpec, data: DataBundle, optim: OptimConfig, train: TrainConfig,
        on_epoch: Callable[[EpochMetrics], None] | None = None) -> TrialResult:
    """Train `spec` on `data` and return its TrialResult (paper section 3's recipe by default).

    Each epoch: one training pass (random order and crop/flip seeded from (train.seed, epoch), drawn on the
    device), then evaluation on validation and test in eval mode, then checkpoints (best.pt if validation
    accuracy improved, last.pt), then `on_epoch(metrics)`. An exception from on_epoch (e.g. optuna.TrialPruned)
    propagates with the checkpoints already consistent. With train.resume and a last.pt of the same spec,
    optimizer config, train semantics and data, training continues after its epoch and reproduces an
    uninterrupted run's metrics (same device). The step runs as train.fast_path selects (dse.fastpath).

    Raises ConfigError (before any training) for invalid or inconsistent inputs, DivergedError when the training
    loss becomes NaN/inf (checked every DIVERGENCE_CHECK_EVERY batches and at epoch end; no checkpoint is written
    for that epoch), CheckpointError never for a damaged last.pt (it is ignored with a warning: training restarts).
    """
    device = _check_inputs(spec, data, optim, train)
    steps = steps_per_epoch(len(data.train_y), train.batch_size)
    facts = model_facts(spec)  # before seeding: it builds a model and would consume the seeded RNG
    mode = fast_path_mode(train, optim, device)

    with _runtime(train, device):
        used_threads = torch.get_num_threads()
        data = data.to(device)
        memory_format = torch.channels_last if train.channels_last else torch.contiguous_format
        torch.manual_seed(train.seed)  # weight init and dropout (CPU and all CUDA devices)
        model = build_model(spec).to(device, memory_format=memory_format)
        tr = _make_trainer(spec, model, optim, train, mode, device, steps)
        per_iteration = optim.schedule in PER_ITERATION_SCHEDULES
        meta = _checkpoint_meta(spec, optim, train, data, device)
        best_path, last_path = _checkpoint_paths(train)
        resume = last_path is not None and train.resume and last_path.exists()
        history = _resume(tr, last_path, meta["config"], spec.name) if resume else []
        start_epoch = history[-1].epoch + 1 if history else 1
        resumed_from = start_epoch - 1
        best = _best_of(history)

        progress = _Progress(train.progress, spec.name, train.epochs, steps, start_epoch)
        board = _TensorBoard(train.tensorboard_dir)
        try:
            for epoch in range(start_epoch, train.epochs + 1):
                m = _run_epoch(tr, model, data, train, epoch, per_iteration, progress)
                history.append(m)
                improved = _improves(m, best)
                if improved:
                    best = m
                if last_path is not None:
                    _write_checkpoints(tr, meta, m, improved, history, best_path, last_path)
                progress.epoch(m)
                board.epoch(m)
                if on_epoch is not None:
                    on_epoch(m)
            if best is not None:
                board.hparams(spec, optim, train, best)
        finally:
            progress.close()
            board.close()
            if mode == "compile":
                fastpath.release_compiled()

    assert best is not None  # epochs >= 1 and either trained or resumed with history
    return _result(history, best, best_path, facts, device, train, used_threads, resumed_from, tr.step.mode)


def _checkpoint_paths(train: TrainConfig) -> tuple[Path | None, Path | None]:
    """(best.pt, last.pt) in train.checkpoint_dir, or (None, None) when the fit writes no checkpoints."""
    folder = Path(train.checkpoint_dir) if train.checkpoint_dir else None
    return (folder / "best.pt", folder / "last.pt") if folder else (None, None)


def _run_epoch(tr: _Trainer, model: nn.Module, data: DataBundle, train: TrainConfig, epoch: int,
               per_iteration: bool, progress: _Progress) -> EpochMetrics:
    """One epoch: the training pass, the divergence checks, the epoch's schedule step, evaluation."""
    lr = tr.lr()
    train_loss, train_acc, train_seconds, warmup = _train_epoch(tr, data, train, epoch, per_iteration, progress)
    if not math.isfinite(train_loss):
        raise DivergedError(epoch, train_loss)
    if not _all_finite(model):
        raise DivergedError(epoch, float("nan"), "model weights")
    if not per_iteration:
        tr.schedule_step()
    val_loss, val_acc, test_acc, eval_seconds = _evaluate_epoch(model, data, train, epoch)
    return EpochMetrics(epoch=epoch, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc,
                        test_acc=test_acc, lr=lr, train_seconds=train_seconds, eval_seconds=eval_seconds,
                        warmup_seconds=warmup)


def _result(history: list[EpochMetrics], best: EpochMetrics, best_path: Path | None, facts: Any,
            device: torch.device, train: TrainConfig, threads: int, resumed_from: int, fast_path: str) -> TrialResult:
    """The TrialResult of a finished fit: the best epoch's accuracies, the last epoch's, and what ran."""
    last = history[-1]
    return TrialResult(
        best_val_acc=best.val_acc,
        best_epoch=best.epoch,
        final_val_acc=last.val_acc,
        test_acc=best.test_acc,
        final_test_acc=last.test_acc,
        sec_per_epoch=float(np.mean([h.train_seconds for h in history])),
        params=facts.params,
        macs=facts.macs,
        checkpoint_bytes=facts.checkpoint_bytes,
        device=str(device),
        precision=train.precision,
        torch_version=str(torch.__version__),
        epochs=history,
        best_checkpoint=str(best_path) if best_path is not None and best_path.exists() else None,
        resumed_from_epoch=resumed_from,
        threads=threads,
        fast_path=fast_path,  # eager when a capture or compilation failed and the trial fell back
        warmup_seconds=float(sum(h.warmup_seconds for h in history)),
        channels_last=bool(train.channels_last),
    )


def _improves(m: EpochMetrics, best: EpochMetrics | None) -> bool:
    """The best-epoch rule: the first epoch with the highest val_acc wins (with no validation images, val_acc is
    NaN and the last epoch is the best)."""
    return best is None or math.isnan(m.val_acc) or m.val_acc > best.val_acc


def _best_of(history: list[EpochMetrics]) -> EpochMetrics | None:
    """The epoch fit would have picked: first epoch with the highest val_acc (the last one if val is empty)."""
    best = None
    for m in history:
        if _improves(m, best):
            best = m
    return best


def _try_load_last(path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The last.pt state if it is readable and was written for the same config; else None (with a warning)."""
    try:
        state = load_checkpoint(path)
    except CheckpointError as e:
        log.warning("not resuming: %s; training from scratch", e)
        return None
    needed = ("optimizer", "scheduler", "rng", "history", "config")
    if state.get("kind") != "last" or any(k not in state for k in needed):
        log.warning("not resuming: %s is not a last.pt checkpoint; training from scratch", path)
        return None
    if state["config"] != config:
        diff = sorted(k for k in set(config) | set(state["config"]) if config.get(k) != state["config"].get(k))
        log.warning("not resuming: %s was written for a different %s; training from scratch", path, ", ".join(diff))
        return None
    return state


__all__ = [
    "DEFAULT_LR",
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "EpochMetrics",
    "OptimConfig",
    "TrainConfig",
    "TrialResult",
    "build_optimizer",
    "build_scheduler",
    "evaluate",
    "fast_path_mode",
    "fit",
    "load_checkpoint",
    "load_model",
    "resolve_device",
    "steps_per_epoch",
]
