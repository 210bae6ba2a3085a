"""The training step of `dse.train.fit`, eager or fast: one CUDA graph per step, or torch.compile.

The small networks of the design space are launch-bound on a GPU: a batch of 128 32x32 images takes a few
microseconds of arithmetic per layer, while Python and the CUDA driver spend ~5-10 us launching each of the
~1,000 kernels of a forward + backward + optimizer step. Measured on one H200 with PyTorch 2.11 (issue 10,
Shallow SqueezeNext-06-0.4x, 45,000 images, batch 128): eager fp32 4.27 s/epoch, torch.compile reduce-overhead
1.68 s (after 56 s of compilation), the whole step in one CUDA graph 1.05 s (bf16, channels_last).

Modes (`TrainConfig.fast_path`):
  graph    forward, loss, backward and the optimizer step captured in ONE torch.cuda.CUDAGraph and replayed per
           batch from static input buffers. The optimizer runs inside the graph with its device-side variant
           (`capturable=True`; SGD: `fused=True`) and the learning rate as a 0-dim device tensor; the schedule is
           computed on a shadow optimizer (a CPU stand-in of the same class) and written into that tensor with
           `fill_` outside the graph, so step, cosine and one-cycle schedules all keep working.
  compile  the model under torch.compile(mode="reduce-overhead") (the optimizer stays eager).
  eager    plain PyTorch.
  auto     graph on CUDA when the optimizer and precision allow it, eager otherwise (CPU: eager).
A configuration the graph cannot run (see `choose`) falls back to eager with one log line per reason and process.

Static shapes: a captured graph has one batch size. The final partial batch of an epoch is not dropped: it runs
as an eager step on the same parameters, gradients and optimizer state (the optimizer's capturable variant also
runs eagerly), so every image is trained on exactly as in the eager path, and no second graph is captured.

Evaluation stays eager in eval mode at the static eval batch size (dse.train.evaluate): the loss and correct
counts accumulate on the device and the host reads them once per split, so it never waits per batch.

Warm-up (graph capture, compilation) is timed apart (`TrainStep.warmup_seconds`) and is not part of the seconds
per epoch. Reuse across trials of one worker process: cuDNN's autotuning results are process-wide; compiled code
is kept while consecutive trials share an architecture, batch and precision (`compile_model`) and is dropped with
`torch.compiler.reset()` when the architecture changes, so no more than one architecture's code accumulates. A
CUDA graph is bound to the addresses of one model's tensors, so each trial captures its own (a fraction of a
second of the warm-up; the eager warm-up steps before the capture are ordinary training steps).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

FAST_PATHS = ("auto", "graph", "compile", "eager")
WARMUP_STEPS = 3  # eager steps on a side stream before the capture (PyTorch's documented recipe uses 3)
#: Constructor flags that make each optimizer of Table 6 run inside a CUDA graph: its state (step counts, lr) on
#: the device and no host reads. Adagrad keeps its step count on the host in PyTorch (no capturable option) and
#: AdaBound (third party) does its bound arithmetic in Python floats: neither can be captured.
GRAPH_FLAGS: dict[str, dict[str, bool]] = {
    "sgd_nesterov": {"fused": True},
    "sgd": {"fused": True},
    "adam": {"capturable": True},
    "adamax": {"capturable": True},
    "adadelta": {"capturable": True},
    "asgd": {"capturable": True},
    "rmsprop": {"capturable": True},
    "rprop": {"capturable": True},
}
_OPTIMIZER_CLASSES = {
    "sgd_nesterov": "SGD",
    "sgd": "SGD",
    "adam": "Adam",
    "adamax": "Adamax",
    "adadelta": "Adadelta",
    "asgd": "ASGD",
    "rmsprop": "RMSprop",
    "rprop": "Rprop",
}
_LOGGED: set[str] = set()


def _log_once(key: str, message: str, *args: Any) -> None:
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.warning(message, *args)


def graph_blocker(optimizer: str, schedule: str, momentum: float, precision: str) -> str | None:
    """Why a training step with these settings cannot be captured in a CUDA graph here, or None when it can."""
    flags = GRAPH_FLAGS.get(optimizer)
    if flags is None:
        what = (
            "a third-party optimizer computing in Python floats"
            if optimizer == "adabound"
            else ("PyTorch's Adagrad keeps its step count on the host")
        )
        return f"optimizer {optimizer}: {what}"
    cls = getattr(torch.optim, _OPTIMIZER_CLASSES[optimizer])
    missing = [f for f in flags if f not in inspect.signature(cls.__init__).parameters]
    if missing:
        return f"optimizer {optimizer}: this PyTorch's {cls.__name__} has no {', '.join(missing)} option"
    if precision == "amp":
        return "precision amp: GradScaler reads its inf check on the host every step (use bf16)"
    cycles_momentum = optimizer in ("sgd_nesterov", "adam", "adamax") or (optimizer == "sgd" and momentum > 0)
    if schedule == "onecycle" and cycles_momentum:
        return f"schedule onecycle with {optimizer}: the momentum it cycles is a constant inside a captured graph"
    return None


def choose(requested: str, device: torch.device, optimizer: str, schedule: str, momentum: float, precision: str) -> str:
    """The mode `fit` runs: "graph", "compile" or "eager" for the requested `fast_path` on `device`.

    "auto" means graph on CUDA when `graph_blocker` allows it, else eager; "graph" that cannot be captured (no
    CUDA, or a blocker) runs eager; both fallbacks are logged once per reason and process.
    """
    if requested not in FAST_PATHS:
        raise ValueError(f"fast_path={requested!r} is unknown; allowed: {', '.join(FAST_PATHS)}")
    if requested in ("eager", "compile"):
        return requested
    if device.type != "cuda":
        if requested == "graph":
            _log_once(f"nocuda:{device.type}", "fast_path=graph needs CUDA (device is %s); training eagerly", device)
        return "eager"
    blocker = graph_blocker(optimizer, schedule, momentum, precision)
    if blocker is not None:
        _log_once(blocker, "no CUDA graph for this training step (%s); training eagerly", blocker)
        return "eager"
    return "graph"


def graph_flags(optimizer: str, device: torch.device) -> dict[str, bool]:
    """Constructor flags for the graph mode's optimizer. capturable needs a CUDA device; on the CPU (tests of the
    uncaptured step) it is left off, which changes where the step count lives, not the arithmetic."""
    flags = dict(GRAPH_FLAGS[optimizer])
    if "capturable" in flags:
        flags["capturable"] = device.type == "cuda"
    return flags


def install_lr_tensor(opt: torch.optim.Optimizer, device: torch.device) -> list[torch.Tensor]:
    """Replace each param group's float lr by a 0-dim float32 tensor on `device` (the graph reads it every
    replay); returns the tensors. Also moves step counters to the device where the optimizer is capturable (a
    state loaded from a checkpoint written by an eager run keeps them on the CPU)."""
    tensors = []
    for group in opt.param_groups:
        lr = group["lr"]
        t = torch.tensor(float(lr), dtype=torch.float32, device=device)
        group["lr"] = t
        tensors.append(t)
        if group.get("capturable"):
            for p in group["params"]:
                state = opt.state.get(p, {})
                if torch.is_tensor(state.get("step")):
                    state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
    return tensors


def copy_lr(opt: torch.optim.Optimizer, schedule_opt: torch.optim.Optimizer) -> None:
    """Write the schedule's current lr (a float on the shadow optimizer) into `opt`'s lr tensors, outside the graph
    (an asynchronous fill on the device: no host sync). A no-op when both are the same optimizer."""
    if opt is schedule_opt:
        return
    for group, shadow in zip(opt.param_groups, schedule_opt.param_groups, strict=True):
        group["lr"].fill_(float(shadow["lr"]))


def portable_state_dict(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state_dict with plain float learning rates, loadable by an eager run as well."""
    sd = opt.state_dict()
    for group in sd["param_groups"]:
        if torch.is_tensor(group.get("lr")):
            group["lr"] = float(group["lr"])
    return sd


