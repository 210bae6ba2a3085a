"""End to end on real CIFAR-10: train briefly, deploy through the CLI, run the RTMaps component on real
frames.

A model is trained for one epoch on 5,000 real training images (dse.train.fit), deployed with
``python -m dse.deploy --model ... --checkpoint ...`` (ONNX, TorchScript, int8, latency, component) into a tmp
store, and the generated RTMaps component is driven over 1,000 real test frames. RTMaps itself is not
installed: the component runs against the minimal stand-in of the ``rtmaps`` modules that tests/test_deploy.py
defines (``fake_rtmaps``, injected into ``sys.modules``). Its labels must equal PyTorch's on every frame.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

MODEL = "shallow_sqnxt_06_0_4x"
FRAMES = 1000  # test frames through the component
TRAIN_IMAGES = 5000


def _data_root() -> Path | None:
    for cand in (os.environ.get("DSE_DATA_DIR"),
                 Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpg"):
        if cand and (Path(cand) / "train").is_dir() and (Path(cand) / "test").is_dir():
            return Path(cand)
    return None


def _helpers():
    """tests/test_deploy.py's stand-in rtmaps and component driver, imported by path (no package needed)."""
    path = Path(__file__).with_name("test_deploy.py")
    spec = importlib.util.spec_from_file_location("_deploy_test_helpers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_deploy_real_cifar10_component_matches_pytorch(tmp_path, monkeypatch, capsys):
    root = _data_root()
    if root is None:
        pytest.skip("real CIFAR-10 (ImageFolder with train/ and test/) not found: set DSE_DATA_DIR or "
                    "provide ../shared/data/cifar10-jpg")
    from dse.data import DataConfig, load_data
    from dse.deploy import export
    from dse.deploy.__main__ import main, pick_test_images
    from dse.models import spec_from_name
    from dse.store import Store
    from dse.train import OptimConfig, TrainConfig, fit, load_model

    # the component is tested on FRAMES test images: evaluating more (and 5,000 validation images) only costs time
    data = load_data(DataConfig(root=str(root), subset_size=TRAIN_IMAGES, val_size=1000, test_size=FRAMES,
                                download=False))
    fit(spec_from_name(MODEL), data, OptimConfig(),
        TrainConfig(epochs=1, checkpoint_dir=str(tmp_path / "ckpt")))
    ckpt = tmp_path / "ckpt" / "best.pt"
    out, db = tmp_path / "deploy", f"sqlite:///{tmp_path / 'dse.db'}"
    code = main(["--model", MODEL, "--checkpoint", str(ckpt), "--data-root", str(root), "--db", db,
                 "--out", str(out), "--test-images", str(FRAMES), "--per-channel", "on", "--warmup", "10",
                 "--runs", "100", "--force"])  # one epoch may be near chance: the component is what is tested
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "onnx_int8" in printed and "p99 ms" in printed
    report = json.loads((out / "report.json").read_text())
    sizes = {f["format"]: f["file_bytes"] for f in report["formats"]}
    assert sizes["onnx_int8"] < sizes["onnx"]
    assert all(f["test_images"] == FRAMES for f in report["formats"])
    assert len(Store(db).deployments()) == 4

    # the component, over the same 1,000 real test frames, against PyTorch
    x, _ = pick_test_images(data, FRAMES)
    model, _ = load_model(ckpt)
    want = export.logits_torch(model, x).argmax(1).tolist()
    helpers = _helpers()
    module = helpers.load_component(out / report["component"], monkeypatch)  # relative to the folder
    frames = [img.permute(1, 2, 0).numpy() for img in x]  # H x W x 3 uint8 RGB, as a camera would send
    labels, scores, _ = helpers.run_component(module, frames)
    assert len(labels) == FRAMES
    assert labels == want
    assert all(0 < s <= 1 for s in scores)
