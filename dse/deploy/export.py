"""Export a trained model to ONNX and TorchScript, run every format on real images, verify they agree.

- ONNX: the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): the dynamo exporter, the
  default since torch 2.9, needs the ``onnxscript`` package, which these plain conv/ELU/BN graphs do not need.
  Opset 17, batch dimension dynamic, input "input" = normalised float32 (N, 3, 32, 32), output "logits"
  (N, C). ``onnx.checker.check_model`` must pass. Tensor and node names are shortened (``compact_names``): for
  models of a few hundred kB the long PyTorch scope names are a sizeable share of the file (most of an int8
  file).
- TorchScript: ``torch.jit.trace`` on one example image, saved with ``torch.jit.save``.
- Verification: each exported model's float32 logits on real test images must match PyTorch's to ``atol``
  (default 1e-4, max absolute difference); otherwise DeployError.

Every file is written atomically (``dse.common.atomic_path``: temp file in the same folder, then rename), so
a reader never sees half a model.
Preprocessing is ``dse.data.normalize`` (x / 255 - mean) / std, identical for every format.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from dse.common import atomic_path
from dse.data import normalize
from dse.deploy import DeployError
from dse.errors import first_line

ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "logits"
DEFAULT_ATOL = 1e-4  # max |logit difference| allowed between PyTorch and an exported float32 model
EVAL_BATCH = 500  # images per forward pass when scoring a test set (memory, not speed, decides)


def preprocess(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (N, 3, 32, 32) -> normalised float32, exactly as in training (``dse.data.normalize``)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise DeployError(f"images must be uint8 (N, 3, H, W), got {x.dtype} {tuple(x.shape)}")
    return normalize(x.cpu())


def compact_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rename every internal tensor to t<i> and every node to n<i>, drop doc strings (in place; returned).

    Graph inputs and outputs keep their names (the component feeds "input" and reads "logits"). Meaning is
    unchanged: names are only labels in ONNX. The saving is large for small quantized graphs, whose Q/DQ nodes
    and per-tensor scale/zero-point initializers otherwise carry long scope names.
    """
    g = model.graph
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    mapping: dict[str, str] = {}

    def new(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in mapping:
            mapping[name] = f"t{len(mapping)}"
        return mapping[name]

    for init in g.initializer:
        init.name = new(init.name)
        init.doc_string = ""
    for i, node in enumerate(g.node):
        if node.op_type in ("If", "Loop", "Scan"):  # subgraphs would need recursive renaming; ours have none
            raise DeployError(f"compact_names does not handle control flow ({node.op_type})")
        node.name = f"n{i}"
        node.doc_string = ""
        node.input[:] = [new(n) for n in node.input]
        node.output[:] = [new(n) for n in node.output]
    del g.value_info[:]  # shape annotations of intermediates: redundant, runtimes re-infer them
    model.doc_string = ""
    g.doc_string = ""
    return model


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Check ``model`` (full checker incl. shape inference) and write it atomically."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # onnx raises ValidationError / InferenceError
        raise DeployError(f"ONNX model for {path} fails onnx.checker: {first_line(e)}") from e
    with atomic_path(path) as tmp:
        onnx.save_model(model, str(tmp))
    return Path(path)


def export_onnx(model: nn.Module, path: str | os.PathLike, *, opset: int = ONNX_OPSET,
                image_size: int = 32, compact: bool = True) -> Path:
    """Export ``model`` (eval mode, CPU) to an ONNX file with a dynamic batch dimension; returns the path."""
    model = model.eval().cpu()
    example = torch.zeros(1, 3, image_size, image_size)
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "legacy TorchScript-based ONNX export" deprecation notice
        raw = Path(d) / "raw.onnx"
        torch.onnx.export(model, (example,), str(raw), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          do_constant_folding=True)
        proto = onnx.load(str(raw))
    if compact:
        compact_names(proto)
    return save_onnx(proto, path)


def export_torchscript(model: nn.Module, path: str | os.PathLike, *, image_size: int = 32) -> Path:
    """Trace ``model`` (eval mode, CPU) on one example image and save the ScriptModule; returns the path."""
    model = model.eval().cpu()
    example = torch.zeros(1, 3, image_size, image_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notices in recent torch
        traced = torch.jit.trace(model, example, check_trace=True)
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp))
    return Path(path)


# ---------------------------------------------------------------------------------------- running them
def onnx_session(path: str | os.PathLike, threads: int = 1):
    """An onnxruntime CPU session with ``threads`` intra-op threads and one inter-op thread."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def logits_torch(model: nn.Module, images: torch.Tensor, batch: int = EVAL_BATCH) -> np.ndarray:
    """float32 logits (N, C) of a PyTorch (eager or TorchScript) model on uint8 images."""
    model = model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            out.append(model(preprocess(images[i:i + batch])).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def logits_torchscript(path: str | os.PathLike, images: torch.Tensor, batch: int = EVAL_BATCH) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu")
    return logits_torch(module, images, batch)


def logits_onnx(path: str | os.PathLike, images: torch.Tensor, batch: int = EVAL_BATCH,
                threads: int = 1) -> np.ndarray:
    """float32 logits (N, C) of an ONNX model (float32 or int8 QDQ) on uint8 images, via onnxruntime."""
    sess = onnx_session(path, threads)
    out = []
    for i in range(0, len(images), batch):
        x = preprocess(images[i:i + batch]).numpy()
        out.append(sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def accuracy(logits: np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise DeployError("no test images to score")
    return float((logits.argmax(1) == labels).mean() * 100.0)


def verify(reference: np.ndarray, candidate: np.ndarray, *, what: str, atol: float = DEFAULT_ATOL) -> float:
    """Max |candidate - reference| over all logits; DeployError if above ``atol`` or not finite."""
    if reference.shape != candidate.shape:
        raise DeployError(f"{what}: logits shape {candidate.shape} != PyTorch's {reference.shape}")
    diff = float(np.max(np.abs(candidate.astype(np.float64) - reference.astype(np.float64)))) \
        if reference.size else 0.0
    if not np.isfinite(diff) or diff > atol:
        raise DeployError(f"{what} disagrees with PyTorch: max |logit difference| {diff:.3g} > {atol:g} "
                          f"on {len(reference)} test images")
    return diff


__all__ = ["DEFAULT_ATOL", "INPUT_NAME", "ONNX_OPSET", "OUTPUT_NAME", "accuracy",
           "compact_names", "export_onnx", "export_torchscript", "logits_onnx", "logits_torch",
           "logits_torchscript", "onnx_session", "preprocess", "save_onnx", "verify"]
