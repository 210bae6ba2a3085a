"""What a deployment reads: a candidate's checkpoint (checked against its trial) and its dataset's images."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dse.common import results_path
from dse.deploy import DeployError
from dse.deploy.select import Candidate


def resolve_checkpoint(cand: Candidate) -> Path:
    """The candidate's checkpoint file: absolute as given, else as given from here, else as the store keeps it
    (relative to results/); DeployError if absent."""
    path = Path(cand.checkpoint_path)
    for p in [path] if path.is_absolute() else [path, results_path(path)]:
        if p.is_file():
            return p
    raise DeployError(f"{cand.label}: checkpoint {cand.checkpoint_path} does not exist")


def load_checkpoint(cand: Candidate):
    """(model in eval mode, spec) of a candidate; DeployError if unusable or not the trial's model."""
    from dse.errors import CheckpointError
    from dse.train import load_model

    path = resolve_checkpoint(cand)
    try:
        model, spec = load_model(path)
    except CheckpointError as e:
        raise DeployError(f"{cand.label}: checkpoint {path} is unusable: {e}") from e
    if spec.name != cand.model_name:
        raise DeployError(f"{cand.label}: checkpoint {path} holds {spec.name}, but the trial is "
                          f"{cand.model_name}; the checkpoint does not match its config")
    for key, want in cand.expected.items():
        got = getattr(spec, key, None)
        same = math.isclose(float(got), float(want), abs_tol=1e-9) if isinstance(want, float) else got == want
        if not same:
            raise DeployError(f"{cand.label}: checkpoint {path} has {key}={got!r}, the trial's config says "
                              f"{want!r}; the checkpoint does not match its config")
    return model.eval().cpu(), spec


def load_bundle(dataset: str, data_root: str | None, data_source: str | None = None):
    """The dataset's bundle (train for calibration, val for choices, test for scoring), never downloading."""
    from dse.data import DataConfig, load_data

    root = data_root
    if root is None and data_source and ":" in data_source:  # e.g. "imagefolder:/data/cifar10-jpg"
        cand_root = data_source.split(":", 1)[1]
        if Path(cand_root).exists():
            root = cand_root
    return load_data(DataConfig(dataset=dataset, root=root, download=False))


def bundle_cache(data_root: str | None) -> Callable[[Candidate], Any]:
    """A function giving a candidate's bundle, each (dataset, root, source) loaded once: selection and
    deployment share them."""
    bundles: dict[tuple, Any] = {}

    def bundle_for(c: Candidate):
        """The bundle of ``c``'s dataset (``data_root``, else its data source), loaded on first use."""
        key = (c.dataset, data_root, c.data_source)
        if key not in bundles:
            bundles[key] = load_bundle(c.dataset, data_root, c.data_source)
        return bundles[key]

    return bundle_for


def pick_test_images(bundle, n: int):
    """(uint8 images, numpy int labels) of ``n`` test images: all, or a class-balanced draw (seed 0).

    Not the first n: image folders are stored class by class, so the first 1,000 images are one class.
    """
    import torch

    from dse.data import stratified_pick

    x, y = bundle.test_x.cpu(), bundle.test_y.cpu()
    if n < len(y):
        idx = stratified_pick(y, n, torch.Generator().manual_seed(0))
        x, y = x[idx], y[idx]
    return x, y.numpy()


__all__ = ["bundle_cache", "load_bundle", "load_checkpoint", "pick_test_images", "resolve_checkpoint"]
