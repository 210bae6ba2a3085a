"""Cheap facts about a model, known before training: parameters, MACs, checkpoint bytes, int8 flash, peak RAM.

They are computed before training so that a size or MAC budget rejects a configuration without spending any
training on it, and they mean what the paper means: "model size" is the bytes of the saved float32 state_dict.

- ``params``: trainable parameters (``requires_grad``), BN affine weights included, BN running stats not.
- ``macs``: multiply-accumulates for ONE image of ``input_size`` (default 3x32x32, CIFAR), counted by forward
  hooks on ``nn.Conv2d`` (output elements x in_channels/groups x kernel area) and ``nn.Linear`` (in x out per
  output row). Not counted: biases, BatchNorm, activations, pooling, dropout, element-wise adds, concat.
- ``checkpoint_bytes``: ``len`` of ``torch.save(model.state_dict(), BytesIO)`` with float32 weights (PyTorch's
  default zip format; BN running stats and counters included). This is the paper's "model size" (the size of
  the saved checkpoint file, Tables 1-7). The paper's MB are 1e6 bytes: SqueezeNext-23 1x/2x give 2.656e6 /
  9.605e6 bytes here against the paper's 2.586 / 9.525 MB (+2.7 % / +0.8 %; the gap is a near-constant
  ~75 KB of serialisation overhead, not layout: the raw tensor bytes are 2.402e6 / 9.349e6, and PyTorch's
  legacy non-zip format gives 2.543e6 / 9.491e6). With MB = 2**20 bytes the 2x model would be 3.8 % off.
- ``flash_bytes`` and ``peak_activations``: what a small board holds, int8 weights in flash and the most
  activation elements alive at once for one image (``dse.models.footprint``); ``ram_bytes_int8`` and
  ``ram_bytes_fp32`` are the latter at 1 and 4 bytes per element.
"""

from __future__ import annotations

import functools
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from dse.common import cache_root, read_json_cache, update_json_cache
from dse.models.footprint import int8_weight_bytes, peak_activations
from dse.models.registry import InvalidModelConfig, ModelSpec, build_model

MB = 1_000_000  # bytes per MB in the paper's tables (see module docstring)


@dataclass(frozen=True)
class ModelFacts:
    params: int  # trainable parameters
    macs: int  # multiply-accumulates per image (conv + linear)
    checkpoint_bytes: int  # bytes of the saved float32 state_dict
    flash_bytes: int  # int8 weights, int32 biases, per-channel scales, float32 BatchNorm (dse.models.footprint)
    peak_activations: int  # activation elements alive at once, one image (dse.models.footprint)

    @property
    def checkpoint_mb(self) -> float:
        return self.checkpoint_bytes / MB

    @property
    def ram_bytes_int8(self) -> int:
        return self.peak_activations

    @property
    def ram_bytes_fp32(self) -> int:
        return 4 * self.peak_activations


def count_macs(model: nn.Module, input_size: tuple[int, ...] = (3, 32, 32)) -> int:
    """MACs for one image, by forward hooks on Conv2d and Linear (see module docstring)."""
    total = 0

    def conv_hook(m: nn.Conv2d, inp, out) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1]
        total += out.numel() // out.shape[0] * (m.in_channels // m.groups) * k

    def linear_hook(m: nn.Linear, inp, out) -> None:
        nonlocal total
        total += out.numel() // out.shape[0] * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        p = next(model.parameters(), None)
        x = torch.zeros(
            1,
            *input_size,
            device=p.device if p is not None else "cpu",
            dtype=p.dtype if p is not None else torch.float32,
        )
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


def checkpoint_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` in memory (float32 weights as built)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def _facts_of_module(model: nn.Module, input_size: tuple[int, ...]) -> ModelFacts:
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ModelFacts(
        params=params, macs=count_macs(model, input_size), checkpoint_bytes=checkpoint_bytes(model),
        flash_bytes=int8_weight_bytes(model), peak_activations=peak_activations(model, input_size))


def _disk_cache_path() -> Path:
    # v2: flash_bytes and peak_activations (a v1 file lacks them: a new file, computed again once)
    return cache_root() / f"model_facts-v2-torch{torch.__version__.split('+')[0]}.json"


def _disk_key(spec: ModelSpec, input_size: tuple[int, ...]) -> str:
    return json.dumps([spec.to_dict(), list(input_size)], sort_keys=True)


@functools.lru_cache(maxsize=4096)
def _facts_of_spec(spec: ModelSpec, input_size: tuple[int, ...]) -> ModelFacts:
    # Building ~600 models and serialising their state_dicts takes tens of seconds on a small CPU, and every
    # sweep worker plans the whole grid at start: keep the facts on disk, keyed by spec and torch version.
    key = _disk_key(spec, input_size)
    hit = read_json_cache(_disk_cache_path()).get(key)
    if hit is not None:
        return ModelFacts(**hit)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny forward passes: more threads only add contention
    try:
        facts = _facts_of_module(build_model(spec), input_size)
    finally:
        torch.set_num_threads(threads)
    update_json_cache(_disk_cache_path(), {key: asdict(facts)})
    return facts


def model_facts(
    spec_or_module: ModelSpec | nn.Module, input_size: tuple[int, ...] = (3, 32, 32)
) -> ModelFacts:
    """Params, MACs, checkpoint bytes, int8 flash and peak activations of a spec (cached per spec) or a module."""
    input_size = tuple(int(v) for v in input_size)
    if isinstance(spec_or_module, ModelSpec):
        # dropout and activation change neither weights nor conv/linear MACs: share one cache entry
        return _facts_of_spec(spec_or_module.replace(dropout=None, activation=None), input_size)
    if isinstance(spec_or_module, nn.Module):
        return _facts_of_module(spec_or_module, input_size)
    raise InvalidModelConfig(
        f"model_facts needs a ModelSpec or nn.Module, got {type(spec_or_module).__name__}"
    )
