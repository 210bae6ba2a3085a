"""Fast tests of dse.deploy: tiny models with random weights, images written by the test, a tmp store.

The RTMaps component is tested WITHOUT RTMaps (it cannot be installed here): ``fake_rtmaps`` below is a
minimal stand-in for RTMaps' ``rtmaps.types``, ``rtmaps.core`` and ``rtmaps.base_component`` modules,
written by these tests and injected into ``sys.modules``. It only records what the component declares and
writes; it checks the component's use of the documented Python-bridge API (``rtmaps_python(BaseComponent)``
with Dynamic / Birth / Core / Death, ``self.inputs[name].ioelt.data``, ``self.outputs[name].write(...)``),
not RTMaps itself.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from dse.deploy import DeployError, export, latency, quantize, rtmaps
from dse.deploy import select as sel
from dse.deploy.__main__ import Options, deploy_model, main, summary
from dse.models import build_model, spec_from_name

TINY = "shallow_sqnxt_06_0_25x"  # ~80k parameters: exports and runs in well under a second
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------------------------------- helpers
def tiny_model(name: str = TINY, seed: int = 0) -> tuple[torch.nn.Module, object]:
    """A model with random weights and non-trivial BatchNorm statistics (one train-mode pass)."""
    torch.manual_seed(seed)
    spec = spec_from_name(name)
    model = build_model(spec)
    with torch.no_grad():
        model.train()
        model(torch.randn(64, 3, 32, 32))
    return model.eval(), spec


def images(n: int, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, 32, 32): smooth random blobs (more image-like than white noise)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=32, mode="bilinear", align_corners=False)
    x = x + 0.1 * torch.rand(n, 3, 32, 32, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def bundle(n_train: int = 96, n_val: int = 32, n_test: int = 40) -> SimpleNamespace:
    """A stand-in for dse.data.DataBundle with the fields deploy uses."""
    def labels(n):
        return torch.arange(n) % 10
    return SimpleNamespace(train_x=images(n_train, 1), train_y=labels(n_train), val_x=images(n_val, 2),
                           val_y=labels(n_val), test_x=images(n_test, 3), test_y=labels(n_test),
                           num_classes=10, classes=CLASSES)


def fake_rtmaps() -> dict[str, types.ModuleType]:
    """Minimal stand-in for RTMaps' Python modules (module docstring): records declarations and writes."""
    rt_types = types.ModuleType("rtmaps.types")
    for i, name in enumerate(("ANY", "AUTO", "INTEGER32", "INTEGER64", "FLOAT32", "FLOAT64", "IPL_IMAGE",
                              "TEXT_ASCII")):
        setattr(rt_types, name, i)

    class Ioelt:
        def __init__(self, data=None, ts=0):
            self.data, self.ts = data, ts

    class IplImage:
        def __init__(self, image_data=None, channel_seq="RGB", color_model="COLR"):
            self.image_data, self.channel_seq, self.color_model = image_data, channel_seq, color_model

    rt_types.Ioelt, rt_types.IplImage = Ioelt, IplImage

    core = types.ModuleType("rtmaps.core")
    core.messages = []
    core.report_info = lambda msg: core.messages.append(("info", msg))
    core.report_warning = lambda msg: core.messages.append(("warning", msg))
    core.report_error = lambda msg: core.messages.append(("error", msg))

    class Input:
        def __init__(self, kind):
            self.kind, self.ioelt = kind, None

    class Output:
        def __init__(self, kind):
            self.kind, self.written = kind, []

        def write(self, elt):
            self.written.append(elt)

    class Property:
        def __init__(self, data):
            self.data = data

    base = types.ModuleType("rtmaps.base_component")

    class BaseComponent:
        def __init__(self):
            self.inputs, self.outputs, self.properties = {}, {}, {}

        def add_input(self, name, kind):
            self.inputs[name] = Input(kind)

        def add_output(self, name, kind, buffer_size=None):
            self.outputs[name] = Output(kind)

        def add_property(self, name, value, kind=None):
            self.properties[name] = Property(value)

    base.BaseComponent = BaseComponent
    pkg = types.ModuleType("rtmaps")
    pkg.types, pkg.core, pkg.base_component = rt_types, core, base
    return {"rtmaps": pkg, "rtmaps.types": rt_types, "rtmaps.core": core, "rtmaps.base_component": base}


