"""What the deployment pipeline does with one model: the command line's settings, minus the selection."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Options:
    """What the pipeline does with one model (the CLI's flags, minus the selection)."""

    out: Path
    test_images: int = 10000
    calib_images: int = 512
    per_channel: bool | str = "auto"
    runtime: str = "onnxruntime"  # the component's runtime
    component_model: str = "fp32"  # which ONNX file the component embeds (fp32 or int8)
    warmup: int = 50
    runs: int = 500
    latency: bool = True
    atol: float = 1e-4
    opset: int = 17
    force: bool = False  # deploy a model within CHANCE_MARGIN_POINTS of chance
    target: dict[str, Any] | None = None  # check the trained model against this target (dse.deploy.fit)

    @property
    def component_format(self) -> str:
        """The format the RTMaps component runs: torchscript, onnx_int8 or onnx."""
        if self.runtime == "torchscript":
            return "torchscript"
        return "onnx_int8" if self.component_model == "int8" else "onnx"


__all__ = ["Options"]
