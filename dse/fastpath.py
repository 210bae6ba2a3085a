"""The training step of `dse.train.fit`, eager or fast: one CUDA graph per step, or torch.compile.

The small networks of the design space are launch-bound on a GPU: a batch of 128 32x32 images takes a few
microseconds of arithmetic per layer, while Python and the CUDA driver spend ~5-10 us launching each of the
~1,000 kernels of a forward + backward + optimizer step. Measured on one H200 with PyTorch 2.11 (before this
module existed; Shallow SqueezeNext-06-0.4x, 45,000 images, batch 128): eager fp32 4.27 s/epoch, torch.compile
reduce-overhead 1.68 s (after 56 s of compilation), the whole step in one CUDA graph 1.05 s (bf16, channels_last).

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
per epoch. Reuse across trials of one worker process: cuDNN's autotuning results are process-wide. A CUDA graph
is bound to the addresses of one model's tensors, so each trial captures its own (a fraction of a second of the
warm-up; the eager warm-up steps before the capture are ordinary training steps). fast_path=compile releases its
code and CUDA graph trees when a trial ends (`release_compiled`): they hold the finished model's memory pool.

Devices: the graph is captured with the trial's device current and on a stream of that device, so a worker on
cuda:3 captures its own work (a capture on another device's stream records an empty graph). A capture or
compilation that fails for any reason falls back to eager for the rest of the trial, logged once (`_fall_back`):
a trial never fails because the fast path did.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from dse import optimizers
from dse.errors import first_line
from dse.spec import FAST_PATHS

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager steps on a side stream before the capture (PyTorch's documented recipe uses 3)
#: Constructor flags that make an optimizer run inside a CUDA graph (its state, step counts and lr on the device,
#: no host reads), by optimizer: ``graph_flags`` of its entry in dse.optimizers.TABLE, where it has them.
GRAPH_FLAGS: dict[str, dict[str, bool]] = {
    name: o.graph_flags for name, o in optimizers.TABLE.items() if o.graph_flags is not None}
_LOGGED: set[str] = set()


def _log_once(key: str, message: str, *args: Any) -> None:
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.warning(message, *args)


def graph_blocker(optimizer: str, schedule: str, momentum: float, precision: str) -> str | None:
    """Why a training step with these settings cannot be captured in a CUDA graph here, or None when it can."""
    entry = optimizers.TABLE[optimizer]
    if entry.graph_flags is None:
        return f"optimizer {optimizer}: {entry.no_graph}"
    cls = entry.cls()
    missing = [f for f in entry.graph_flags if f not in inspect.signature(cls.__init__).parameters]
    if missing:
        return f"optimizer {optimizer}: this PyTorch's {cls.__name__} has no {', '.join(missing)} option"
    if precision == "amp":
        return "precision amp: GradScaler reads its inf check on the host every step (use bf16)"
    if schedule == "onecycle" and entry.cycles_momentum(momentum):
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


def compile_model(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch.compile(model, mode="reduce-overhead"): Inductor code run through CUDA graph trees."""
    return torch.compile(model, mode="reduce-overhead")


def release_compiled() -> None:
    """Drop this process's compiled code and its CUDA graph trees after a trial of fast_path=compile.

    The graph trees hold a memory pool and the static addresses of the finished trial's parameters; a worker
    that kept them would grow with every trial. torch.compiler.reset() frees them (it resets the graph trees
    with the code caches); the next trial of the same architecture recompiles from Inductor's on-disk cache,
    which is much faster than a first compilation."""
    torch.compiler.reset()


@contextlib.contextmanager
def side_stream(device: torch.device) -> Iterator[None]:
    """On CUDA: run the block on a fresh stream of `device` that waits for, and is waited on by, the current
    one (the warm-up a capture needs); elsewhere: nothing."""
    if device.type != "cuda":
        yield
        return
    main = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        yield
    main.wait_stream(side)


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
        self.fell_back: str | None = None  # why a capture or compilation failed (the step then runs eagerly)

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
            try:
                self._warm_up_or_capture(x, y)
            except Exception as e:  # noqa: BLE001 - any capture error: this trial goes on eagerly
                self._fall_back("capture", e, x, y)
            return
        # once a graph owns the gradient tensors they are zeroed in place: its kernels keep their addresses
        self.opt.zero_grad(set_to_none=self.graph is None)
        if full and self.mode == "compile":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs may be overwritten
            if not self._compiled_once:
                self._compiled_once = True
                try:
                    self._timed_warmup(lambda: self._step(self.step_model, x, y))
                except Exception as e:  # noqa: BLE001 - any compilation error: this trial goes on eagerly
                    self._fall_back("compilation", e, x, y)
                return
            self._step(self.step_model, x, y)
            return
        self._step(self.model, x, y)

    def _fall_back(self, what: str, e: Exception, x: torch.Tensor, y: torch.Tensor) -> None:
        """A failed capture or compilation: log once, train this batch and the rest of the trial eagerly.

        A capture records kernels without running them, and a compilation fails while tracing, before the
        optimizer steps, so the batch has not been trained: it is trained now. The optimizer's capturable or
        fused variant and the lr tensor work eagerly as well, so the trial's arithmetic is unchanged."""
        first = first_line(e)
        _log_once(f"fallback:{what}:{first}", "CUDA graph %s failed (%s: %s); this trial trains eagerly", what,
                  type(e).__name__, first[:200])
        self.fell_back = f"{what} failed: {first[:200]}"
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.graph, self.static, self.capture, self.mode = None, None, False, "eager"
        self.step_model = self.model
        self.opt.zero_grad(set_to_none=True)
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
            self.opt.zero_grad(set_to_none=True)
            with side_stream(self.device):
                self._step(self.model, x, y)
            self.warm_steps += 1
            return
        self.static = (x.clone(), y.clone())  # clone keeps channels_last
        self._timed_warmup(self._capture)
        self.graph.replay()  # capturing records the step without running it: run it for this batch

    def _capture(self) -> None:
        """Capture one step on a stream of the trial's own device (made current first): a graph captured on
        another device's stream would record nothing, and every replay would silently do nothing."""
        self.opt.zero_grad(set_to_none=True)  # gradients are then allocated inside the graph's memory pool
        with torch.cuda.device(self.device), warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            graph = torch.cuda.CUDAGraph()
            stream = torch.cuda.Stream(self.device)
            with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                self._step(self.model, *self.static)
        empty = [w for w in said if "graph is empty" in str(w.message).lower()]
        if empty:  # replays would do nothing: train eagerly instead (the caller falls back)
            raise RuntimeError(f"the captured CUDA graph is empty ({first_line(str(empty[0].message))})")
        self.graph = graph