def load_component(path: Path, monkeypatch) -> types.ModuleType:
    """Import a generated component file with the stand-in ``rtmaps`` modules in sys.modules."""
    for name, mod in fake_rtmaps().items():
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location(f"rtmaps_component_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_component(module: types.ModuleType, frames, wrap=None) -> tuple[list[int], list[float], object]:
    """Drive Dynamic/Birth/Core/Death over frames (H x W x 3 uint8); returns labels, scores, component."""
    comp = module.rtmaps_python()
    comp.Dynamic()
    assert set(comp.inputs) == {"image"} and set(comp.outputs) == {"label", "score"}
    comp.Birth()
    Ioelt = sys.modules["rtmaps.types"].Ioelt
    for i, frame in enumerate(frames):
        comp.inputs["image"].ioelt = Ioelt(wrap(frame) if wrap else frame, ts=1000 * i)
        comp.Core()
    comp.Death()
    labels = [e.data for e in comp.outputs["label"].written]
    scores = [e.data for e in comp.outputs["score"].written]
    assert [e.ts for e in comp.outputs["label"].written] == [e.ts for e in comp.outputs["score"].written]
    return labels, scores, comp


# ---------------------------------------------------------------------------------------- selection
def test_parse_size():
    assert sel.parse_size("272KB") == 272_000
    assert sel.parse_size("272 kb") == 272_000
    assert sel.parse_size("0.3MB") == 300_000
    assert sel.parse_size("2048") == 2048
    assert sel.parse_size("2048B") == 2048
    assert sel.parse_size("1KiB") == 1024
    assert sel.parse_size("1.5MiB") == 1_572_864
    for bad in ("", "abc", "12XB", "-5KB", "0", "KB"):
        with pytest.raises(DeployError, match="size"):
            sel.parse_size(bad)


def known_trials() -> pd.DataFrame:
    rows = [  # id, model, val acc, bytes, status, checkpoint
        (1, "shallow_sqnxt_06_0_4x", 80.0, 270_000, "complete", "a.pt"),
        (2, "shallow_sqnxt_09_0_5x", 85.0, 400_000, "complete", "b.pt"),
        (3, "shallow_sqnxt_14_1x", 90.0, 1_500_000, "complete", "c.pt"),
        (4, "shallow_sqnxt_06_0_2x", 70.0, 300_000, "complete", "d.pt"),  # dominated by 1
        (5, "shallow_sqnxt_23_2x", 95.0, 9_000_000, "failed", None),
        (6, "shallow_sqnxt_10_1x", 88.0, 2_000_000, "complete", "e.pt"),  # dominated by 3
        (7, "shallow_sqnxt_06_0_4x", 85.0, 400_000, "complete", "f.pt"),  # ties 2: the older (2) stays
    ]
    return pd.DataFrame([dict(id=i, optuna_trial_number=i - 1, study="s", model_name=m, best_val_acc=a, test_acc=a - 1,
                              checkpoint_bytes=b, status=st, checkpoint_path=p, macs=1000, dataset="cifar10",
                              num_classes=10, activation="elu", dropout=0.3, config_json="{}")
                         for i, m, a, b, st, p in rows])


def test_selection_logic():
    cands = sel.candidates(known_trials())
    assert [c.trial_id for c in cands] == [3, 6, 2, 7, 1, 4]  # failed/no-checkpoint trial 5 is out
    assert sel.best(cands).trial_id == 3
    assert [c.trial_id for c in sel.pareto_front(cands)] == [3, 2, 1]
    assert sel.under_size(cands, sel.parse_size("272KB"))[0].trial_id == 1
    assert sel.under_size(cands, 400_000)[0].trial_id == 2  # 2 and 7 tie on accuracy and size: older first
    with pytest.raises(DeployError, match="at most 1000 bytes.*smallest is 270000"):
        sel.under_size(cands, sel.parse_size("1KB"))
    measured = []

    def lat(c):
        measured.append(c.trial_id)
        return {3: 5.0, 6: 4.0, 2: 1.0}.get(c.trial_id, 0.5)

    winner, tried = sel.first_under_latency(cands, 2.0, lat)
    assert winner.trial_id == 2 and measured == [3, 6, 2]  # stops at the first that passes
    with pytest.raises(DeployError, match="latency budget of 0.1 ms"):
        sel.first_under_latency(cands, 0.1, lat)
    assert [c.trial_id for c in sel.trials_by_number(known_trials(), [3, 0])] == [4, 1]  # Optuna's numbers
    with pytest.raises(DeployError, match="trial 99 does not exist"):
        sel.trials_by_number(known_trials(), [99])
    with pytest.raises(DeployError, match="trial 4 .* failed"):
        sel.trials_by_number(known_trials(), [4])
    two = pd.concat([known_trials(), known_trials().assign(id=lambda d: d["id"] + 10, study="other")])
    with pytest.raises(DeployError, match="trial 3 is in several studies \\(other, s\\); name one with --study"):
        sel.trials_by_number(two, [3])
    assert [c.label for c in cands[:2]] == ["t2-shallow_sqnxt_14_1x", "t5-shallow_sqnxt_10_1x"]
    assert sel.Candidate("m", "x.pt", trial_id=7).label == "id7-m"  # never reached Optuna: the store id
    expected = sel.candidates(known_trials())[0].expected
    assert expected == {"activation": "elu", "num_classes": 10, "dropout": 0.3}


# ---------------------------------------------------------------------------------------- export
def test_export_agrees_with_pytorch(tmp_path):
    model, _ = tiny_model()
    x = images(24)
    ref = export.logits_torch(model, x)
    onnx_path = export.export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(onnx_path))
    onnx.checker.check_model(proto)
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {export.ONNX_OPSET}
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert export.verify(ref, export.logits_onnx(onnx_path, x), what="onnx") < 1e-4
    ts_path = export.export_torchscript(model, tmp_path / "m.pt")
    assert export.verify(ref, export.logits_torchscript(ts_path, x), what="ts") < 1e-4
    # dynamic batch: a batch of 1 gives the same logits as inside a batch of 24
    one = export.logits_onnx(onnx_path, x[:1])
    assert np.allclose(one, ref[:1], atol=1e-4)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_verify_rejects_disagreement():
    ref = np.zeros((4, 10), np.float32)
    bad = ref.copy()
    bad[2, 3] = 1e-3
    with pytest.raises(DeployError, match=r"disagrees with PyTorch: max \|logit difference\| 0.001 > 0.0001"):
        export.verify(ref, bad, what="ONNX export")
    with pytest.raises(DeployError, match="disagrees"):
        export.verify(ref, np.full_like(ref, np.nan), what="ONNX export")


