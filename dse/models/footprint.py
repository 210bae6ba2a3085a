"""What a network needs on a small board, known before training: peak activation memory and int8 weight bytes.

On a microcontroller the binding limits are the int8 weights in flash and the activations in RAM, not the
parameter count (MCUNet's TinyNAS and uNAS search under the same two). Both are counted from the network itself,
for one image (batch 1), without training it: weights do not change either number.

- ``peak_activations``: the largest number of activation elements alive at once when the graph runs in its
  execution order (``torch.fx`` trace; tensor shapes from one forward pass). A tensor is alive from the step that
  computes it to the last step that reads it; while a step runs, its inputs and its output are both alive.
  Skip connections therefore count: a residual input stays alive across its whole branch. Views (flatten,
  reshape, eval-mode dropout, identity) share their input's buffer. An in-place activation is counted as a
  separate buffer, as an embedded runtime's memory planner would allocate it (TFLite Micro plans no in-place
  ops). The network's input image counts; its weights do not (they are in flash). Times 1 byte: the int8 RAM
  (every activation stored as int8, as a microcontroller runtime stores it); times 4: float32.
- ``int8_weight_bytes``: what an int8 deployment stores in flash: every Conv2d and Linear weight as int8
  (1 byte), its bias as int32 (4 bytes) and one float32 scale plus one int8 zero point per output channel
  (per-channel quantization); BatchNorm layers as float32 scale and shift (2 x 4 bytes per channel: Shallow
  SqueezeNext's BN follows an ELU, so it cannot be folded into the convolution). Graph structure and the
  activations' per-tensor scales are not counted; ``dse.deploy``'s ``.int8.onnx`` file holds them too
  (tests/test_models.py compares the two).
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

#: Modules whose output is their input's buffer at inference time.
VIEW_MODULES = (nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout2d)
#: Functions and methods whose output is a view of their first input.
VIEW_CALLS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, operator.getitem,
              "flatten", "view", "reshape", "squeeze", "unsqueeze", "contiguous"}


def _is_view(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), VIEW_MODULES)
    return node.op in ("call_function", "call_method") and node.target in VIEW_CALLS


def _elements(node: fx.Node) -> int:
    meta = node.meta.get("tensor_meta")
    return int(torch.Size(meta.shape).numel()) if meta is not None and hasattr(meta, "shape") else 0


def peak_activations(model: nn.Module, input_size: tuple[int, ...] = (3, 32, 32)) -> int:
    """The most activation elements alive at once for one image (see the module docstring)."""
    was_training = model.training
    model.eval()
    try:
        gm = fx.symbolic_trace(model)
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(1, *input_size))
    finally:
        model.train(was_training)
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    step = {n: i for i, n in enumerate(nodes)}
    buffer: dict[fx.Node, fx.Node] = {}  # node -> the node whose buffer holds its value
    for n in nodes:
        first = next(iter(n.all_input_nodes), None)
        buffer[n] = buffer[first] if first is not None and _is_view(gm, n) else n
    last_read: dict[fx.Node, int] = {}
    for n in gm.graph.nodes:
        at = step.get(n, len(nodes))  # the output node reads at the end
        for src in n.all_input_nodes:
            last_read[buffer[src]] = max(last_read.get(buffer[src], 0), at)
    owners = [n for n in nodes if buffer[n] is n]
    peak = 0
    for i in range(len(nodes)):
        alive = sum(_elements(b) for b in owners if step[b] <= i <= last_read.get(b, step[b]))
        peak = max(peak, alive)
    return peak


def int8_weight_bytes(model: nn.Module) -> int:
    """Flash bytes of the int8 weights (see the module docstring)."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            out = m.weight.shape[0]
            total += m.weight.numel() + (4 * out if m.bias is not None else 0) + 5 * out
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            total += 8 * m.num_features
    return total


__all__ = ["int8_weight_bytes", "peak_activations"]
