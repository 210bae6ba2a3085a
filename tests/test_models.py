"""The model zoo: every registered model builds and trains a step; names round-trip; the paper's rows map."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import pytest
import torch

from dse.models import (
    PAPER_ROWS,
    PAPER_TABLE_MODELS,
    InvalidModelConfig,
    ModelFacts,
    ModelSpec,
    build_model,
    create_model,
    list_models,
    model_facts,
    paper_spec,
    spec_from_name,
)
from dse.models.__main__ import main as cli_main
from dse.models.registry import normalize_paper_name

# the CSVs shipped with the repository, and the paper's own folder in ../shared beside the repository
TABLE_DIRS = [Path(__file__).parents[1] / "dse" / "experiments" / "paper_tables",
              Path(__file__).resolve().parents[2] / "shared" / "paper" / "tables"]


def _paper_csvs() -> list[Path]:
    for d in TABLE_DIRS:
        files = sorted(d.glob("table*.csv")) if d.is_dir() else []
        if files:
            return files
    return []


def _csv_rows() -> list[dict[str, str]]:
    rows = []
    for path in _paper_csvs():
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                rows.append({"table": path.stem.split("_")[0], **row})
    return rows


CSV_ROWS = _csv_rows()
needs_csvs = pytest.mark.skipif(not CSV_ROWS, reason=f"paper CSVs not found in {TABLE_DIRS}")


# ------------------------------------------------------------------------------------------- every model


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # one intra-op thread: tiny batches gain nothing from more, and on a shared 2-core machine extra
    # threads spin against other processes (a 0.1 s forward/backward became 2 s with 2 threads under load)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", list_models())
def test_registry_model_forward_backward(name: str, num_classes: int) -> None:
    model = create_model(name, num_classes=num_classes)
    model.train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    loss = torch.nn.functional.cross_entropy(out, torch.tensor([0, 1]))
    loss.backward()  # in-place ELU -> BN and the skip add must not upset autograd
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("activation", ["relu", "elu"])
@pytest.mark.parametrize("arch", ["sqnxt", "modified_sqnxt", "shallow_sqnxt"])
def test_activation_variants_backward(arch: str, activation: str) -> None:
    model = build_model(ModelSpec(arch, (1, 2, 1, 1), 0.25, activation=activation))
    model(torch.randn(2, 3, 32, 32)).sum().backward()


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec("squeezenet_1_1"),
        ModelSpec("sqnxt", (1, 1, 1, 1), 0.25),
        ModelSpec("modified_sqnxt", (1, 2, 1, 1), 0.25),
        ModelSpec("shallow_sqnxt", (1, 1, 2, 1), 0.25),
    ],
    ids=lambda s: s.name,
)
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")
def test_channels_last_autocast_trace_onnx(spec: ModelSpec, tmp_path: Path) -> None:
    model = build_model(spec).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.isfinite(model(x)).all()
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), ref, rtol=1e-4, atol=1e-5)
    onnx = pytest.importorskip("onnx")
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False)  # the TorchScript exporter: no onnxscript needed
    onnx.checker.check_model(onnx.load(str(path)))


def test_list_models() -> None:
    names = list_models()
    assert names == sorted(set(names))
    for must in (
        "squeezenet_1_0",
        "squeezenet_1_1",
        "sqnxt_23_1x",
        "sqnxt_23_2x",
        "sqnxt_23v5_1x",
        "sqnxt_23v5_2x",
        "modified_sqnxt_23_1x",
        "shallow_sqnxt_06_0_4x",
        "shallow_sqnxt_14_1_5x",
        "shallow_sqnxt_14_1x_s1_5_5_1",
        "shallow_sqnxt_21_0_2x",
    ):
        assert must in names
    assert {row.spec.name for row in PAPER_ROWS} <= set(names)
    assert list_models("sqnxt_23*") == ["sqnxt_23_1x", "sqnxt_23_2x", "sqnxt_23v5_1x", "sqnxt_23v5_2x"]
    assert list_models("nothing*") == []


# ----------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "spec, name, display",
    [
        (
            ModelSpec("shallow_sqnxt", (1, 1, 1, 1), 0.4),
            "shallow_sqnxt_06_0_4x",
            "Shallow SqueezeNext-06-0.4x",
        ),
        (
            ModelSpec("shallow_sqnxt", (1, 1, 1, 1), 0.125),
            "shallow_sqnxt_06_0_125x",
            "Shallow SqueezeNext-06-0.125x",
        ),
        (
            ModelSpec("shallow_sqnxt", (1, 2, 8, 1), 1.5),
            "shallow_sqnxt_14_1_5x",
            "Shallow SqueezeNext-14-1.5x",
        ),
        (
            ModelSpec("shallow_sqnxt", (1, 5, 5, 1), 1),
            "shallow_sqnxt_14_1x_s1_5_5_1",
            "Shallow SqueezeNext-14-1x",
        ),
        (
            ModelSpec("shallow_sqnxt", (2, 2, 14, 1), 0.2),
            "shallow_sqnxt_21_0_2x",
            "Shallow SqueezeNext-21-0.2x",
        ),
        (ModelSpec("sqnxt", (6, 6, 8, 1), 2.0), "sqnxt_23_2x", "SqueezeNext-23-2x"),
        (ModelSpec("sqnxt", [2, 4, 14, 1], 1.0), "sqnxt_23v5_1x", "SqueezeNext-23v5-1x"),
        (ModelSpec("modified_sqnxt", (6, 6, 8, 1)), "modified_sqnxt_23_1x", "Modified SqueezeNext-23-1x"),
        (ModelSpec("squeezenet_1_1"), "squeezenet_1_1", "SqueezeNet-v1.1"),
        (ModelSpec("squeezenet_1_0"), "squeezenet_1_0", "SqueezeNet-v1.0"),
    ],
)
def test_names_and_display_names(spec: ModelSpec, name: str, display: str) -> None:
    assert spec.name == name
    assert spec.display_name == display


def test_spec_defaults_and_normalisation() -> None:
    s = ModelSpec("shallow_sqnxt", [1, 1, 1, 1], 1)
    assert s.stage_depths == (1, 1, 1, 1) and isinstance(s.width, float)
    assert (s.dropout, s.activation, s.num_classes, s.depth) == (0.3, "elu", 10, 6)
    assert ModelSpec("sqnxt", (6, 6, 8, 1)).activation == "relu"
    assert ModelSpec("squeezenet_1_0").depth is None
    assert s == ModelSpec("shallow_sqnxt", (1, 1, 1, 1), 1.0, 0.3, "elu") and hash(s) == hash(s.replace())
    assert s.replace(width=0.5).name == "shallow_sqnxt_06_0_5x"
    d = s.to_dict()
    assert json.loads(json.dumps(d)) == d and d["stage_depths"] == [1, 1, 1, 1]
    assert ModelSpec.from_dict(d) == s


def _random_spec(rng: random.Random) -> ModelSpec:
    arch = rng.choice(["sqnxt", "modified_sqnxt", "shallow_sqnxt", "squeezenet_1_0", "squeezenet_1_1"])
    if arch.startswith("squeezenet"):
        return ModelSpec(arch)
    depths = tuple(rng.randint(1, 15) for _ in range(4))
    width = rng.choice(
        [
            round(rng.uniform(0.05, 3.0), rng.randint(1, 4)),
            rng.uniform(0.01, 4.0),
            rng.choice([0.125, 0.2, 1.0, 2.0, 1e-5, 10.0, 1 / 3]),
        ]
    )
    return ModelSpec(arch, depths, width)


def test_name_round_trip() -> None:
    rng = random.Random(1234)
    specs = [spec_from_name(n) for n in list_models()] + [_random_spec(rng) for _ in range(2000)]
    specs += [
        ModelSpec("shallow_sqnxt", (2, 3, 5, 1), 0.33),
        ModelSpec("sqnxt", (2, 4, 14, 1), 0.5),
        ModelSpec("shallow_sqnxt", (2, 4, 14, 1), 1.0),
        ModelSpec("shallow_sqnxt", (1, 1, 7, 1), 0.4),
    ]
    by_name: dict[str, tuple] = {}
    for spec in specs:
        back = spec_from_name(spec.name, num_classes=100, dropout=0.1, activation="relu")
        key = (spec.arch, spec.stage_depths, spec.width)
        assert (back.arch, back.stage_depths, back.width) == key, spec.name
        assert (back.num_classes, back.dropout, back.activation) == (100, 0.1, "relu")
        assert by_name.setdefault(spec.name, key) == key, f"two specs share the name {spec.name}"
    assert (
        spec_from_name("shallow_sqnxt_14_1x_s1_2_8_1").name == "shallow_sqnxt_14_1x"
    )  # explicit == canonical
    assert spec_from_name("shallow_sqnxt_34_1x").stage_depths == (1, 15, 15, 1)  # generic 1-k-k-1 rule
    assert spec_from_name("shallow_sqnxt_11_1x").stage_depths == (1, 3, 4, 1)


# --------------------------------------------------------------------------------------------- the paper


@needs_csvs
def test_every_paper_csv_row_maps_builds_and_matches_its_name() -> None:
    assert len(CSV_ROWS) == len(PAPER_ROWS) >= 45
    seen: set[ModelSpec] = set()
    for row, ours in zip(CSV_ROWS, PAPER_ROWS, strict=True):
        spec = paper_spec(row["model"], row["resolution"], row["width"] or None, row.get("dropout") or None)
        assert spec.display_name == normalize_paper_name(row["model"]), row
        # the embedded transcription (used by --table) agrees with the CSVs
        assert (ours.table, ours.model, ours.spec) == (row["table"], row["model"], spec)
        assert math.isclose(ours.size_mb, float(row["size_mb"]))
        if spec in seen:
            continue
        seen.add(spec)
        for num_classes in (10, 100):
            model = build_model(spec.replace(num_classes=num_classes)).eval()
            with torch.no_grad():
                out = model(torch.randn(2, 3, 32, 32))
            assert out.shape == (2, num_classes) and torch.isfinite(out).all()


def test_paper_spec_mappings() -> None:
    assert paper_spec("SqueezeNext-23-1x (baseline)", "6-6-8-1", 1.0) == ModelSpec("sqnxt", (6, 6, 8, 1), 1.0)
    assert paper_spec("Squeezed CNN (SqueezeNet implementation)").arch == "squeezenet_1_0"
    assert paper_spec("SqueezeNet-v1.0 (baseline)").name == "squeezenet_1_0"
    assert paper_spec("Shallow SqueezeNext-12-1.0x", "", float("nan")).stage_depths == (1, 4, 4, 1)
    assert paper_spec("Shallow SqueezeNext-07-0.7x").stage_depths == (1, 1, 2, 1)
    assert paper_spec("Shallow SqueezeNext-09-0.5").name == "shallow_sqnxt_09_0_5x"
    assert paper_spec("Shallow SqueezeNext-06-0.2x-v1", "1-1-1-1", 0.2, 0.1).dropout == 0.1
    assert paper_spec("Shallow SqueezeNext-14-1x", "1-5-5-1", 1.0).name == "shallow_sqnxt_14_1x_s1_5_5_1"
    assert all(s.num_classes == 100 for s in PAPER_TABLE_MODELS["table6"])
    assert set(PAPER_TABLE_MODELS) == {f"table{i}" for i in range(1, 8)}
    with pytest.raises(InvalidModelConfig, match="1-2-2-1"):
        paper_spec("Shallow SqueezeNext-14-1x", "1-2-2-1")
    with pytest.raises(InvalidModelConfig, match="0.5"):
        paper_spec("Shallow SqueezeNext-14-1x", None, 0.5)
    with pytest.raises(InvalidModelConfig, match="AlexNet"):
        paper_spec("AlexNet")


@pytest.mark.parametrize("name, paper_mb", [("sqnxt_23_1x", 2.586), ("sqnxt_23_2x", 9.525)])
def test_squeezenext_23_checkpoint_size_matches_paper(name: str, paper_mb: float) -> None:
    ours = model_facts(spec_from_name(name)).checkpoint_bytes / 1e6  # the paper's MB = 1e6 bytes
    assert abs(ours / paper_mb - 1) < 0.03, (name, ours, paper_mb)


# ------------------------------------------------------------------------------------------------ facts


def test_facts() -> None:
    spec = spec_from_name("shallow_sqnxt_06_0_4x")
    f = model_facts(spec)
    assert isinstance(f, ModelFacts) and f.params > 0 and f.macs > 0 and f.checkpoint_bytes > 4 * f.params
    assert model_facts(spec) is f  # cached per spec
    assert model_facts(build_model(spec)) == f  # a module gives the same facts
    fc = torch.nn.Linear(8, 3)
    assert model_facts(fc, input_size=(8,)).macs == 24 and model_facts(fc, input_size=(8,)).params == 27
    for arch, depths in [
        ("shallow_sqnxt", (1, 1, 1, 1)),
        ("sqnxt", (6, 6, 8, 1)),
        ("modified_sqnxt", (2, 2, 2, 1)),
    ]:
        params = [model_facts(ModelSpec(arch, depths, w)).params for w in (0.125, 0.25, 0.5, 1.0, 2.0)]
        assert params == sorted(params) and len(set(params)) == len(params), (arch, params)
        macs = [model_facts(ModelSpec(arch, depths, w)).macs for w in (0.5, 1.0)]
        assert macs[0] < macs[1]


class _Residual(torch.nn.Module):
    """x -> conv1 -> bn -> relu = b -> conv2 = c -> c + b -> pool -> flatten -> fc: one skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4)
        self.act, self.conv2 = torch.nn.ReLU(inplace=True), torch.nn.Conv2d(4, 4, 3, padding=1)
        self.pool, self.flat, self.fc = torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)

    def forward(self, x):
        b = self.act(self.bn(self.conv1(x)))
        return self.fc(self.flat(self.pool(self.conv2(b) + b)))


