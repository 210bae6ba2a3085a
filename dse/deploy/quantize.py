"""int8 post-training static quantization of an exported ONNX model (onnxruntime.quantization).

- Calibration: a few hundred images of the TRAINING split (never the test set), class-balanced and seeded, fed
  through a ``CalibrationDataReader`` in batches; MinMax calibration of activations.
- Format: QDQ (QuantizeLinear/DequantizeLinear pairs around float ops), int8 weights and activations (S8S8,
  onnxruntime's default; the x86 kernels with VNNI run it without the U8S8 saturation caveat).
- Per-channel weight scales "where it helps": ``per_channel="auto"`` builds both variants and keeps the one
  whose top-1 predictions agree more often with the float32 model on held-out validation images (ties: the
  smaller file). Validation, not test: choosing on the test set would leak it into the reported accuracy.
- ``quant_pre_process`` (shape inference + graph optimisation) runs first, as onnxruntime recommends.
- Input: an export that keeps PyTorch's tensor names (``export_onnx(..., compact=False)``). On graphs whose
  tensors were renamed t0, t1, ... (``compact_names``) onnxruntime 1.31's quantizer wired an activation to a
  weight's quantized copy (shallow_sqnxt_09_0_5x: a Conv fed a 1-D tensor); so names are compacted only after
  quantizing, and ``quantize_int8`` refuses an already compacted input.

The model size reported for int8 is the bytes of the saved ``.int8.onnx`` file (names compacted, as for fp32).
Shallow SqueezeNext's basic block is conv -> ELU -> BatchNorm (paper Fig. 6): ELU and BatchNorm have no int8
kernel, so they run in float between DequantizeLinear and QuantizeLinear; expect the int8 file to be ~3-4x
smaller but not faster on a desktop CPU (latency.py measures it rather than assuming).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from dse.deploy import DeployError
from dse.deploy.export import INPUT_NAME, compact_names, logits_onnx, preprocess, save_onnx
from dse.errors import first_line

CALIBRATION_IMAGES = 512  # training images used to calibrate activation ranges
CALIBRATION_BATCH = 32  # images per calibration forward pass
CHECK_IMAGES = 1000  # validation images used to choose per-channel vs per-tensor


@dataclass(frozen=True)
class QuantResult:
    path: Path
    file_bytes: int
    per_channel: bool
    calibration_images: int
    agreement: float | None = None  # % of check images whose int8 top-1 equals the float32 top-1
    check_images: int = 0
    tried: dict[str, float] = field(default_factory=dict)  # variant -> agreement (auto mode)


def calibration_images(train_x: torch.Tensor, train_y: torch.Tensor | None = None,
                       n: int = CALIBRATION_IMAGES, seed: int = 0) -> torch.Tensor:
    """``n`` training images, class-balanced when labels are given (``dse.data.stratified_pick``), seeded."""
    n = min(int(n), len(train_x))
    if n <= 0:
        raise DeployError("int8 calibration needs at least one training image, got none")
    g = torch.Generator().manual_seed(seed)
    if train_y is not None:
        from dse.data import stratified_pick
        idx = stratified_pick(train_y.cpu(), n, g)
    else:
        idx = torch.randperm(len(train_x), generator=g)[:n]
    return train_x[idx.cpu()].cpu()


class ImageCalibrationReader:
    """A ``CalibrationDataReader`` over uint8 images: {"input": normalised float32 batch}, ..., then None."""

    def __init__(self, images: torch.Tensor, batch: int = CALIBRATION_BATCH,
                 input_name: str = INPUT_NAME) -> None:
        self.images, self.batch, self.input_name = images, int(batch), input_name
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self.images):
            return None
        x = preprocess(self.images[self._i:self._i + self.batch]).numpy()
        self._i += self.batch
        return {self.input_name: x}

    def rewind(self) -> None:
        self._i = 0

    def __len__(self) -> int:
        return (len(self.images) + self.batch - 1) // self.batch


def _reader(images: torch.Tensor):
    # subclass onnxruntime's ABC lazily so importing this module does not import onnxruntime.quantization
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(ImageCalibrationReader, CalibrationDataReader):
        pass

    return Reader(images)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization logs one warning per rank-1 (BatchNorm) tensor through the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _quantize_once(pre: Path, out: Path, images: torch.Tensor, per_channel: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory() as d, _quiet():
        raw = Path(d) / "q.onnx"
        quantize_static(str(pre), str(raw), _reader(images), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        proto = onnx.load(str(raw))
    save_onnx(compact_names(proto), out)


def quantize_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike, calib: torch.Tensor, *,
                  per_channel: bool | str = "auto", check: torch.Tensor | None = None) -> QuantResult:
    """Quantize the float32 ONNX model at ``fp32_path`` to int8 QDQ at ``out_path``.

    calib: uint8 training images for calibration. per_channel: True, False or "auto" (needs ``check``: uint8
    validation images; the variant agreeing more with float32 wins). Raises DeployError on failure.
    """
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    names = [i.name for i in onnx.load(str(fp32_path), load_external_data=False).graph.initializer]
    if names and all(re.fullmatch(r"t\d+", n) for n in names):
        raise DeployError(f"{fp32_path} has compacted tensor names; quantize an export made with "
                          "export_onnx(..., compact=False) (module docstring)")
    if per_channel not in (True, False, "auto"):
        raise DeployError(f"per_channel must be true, false or auto, got {per_channel!r}")
    if per_channel == "auto" and (check is None or len(check) == 0):
        raise DeployError("per_channel='auto' needs validation images to choose with")
    from onnxruntime.quantization import quant_pre_process

    with tempfile.TemporaryDirectory() as d:
        pre = Path(d) / "pre.onnx"
        try:
            with _quiet():
                quant_pre_process(str(fp32_path), str(pre))
        except Exception as e:  # pre-processing is an optimisation; quantize the plain model if it fails
            logging.getLogger(__name__).warning("quant_pre_process failed (%s); quantizing without it", e)
            pre = fp32_path
        variants = [True, False] if per_channel == "auto" else [bool(per_channel)]
        tried: dict[str, float] = {}
        files: dict[bool, Path] = {}
        ref = logits_onnx(fp32_path, check).argmax(1) if check is not None and len(check) else None
        for pc in variants:
            f = Path(d) / f"int8_pc{int(pc)}.onnx"
            try:
                _quantize_once(pre, f, calib, pc)
            except DeployError:
                raise
            except Exception as e:  # onnxruntime raises many kinds; the CLI needs one line
                raise DeployError(f"int8 quantization of {fp32_path} (per_channel={pc}) failed: "
                                  f"{type(e).__name__}: {first_line(e)}") from e
            files[pc] = f
            if ref is not None:
                tried["per_channel" if pc else "per_tensor"] = float(
                    (logits_onnx(f, check).argmax(1) == ref).mean() * 100.0)
        if len(variants) == 2:
            chosen = max(variants, key=lambda pc: (tried["per_channel" if pc else "per_tensor"],
                                                   -files[pc].stat().st_size))
        else:
            chosen = variants[0]
        save_onnx(onnx.load(str(files[chosen])), out_path)  # atomic write next to its final name
    agreement = tried.get("per_channel" if chosen else "per_tensor")
    return QuantResult(path=out_path, file_bytes=out_path.stat().st_size, per_channel=chosen,
                       calibration_images=len(calib), agreement=agreement,
                       check_images=0 if check is None else len(check), tried=tried)


__all__ = ["CALIBRATION_IMAGES", "ImageCalibrationReader", "QuantResult", "calibration_images",
           "quantize_int8"]
