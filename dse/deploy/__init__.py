"""Deployment: from a trained trial to files an embedded CPU runs, measured honestly (paper section 5,
Table 7).

The paper deploys its trained network on an NXP Bluebox2.0 through RTMaps, whose Python components define
Birth/Core/Death. We have no Bluebox, so this package gives everything up to the board:

- ``select``: which trials to deploy (best, Pareto front of accuracy vs size, under a size or latency budget).
- ``export``: ONNX (opset 17) and TorchScript (trace), each verified against PyTorch on real test images.
- ``quantize``: int8 post-training static quantization (onnxruntime, QDQ) calibrated on training images.
- ``latency``: batch-1, one-thread latency (p50/p99) and peak memory, one fresh process per measurement.
- ``rtmaps``: a generated, self-contained RTMaps Python component (``rtmaps_python``) that classifies frames.
- ``card``: the model card of a deploy folder (README.md) and the same facts in the ONNX ``metadata_props``.

``python -m dse.deploy --help`` runs the whole chain and records every measurement in the results store
(table ``dse_deployments``). This module stays light (no torch import): the latency child process of an
onnxruntime measurement imports it and must not pay for torch.
"""

from __future__ import annotations

from dse.errors import DSEError


class DeployError(DSEError):
    """A deployment step cannot go on: unknown trial, checkpoint not matching its config, a budget nothing
    meets, exported models that disagree with PyTorch. The message is one line and names the bad value."""


__all__ = ["DeployError"]