def test_peak_activations_and_int8_bytes_by_hand() -> None:
    """An 8x8 image: x 192 elements, every 4-channel map 256. Alive at once, step by step: conv1 x+a 448, bn a+a'
    512, relu a'+b 512 (in place, still its own buffer), conv2 b+c 512, add b+c+d 768 (the skip keeps b alive),
    pool d+e 260, flatten a view, fc e+out 6. Peak 768 elements: 768 B int8, 3,072 B float32."""
    from dse.models.footprint import int8_weight_bytes, peak_activations

    net = _Residual()
    assert peak_activations(net, (3, 8, 8)) == 768
    # int8 weights + int32 bias + (float32 scale + int8 zero point) per output channel; BN: 2 float32 per channel
    conv1, conv2, fc, bn = 4 * 27 + 4 * 4 + 5 * 4, 4 * 36 + 4 * 4 + 5 * 4, 2 * 4 + 2 * 4 + 5 * 2, 8 * 4
    assert int8_weight_bytes(net) == conv1 + conv2 + fc + bn == 382
    f = model_facts(net, input_size=(3, 8, 8))
    assert (f.flash_bytes, f.ram_bytes_int8, f.ram_bytes_fp32) == (382, 768, 3072)
    net.train()
    peak_activations(net, (3, 8, 8))
    assert net.training  # measured in eval mode, the caller's mode kept