_COMPILED: dict[str, Any] = {"key": None}


def compile_model(model: nn.Module, key: tuple) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch.compile(model, mode="reduce-overhead"); Dynamo's compiled code is reset first when `key` (model spec,
    batch, precision, memory format) differs from the previous call's, so code of one architecture at a time is
    kept and trials of the same architecture reuse it without recompiling."""
    if _COMPILED["key"] is not None and _COMPILED["key"] != key:
        torch.compiler.reset()
    _COMPILED["key"] = key
    return torch.compile(model, mode="reduce-overhead")


def autocast(device: torch.device, precision: str, cache_enabled: bool = True):
    """The autocast context of a precision ("fp32": none). A captured graph needs cache_enabled=False: autocast's
    weight-cast cache would otherwise hand later replays tensors freed after the capture."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)
    if precision == "amp":
        return torch.autocast(device.type, dtype=torch.float16, cache_enabled=cache_enabled)
    return contextlib.nullcontext()


class TrainStep:
    """One training step per call on a batch (x, y): forward, loss, backward, optimizer step; the epoch's loss sum
    (nats over images) and correct count accumulate on the device in `loss_sum` / `correct` (read once per epoch).

    mode "graph" (CUDA only): the first WARMUP_STEPS full batches run eagerly on a side stream (allocations
    settle; cuDNN autotunes), the next one is captured into a CUDAGraph and replayed, and every later full batch
    is copied into the static input buffers and replayed. A partial batch (the epoch's last) runs eagerly. With
    capture=False the same step function runs uncaptured (how the CPU tests compare it to the eager path).
    mode "compile": full batches through `step_model` (compiled), a partial batch through `model` (no recompile
    for a second shape). mode "eager": `model` for everything, GradScaler when `scaler` is enabled.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        opt: torch.optim.Optimizer,
        *,
        device: torch.device,
        precision: str,
        batch_size: int,
        mode: str = "eager",
        step_model: Callable[[torch.Tensor], torch.Tensor] | None = None,
        scaler: torch.amp.GradScaler | None = None,
        capture: bool | None = None,
    ) -> None:
        self.model, self.criterion, self.opt = model, criterion, opt
        self.device, self.precision, self.batch_size, self.mode = device, precision, batch_size, mode
        self.step_model = step_model if step_model is not None else model
        self.scaler = scaler
        self.capture = (mode == "graph" and device.type == "cuda") if capture is None else capture
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float32)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[torch.Tensor, torch.Tensor] | None = None
        self.warm_steps = 0
        self.warmup_seconds = 0.0  # capture / compilation time, seconds (not training)
        self._compiled_once = False

    def reset_epoch(self) -> None:
        """Zero the epoch's accumulators in place (a captured graph adds into these very tensors)."""
        self.loss_sum.zero_()
        self.correct.zero_()

    def _step(self, net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast(self.device, self.precision, cache_enabled=self.mode != "graph"):
            out = net(x)
            loss = self.criterion(out, y)
        if self.scaler is not None and self.scaler.is_enabled():
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        self.loss_sum += loss.detach().float() * y.shape[0]
        self.correct += (out.detach().argmax(1) == y).sum()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        full = y.shape[0] == self.batch_size
        if full and self.graph is not None:
            self.static[0].copy_(x)
            self.static[1].copy_(y)
            self.graph.replay()
            return
        if full and self.capture:
            self._warm_up_or_capture(x, y)
            return
        # once a graph owns the gradient tensors they are zeroed in place: its kernels keep their addresses
        self.opt.zero_grad(set_to_none=self.graph is None)
        if full and self.mode == "compile":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs may be overwritten
            if not self._compiled_once:
                self._compiled_once = True
                self._timed_warmup(lambda: self._step(self.step_model, x, y))
                return
            self._step(self.step_model, x, y)
            return
        self._step(self.model, x, y)

    def _timed_warmup(self, work: Callable[[], None]) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        work()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.warmup_seconds += time.perf_counter() - t0

    def _warm_up_or_capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.warm_steps < WARMUP_STEPS:  # ordinary training steps, on a side stream as the capture needs
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.opt.zero_grad(set_to_none=True)
                self._step(self.model, x, y)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.warm_steps += 1
            return
        self.static = (x.clone(), y.clone())  # clone keeps channels_last
        self._timed_warmup(self._capture)
        self.graph.replay()  # capturing records the step without running it: run it for this batch

    def _capture(self) -> None:
        self.opt.zero_grad(set_to_none=True)  # gradients are then allocated inside the graph's memory pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._step(self.model, *self.static)
        self.graph = graph