def test_int8_is_smaller_and_agrees(tmp_path):
    model, _ = tiny_model("shallow_sqnxt_06_0_4x")
    fp32 = export.export_onnx(model, tmp_path / "m.onnx", compact=False)
    b = bundle()
    reader = quantize.ImageCalibrationReader(b.train_x[:40], batch=16)
    batches = []
    while (item := reader.get_next()) is not None:
        batches.append(item["input"])
    assert [len(a) for a in batches] == [16, 16, 8] and batches[0].dtype == np.float32
    calib = quantize.calibration_images(b.train_x, b.train_y, 64)
    assert len(calib) == 64
    q = quantize.quantize_int8(fp32, tmp_path / "m.int8.onnx", calib, per_channel="auto", check=b.val_x)
    compact = export.export_onnx(model, tmp_path / "m.compact.onnx")
    assert q.file_bytes == q.path.stat().st_size < compact.stat().st_size / 1.5
    with pytest.raises(DeployError, match="compacted tensor names"):
        quantize.quantize_int8(compact, tmp_path / "x.onnx", calib, per_channel=True)
    assert set(q.tried) == {"per_channel", "per_tensor"} and q.agreement is not None
    ops = {n.op_type for n in onnx.load(str(q.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    lf, lq = export.logits_onnx(fp32, b.test_x), export.logits_onnx(q.path, b.test_x)
    assert (lf.argmax(1) == lq.argmax(1)).mean() >= 0.8  # random weights, 40 images: a loose sanity bound


def test_latency_fields_sane(tmp_path):
    model, spec = tiny_model()
    feed = export.preprocess(images(4)).numpy()
    onnx_path = export.export_onnx(model, tmp_path / "m.onnx")
    r = latency.measure("onnx", onnx_path, feed, warmup=3, runs=30)
    assert r.format == "onnx" and r.runs == 30 and r.threads == 1 and r.runtime.startswith("onnxruntime ")
    assert 0 < r.min_ms <= r.p50_ms <= r.p99_ms <= r.max_ms < 5000
    if Path("/proc/self/status").exists():
        assert r.peak_mem_bytes is not None and 0 <= r.peak_mem_bytes < 2e9
        assert r.hwm_bytes >= r.peak_mem_bytes
    eager = latency.save_eager(model, spec, tmp_path / "eager.pt")
    r = latency.measure("torch", eager, feed, warmup=2, runs=10)
    assert r.runtime.startswith("torch ") and 0 < r.p50_ms <= r.p99_ms
    with pytest.raises(DeployError, match="unknown"):
        latency.measure("tflite", onnx_path, feed)
    with pytest.raises(DeployError, match="failed"):
        latency.measure("onnx", tmp_path / "missing.onnx", feed, warmup=0, runs=1)
    assert "logical CPUs" in latency.machine()


# ---------------------------------------------------------------------------------------- component
@pytest.mark.parametrize("runtime", ["onnxruntime", "torchscript"])
def test_component_with_stand_in_rtmaps_matches_model(tmp_path, monkeypatch, runtime):
    model, spec = tiny_model()
    if runtime == "onnxruntime":
        model_file = export.export_onnx(model, tmp_path / "model.onnx")
    else:
        model_file = export.export_torchscript(model, tmp_path / "model.torchscript.pt")
    comp_path = rtmaps.generate_component(tmp_path / "component" / "rtmaps_tiny.py", model_file,
                                          model_name=spec.name, class_names=CLASSES, runtime=runtime,
                                          mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010))
    source = comp_path.read_text()
    assert "MODEL_FILE = '../model." in source  # relative to the component's folder
    assert "import onnxruntime" in source and "class rtmaps_python(BaseComponent)" in source
    x = images(20, seed=7)
    want = export.logits_onnx(model_file, x).argmax(1) if runtime == "onnxruntime" else \
        export.logits_torchscript(model_file, x).argmax(1)
    frames = [img.permute(1, 2, 0).numpy() for img in x]  # H x W x 3 uint8, RGB
    module = load_component(comp_path, monkeypatch)
    labels, scores, comp = run_component(module, frames)
    assert labels == want.tolist()
    assert [e.ts for e in comp.outputs["label"].written] == [1000 * i for i in range(len(frames))]  # stamps
    assert all(isinstance(v, int) for v in labels)
    assert all(isinstance(s, float) and 0 < s <= 1 for s in scores)
    assert comp.classifier is None  # released in Death
    assert any(kind == "info" and spec.name in msg for kind, msg in sys.modules["rtmaps.core"].messages)
    # an RTMaps IplImage in BGR order gives the same answers
    Ipl = sys.modules["rtmaps.types"].IplImage
    labels_bgr, _, _ = run_component(module, frames,
                                     wrap=lambda f: Ipl(np.ascontiguousarray(f[..., ::-1]), "BGR"))
    assert labels_bgr == labels


def test_component_rejects_bad_frames(tmp_path, monkeypatch):
    model, spec = tiny_model()
    onnx_path = export.export_onnx(model, tmp_path / "model.onnx")
    comp_path = rtmaps.generate_component(tmp_path / "c.py", onnx_path, model_name=spec.name,
                                          class_names=CLASSES, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    module = load_component(comp_path, monkeypatch)
    labels, _, _ = run_component(module, [np.zeros((32, 32), np.float32), np.zeros((5,), np.uint8),
                                          np.zeros((64, 48, 3), np.uint8)])
    assert len(labels) == 1  # the float and the 1-D frame are skipped with an error, the 64x48 one is resized
    errors = [m for k, m in sys.modules["rtmaps.core"].messages if k == "error"]
    assert len(errors) == 2 and "uint8" in errors[0] and "H x W x 3" in errors[1]
    with pytest.raises(DeployError, match="runtime 'tensorrt' is unknown"):
        rtmaps.render(model_file="m.onnx", runtime="tensorrt", model_name="m", mean=(0, 0, 0), std=(1, 1, 1),
                      class_names=CLASSES)
    with pytest.raises(DeployError, match="does not exist"):
        rtmaps.generate_component(tmp_path / "c2.py", tmp_path / "nope.onnx", model_name="m",
                                  class_names=CLASSES, mean=(0, 0, 0), std=(1, 1, 1))


# ---------------------------------------------------------------------------------------- pipeline
def test_deploy_model_records_every_format(tmp_path):
    from dse.store import Store

    store = Store(f"sqlite:///{tmp_path / 'dse.db'}")
    model, spec = tiny_model()
    ckpt = tmp_path / "best.pt"
    torch.save(model.state_dict(), ckpt)
    trial_id = _add_trial(store, spec.name, ckpt)
    cand = sel.candidates(store.trials())[0]
    opts = Options(out=tmp_path / "out", test_images=30, calib_images=48, warmup=2, runs=10,
                   force=True)  # random weights: near chance
    rep = deploy_model(model, spec, cand, bundle(), opts, store=store)
    assert [f.format for f in rep.formats] == ["torch", "onnx", "torchscript", "onnx_int8"]
    assert all(f.test_images == 30 for f in rep.formats)
    assert rep.format("onnx").max_abs_diff < 1e-4 and rep.format("torchscript").max_abs_diff < 1e-4
    # identical up to a near-tie flip (random weights give close logits): at most one of 30 images
    assert abs(rep.format("onnx").test_acc - rep.format("torch").test_acc) <= 100 / 30 + 1e-9
    dep = store.deployments([trial_id])
    assert sorted(dep["format"]) == ["onnx", "onnx_int8", "torch", "torchscript"]
    assert (dep["threads"] == 1).all() and (dep["p50_ms"] <= dep["p99_ms"]).all()
    assert dep["machine"].notna().all()
    assert set(dep["runtime"].str.split().str[0]) == {"torch", "onnxruntime"}
    trial = store.trials().set_index("id").loc[trial_id]
    assert trial["int8_bytes"] == rep.format("onnx_int8").file_bytes
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["component"] == f"rtmaps_{spec.name}.py" and report["out"] == "."  # relative to the folder
    assert {f["format"]: f["path"] for f in report["formats"] if f["format"] != "torch"} == {
        "onnx": "model.onnx", "torchscript": "model.torchscript.pt", "onnx_int8": "model.int8.onnx"}
    # the checkpoint as the store keeps it: relative to results/ when inside it, else (this tmp folder) absolute
    assert report["optuna_trial_number"] == 3 and report["checkpoint"] == str(Path(rep.checkpoint).resolve())
    assert report["int8_per_channel"] in (True, False)
    table = summary([rep])
    assert "onnx_int8" in table and "p99 ms" in table
    _check_model_card(tmp_path / "out", store.trials().set_index("id").loc[trial_id], rep)
    # deploying again replaces the rows instead of adding new ones; without latency, the stored one stays
    deploy_model(model, spec, cand, bundle(), Options(out=tmp_path / "out", test_images=20, latency=False,
                                                      force=True), store=store)
    again = store.deployments([trial_id])
    assert len(again) == 4 and (again["test_images"] == 20).all() and again["p50_ms"].notna().all()


def _check_model_card(out: Path, trial: pd.Series, rep) -> None:
    """README.md and both ONNX models' metadata_props carry the same facts, and they agree with the store."""
    from dse.data import CIFAR_MEAN

    readme = (out / "README.md").read_text()
    metas = [{p.key: p.value for p in onnx.load(str(out / name)).metadata_props}
             for name in ("model.onnx", "model.int8.onnx")]
    assert metas[0] == metas[1]
    m = metas[0]
    assert m["registry_name"] == trial["model_name"] and m["study"] == trial["study"]
    assert m["optuna_trial"] == str(trial["optuna_trial_number"])
    assert float(m["val_acc_pct"]) == pytest.approx(trial["best_val_acc"])
    assert float(m["test_acc_pct"]) == pytest.approx(rep.format("torch").test_acc, abs=0.005)
    assert m["budget_epochs"] == str(trial["epochs"]) and m["budget_train_images"] == str(trial["train_images"])
    assert m["data_copy"] == trial["data_source"] and m["checkpoint_bytes"] == str(trial["checkpoint_bytes"])
    assert m["params"] == str(trial["params"]) and m["macs"] == str(trial["macs"])
    assert json.loads(m["class_labels"]) == CLASSES and json.loads(m["mean"]) == pytest.approx(CIFAR_MEAN)
    assert m["input"].startswith("input: float32 [batch, 3, 32, 32]") and "[batch, 10]" in m["output"]
    assert m["opset"] == "17" and "p50" in m["latency"] and m["latency_machine"] == rep.machine
    for key in ("registry_name", "val_acc_pct", "test_acc_pct", "budget_epochs", "budget_train_images",
                "data_copy", "checkpoint_bytes", "params", "macs", "opset", "latency", "latency_machine"):
        assert f"| {key} | {m[key]} |" in readme, key
    assert "RGB 32x32" in readme and "NCHW" in readme and "9. truck" in readme
    assert "did not learn and was deployed with --force" in m["warning"] and "**Warning: test accuracy" in readme
    # the stamped files are the ones the report and the store describe
    assert rep.format("onnx").file_bytes == (out / "model.onnx").stat().st_size


def test_near_chance_is_refused_without_force(tmp_path):
    model, spec = tiny_model()
    ckpt = tmp_path / "best.pt"
    torch.save(model.state_dict(), ckpt)
    cand = sel.Candidate(spec.name, str(ckpt), trial_id=1, optuna_number=4)
    with pytest.raises(DeployError) as e:
        deploy_model(model, spec, cand, bundle(), Options(out=tmp_path / "out", test_images=30, latency=False))
    msg = str(e.value)
    assert msg.startswith(f"refusing to deploy t4-{spec.name}: test accuracy ") and "\n" not in msg
    assert "within 10 points of chance (10 % for 10 classes)" in msg and "--force" in msg
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_near_chance_trial_is_refused_from_the_store_before_any_work(tmp_path):
    from dse.deploy.pipeline import deploy_all

    cand = sel.Candidate("shallow_sqnxt_06_0_2x", str(tmp_path / "absent.pt"), trial_id=1, optuna_number=4,
                         test_acc=11.0, expected={"num_classes": 10})

    def no_data(_c):
        raise AssertionError("the data was loaded for a model the store already knew to refuse")

    with pytest.raises(DeployError, match="refusing to deploy t4-shallow_sqnxt_06_0_2x: test accuracy 11.0 %"):
        deploy_all([cand], tmp_path / "out", Options(out=tmp_path / "out", latency=False), no_data)
    assert not (tmp_path / "out").exists()


def test_timings_under_load_and_a_slower_int8_are_said():
    from dse.deploy.report import FormatResult, timing_warnings

    def fmt(name: str, p50: float, load: float) -> FormatResult:
        r = FormatResult(name, f"{name}.onnx", 1000, 50.0, 100, 0.0, 100.0)
        r.latency = {"p50_ms": p50, "p99_ms": p50 * 1.2, "load_before": load, "load_after": load}
        return r

    quiet = timing_warnings([fmt("onnx", 3.21, 0.2), fmt("onnx_int8", 2.0, 0.3)], cores=2)
    assert quiet == []
    loaded = timing_warnings([fmt("onnx", 3.21, 5.6), fmt("onnx_int8", 9.39, 5.6)], cores=2)
    assert len(loaded) == 2 and "load average up to 5.6 on 2 cores" in loaded[0]
    assert "int8 is slower than float32 on this host (9.39 vs 3.21 ms p50)" in loaded[1]


def _add_trial(store, model_name: str, ckpt: Path, status: str = "complete", val_acc: float = 50.0,
               size: int = 300_000, study: str = "t", number: int = 3) -> int:
    spec = spec_from_name(model_name)
    fields = dict(model_name=model_name, arch=spec.arch, width=spec.width, dropout=spec.dropout,
                  activation=spec.activation, num_classes=10, optimizer="sgd", schedule="step",
                  dataset="cifar10", data_fraction=1.0, epochs=1, batch_size=128, seed=0, params=1, macs=1,
                  checkpoint_bytes=size,
                  config_json=json.dumps({"model": spec.to_dict()}), checkpoint_path=str(ckpt),
                  best_val_acc=val_acc, test_acc=val_acc, optuna_trial_number=number, train_images=640,
                  data_source="synthetic")
    identity = f"{model_name}-{ckpt.name}-{val_acc}"
    store.insert_missing([dict(study=study, identity=identity, status=status, **fields)])
    return int(store.get(study, identity).id)


# ---------------------------------------------------------------------------------------- bad input (CLI)
def _cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def test_cli_unknown_trial_is_one_line_exit_2(tmp_path, capsys):
    from dse.store import Store

    db = f"sqlite:///{tmp_path / 'dse.db'}"
    Store(db).dispose()  # an empty store: choosing trials never creates one (tests/test_faults.py)
    code, err = _cli(["--db", db, "--trial", "424242", "--no-latency"], capsys)
    assert code == 2
    assert "dse.deploy: error: trial 424242 does not exist in the store" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1


def test_cli_budget_nothing_meets(tmp_path, capsys):
    from dse.store import Store

    db = f"sqlite:///{tmp_path / 'dse.db'}"
    store = Store(db)
    _add_trial(store, TINY, tmp_path / "x.pt", size=90_000)
    code, err = _cli(["--db", db, "--study", "t", "--max-size", "1KB"], capsys)
    assert code == 2 and "no trial has a checkpoint of at most 1000 bytes (the smallest is 90000 bytes" in err
    code, err = _cli(["--db", db, "--study", "t", "--max-size", "lots"], capsys)
    assert code == 2 and "size budget 'lots' is not a size" in err
    code, err = _cli(["--db", db, "--trial", "1", "--pareto"], capsys)
    assert code == 2 and "--trial deploys the trials named; it does not combine with --pareto" in err
    code, err = _cli(["--model", TINY, "--checkpoint", "x.pt", "--study", "t", "--no-record"], capsys)
    assert code == 2 and "do not combine with --study" in err
    code, err = _cli(["--db", db, "--study", "nope"], capsys)
    assert code == 2 and "no complete trial with a checkpoint in study 'nope'" in err and "studies: t" in err


def test_cli_checkpoint_not_matching_config(tmp_path, capsys):
    pytest.importorskip("dse.train", reason="dse.train (load_model) is not there yet")
    from dse.store import Store

    ckpt = _trained_checkpoint(tmp_path, TINY)
    db = f"sqlite:///{tmp_path / 'dse.db'}"
    store = Store(db)
    _add_trial(store, "shallow_sqnxt_06_0_4x", ckpt)  # the store says 0.4x, the file holds 0.25x
    code, err = _cli(["--db", db, "--trial", "3", "--no-latency"], capsys)
    assert code == 2 and "holds shallow_sqnxt_06_0_25x, but the trial is shallow_sqnxt_06_0_4x" in err
    assert "Traceback" not in err
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    _add_trial(store, TINY, garbage, number=4)
    code, err = _cli(["--db", db, "--trial", "4", "--no-latency"], capsys)
    assert code == 2 and "is unusable" in err and "Traceback" not in err
    code, err = _cli(["--model", "no_such_model", "--checkpoint", str(ckpt), "--no-record"], capsys)
    assert code == 2 and "unknown model 'no_such_model'" in err


def _trained_checkpoint(tmp_path: Path, name: str) -> Path:
    """A real best.pt written by dse.train.fit (one epoch on 64 synthetic images)."""
    from dse.data import DataBundle
    from dse.train import OptimConfig, TrainConfig, fit

    b = bundle(n_train=64, n_val=20, n_test=20)
    data = DataBundle(train_x=b.train_x, train_y=b.train_y, val_x=b.val_x, val_y=b.val_y, test_x=b.test_x,
                      test_y=b.test_y, num_classes=10, classes=CLASSES, source="synthetic",
                      fingerprint="synthetic")
    fit(spec_from_name(name), data, OptimConfig(),
        TrainConfig(epochs=1, checkpoint_dir=str(tmp_path / "ckpt")))
    return tmp_path / "ckpt" / "best.pt"


def test_a_deployed_model_is_checked_against_the_target(tmp_path):
    """--target: the int8 file against the flash budget, the counted peak RAM against the RAM budget, the trained
    model's measured p99 against a latency budget; the verdict in report.json, the model card and the summary."""
    from dse.deploy import fit
    from dse.models import model_facts
    from dse.store import Store

    with pytest.raises(DeployError, match="unknown target 'nano'; known: arm_board, host, mcu"):
        fit.load_target("nano")
    mcu = fit.load_target("mcu")
    assert mcu["precision"] == "int8" and mcu["budgets"] == {"max_ram_bytes": 262144, "max_flash_bytes": 1048576}
    store = Store(f"sqlite:///{tmp_path / 'dse.db'}")
    model, spec = tiny_model()
    ckpt = tmp_path / "best.pt"
    torch.save(model.state_dict(), ckpt)
    _add_trial(store, spec.name, ckpt)
    cand = sel.candidates(store.trials())[0]
    tight = {"name": "tight", "precision": "int8", "source": "test",
             "budgets": {"max_flash_bytes": 1_000, "max_ram_bytes": 10**9, "max_latency_ms": 1e-6}}
    opts = Options(out=tmp_path / "out", test_images=30, calib_images=48, warmup=2, runs=10, force=True,
                   target=tight)
    rep = deploy_model(model, spec, cand, bundle(), opts)
    checks = {c["what"]: c for c in rep.target["checks"]}
    final = rep.format("onnx_int8").file_bytes  # the check counted the file before the card's metadata went in
    assert 0.95 * final < checks["flash"]["value"] < final and checks["flash"]["ok"] is False
    assert checks["RAM"]["value"] == model_facts(spec).ram_bytes_int8 and checks["RAM"]["ok"] is True
    assert checks["latency p99"]["value"] == rep.format("onnx_int8").latency["p99_ms"]
    assert checks["latency p99"]["ok"] is False and rep.target["fits"] is False
    card = (tmp_path / "out" / "README.md").read_text()
    assert "tight: does not fit (flash, latency p99 over)" in card
    assert json.loads((tmp_path / "out" / "report.json").read_text())["target"]["fits"] is False
    assert "target tight (int8): does NOT fit" in summary([rep])
    assert fit.check(rep, spec, cand, mcu)["fits"] is True  # a few kB of int8: fits a 1 MB-flash board
    import dataclasses

    stored = fit.check(rep, spec, dataclasses.replace(cand, ram_bytes_int8=123), {**tight, "precision": "fp32"})
    ram = next(c for c in stored["checks"] if c["what"] == "RAM")
    assert ram["value"] == 4 * 123 and "the store" in ram["how"]  # the search's count reused, at 4 bytes each


def test_cli_unknown_target_is_one_line_exit_2(tmp_path, capsys):
    code, err = _cli(["--db", f"sqlite:///{tmp_path / 'none.db'}", "--target", "nano"], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip() == "dse.deploy: error: unknown target 'nano'; known: arm_board, host, mcu"