@pytest.mark.parametrize("name", ["shallow_sqnxt_06_0_2x", "shallow_sqnxt_21_0_2x", "sqnxt_23_1x"])
def test_int8_bytes_match_what_the_quantizer_stores(name: str, tmp_path: Path) -> None:
    """The counted int8 flash against dse.deploy's .int8.onnx of the same untrained network: within 15 % of the
    weights the quantizer stored (the file's initializers; measured: 12 %, 13 % and 0.1 % below them) and below
    the file, which adds its graph (ONNX nodes and names)."""
    import onnx
    from onnx import numpy_helper

    from dse.deploy.export import export_onnx
    from dse.deploy.quantize import quantize_int8

    net = build_model(spec_from_name(name)).eval()
    export_onnx(net, tmp_path / "m.onnx", compact=False)
    calib = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    q = quantize_int8(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", calib, per_channel=True)
    stored = sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(q.path)).graph.initializer)
    counted = model_facts(spec_from_name(name)).flash_bytes
    assert abs(counted - stored) <= 0.15 * stored, (counted, stored)
    assert counted < q.file_bytes


# ----------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda: spec_from_name("foo"), "'foo'"),
        (lambda: spec_from_name("shallow_sqnxt_14_1x_s1_1_1_1"), "14"),
        (lambda: spec_from_name("shallow_sqnxt_04_1x"), "4"),
        (lambda: spec_from_name("shallow_sqnxt_23v5_1x"), "v5"),
        (lambda: create_model("resnet18"), "'resnet18'"),
        (lambda: ModelSpec("shallow_sqnxt", (1, 1, 1, 1), -1), "-1"),
        (lambda: ModelSpec("shallow_sqnxt", (1, 1, 1, 1), 0), "width must be > 0, got 0"),
        (lambda: ModelSpec("shallow_sqnxt", (1, 1, 1, 1), float("nan")), "nan"),
        (lambda: ModelSpec("shallow_sqnxt", (1, 0, 1)), "(1, 0, 1)"),
        (lambda: ModelSpec("shallow_sqnxt", (1, 2, 0, 1)), "(1, 2, 0, 1)"),
        (lambda: ModelSpec("shallow_sqnxt", (1, 2.5, 1, 1)), "2.5"),
        (lambda: ModelSpec("shallow_sqnxt", None), "None"),
        (lambda: ModelSpec("squeezenet_1_0", (1, 1, 1, 1)), "(1, 1, 1, 1)"),
        (lambda: ModelSpec("squeezenet_1_1", None, 2.0), "2.0"),
        (lambda: ModelSpec("shallow_sqnxt", (1, 1, 1, 1), dropout=1.2), "dropout must be in [0, 1), got 1.2"),
        (lambda: ModelSpec("shallow_sqnxt", (1, 1, 1, 1), dropout=-0.1), "-0.1"),
        (lambda: ModelSpec("shallow_sqnxt", (1, 1, 1, 1), num_classes=1), "num_classes must be >= 2, got 1"),
        (
            lambda: ModelSpec("shallow_sqnxt", (1, 1, 1, 1), activation="tanh"),
            "activation must be one of elu, relu, got 'tanh'",
        ),
        (lambda: ModelSpec("resnet", (1, 1, 1, 1)), "'resnet'"),
        (lambda: ModelSpec.from_dict({"arch": "sqnxt", "depth": 3}), "depth"),
        (lambda: ModelSpec("sqnxt", (6, 6, 8, 1)).replace(colour=1), "colour"),
        (lambda: spec_from_name("sqnxt_23_1x", num_classes=1), "got 1"),
    ],
)
def test_bad_inputs_raise(make, needle: str) -> None:
    with pytest.raises(InvalidModelConfig) as err:
        make()
    msg = str(err.value)
    assert needle in msg and "\n" not in msg
    assert isinstance(err.value, ValueError)


def test_cli_list_and_errors(capsys) -> None:
    assert cli_main(["--list", "sqnxt_23_*"]) == 0
    assert capsys.readouterr().out.split() == ["sqnxt_23_1x", "sqnxt_23_2x"]
    assert cli_main(["--list", "nope*"]) == 2
    assert cli_main(["--show", "foo"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "'foo'" in err


def test_cli_show_names_the_board_facts(capsys) -> None:
    assert cli_main(["--show", "shallow_sqnxt_06_0_2x"]) == 0
    f = model_facts(spec_from_name("shallow_sqnxt_06_0_2x"))
    out = capsys.readouterr().out
    assert f"int8 flash={f.flash_bytes:,} B" in out and f"peak activations={f.ram_bytes_int8:,} B int8" in out
