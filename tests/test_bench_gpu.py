"""The parts of bench/bench_gpu.py and bench/bench_pack.py that run without a GPU or a long measurement: peak
lookup, fraction of peak, the paper's seconds per epoch, the no-CUDA exit, the pack benchmark's study overrides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import bench_gpu  # noqa: E402
import bench_pack  # noqa: E402


def test_peak_lookup_by_device_name() -> None:
    assert bench_gpu.peak_flops("NVIDIA H200", "bf16") == 989e12
    assert bench_gpu.peak_flops("NVIDIA H200", "fp32") == 67e12
    assert bench_gpu.peak_flops("NVIDIA L40S", "bf16") == 362e12  # not the L4's
    assert bench_gpu.peak_flops("NVIDIA L4", "fp32") == 30.3e12
    assert bench_gpu.peak_flops("Some Future GPU", "bf16") is None


def test_peak_fraction() -> None:
    # 2.84 M MACs x 3 (forward + backward) x 2 FLOP x 40,000 img/s = 682 GFLOP/s of 989 TFLOP/s
    assert bench_gpu.peak_fraction(2_842_462, 40_000, 989e12) == pytest.approx(6.9e-4, rel=0.01)
    assert bench_gpu.peak_fraction(2_842_462, 40_000, None) is None


def test_paper_seconds_per_epoch() -> None:
    assert bench_gpu.paper_seconds("Shallow SqueezeNext-06-0.4x") == [4.0, 9.0]  # table 3 and table 5
    assert bench_gpu.paper_seconds("SqueezeNext-23-1x") == [19.0]
    assert bench_gpu.paper_seconds("Shallow SqueezeNext-21-0.2x") == [27.0]
    assert bench_gpu.paper_seconds("No Such Net") == []


def test_fmt_row_and_hours() -> None:
    row = bench_gpu.fmt_row("fast", 45_000.0, 9_000.0, 0.001, 0.5)
    assert "45000" in row and "1.00" in row and "5.00x" in row and "0.100%" in row
    assert bench_gpu.study_hours(5400) == "1.5 h"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_bench_gpu_without_cuda_says_so_and_exits_0() -> None:
    r = subprocess.run([sys.executable, str(REPO / "bench" / "bench_gpu.py")], capture_output=True, text=True)
    assert r.returncode == 0
    assert r.stdout.strip().splitlines() == [
        "bench_gpu: no CUDA device here (torch.cuda.is_available() is False); nothing measured"
    ]


def test_bench_pack_study_is_the_planned_trials(tmp_path: Path) -> None:
    from dse.config import compose
    from dse.space import plan_grid

    overrides = bench_pack.study_overrides(5, 2000, tmp_path / "dse.db", "pack-test", 1)
    plan = plan_grid(compose(overrides))
    assert len(plan) == 5 and {p.trial.model.name for p in plan} == {bench_pack.MODEL}
    assert all(p.trial.data["subset_size"] == 2000 and p.trial.trainer["threads"] == 1 for p in plan)
    assert len(bench_pack.sweep_command(3, overrides)) in (1, 3)
    assert bench_pack.parse_settings("1x2, 2x1") == [(1, 2), (2, 1)]
    with pytest.raises(SystemExit, match="2by1"):
        bench_pack.parse_settings("2by1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_gpu_check_without_cuda_says_so_in_one_line_and_exits_0(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(tmp_path / "gc")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and not (tmp_path / "gc").exists()
    assert r.stdout.strip().splitlines() == [
        "gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing checked"
    ]


def test_gpu_check_sections_fit_in_eight_minutes() -> None:
    import gpu_check

    assert sum(limit for _, limit in gpu_check.SECTIONS) <= 8 * 60
    assert {name for name, _ in gpu_check.SECTIONS} == {"tests", "capture", "nosync", "fraction", "bench", "sweep"}
    assert len(gpu_check.TABLE6) == 9 and set(gpu_check.UNCAPTURABLE) <= set(gpu_check.TABLE6)


def test_gpu_check_summary_table(tmp_path: Path) -> None:
    import gpu_check

    text = gpu_check.summary(tmp_path, [("tests", "passed", 12.3, []), ("sweep", "FAILED", 40.0, ["a: failed"])],
                             "NVIDIA H200, torch 2.11")
    assert (tmp_path / "summary.md").read_text() == text
    assert "| tests | passed | 12 | - |" in text and "| sweep | FAILED | 40 | a: failed |" in text


def test_paper_study_per_image_model_fits_macs_and_layers() -> None:
    from dse.models import spec_from_name

    specs = [spec_from_name(n) for n in ("shallow_sqnxt_06_0_2x", "shallow_sqnxt_06_0_6x", "shallow_sqnxt_12_0_4x",
                                         "shallow_sqnxt_21_0_2x", "sqnxt_23_1x")]
    truth = {s: (1e-6 * (5 + 2 * f[1] + 0.1 * f[2]), 1e-7 * (5 + f[1]), 1.0)
             for s in specs for f in [bench_gpu.features(s)]}
    predict = bench_gpu.per_image_model(dict(list(truth.items())[:4]))  # fitted on four, predicts the fifth
    got, want = predict(specs[-1]), truth[specs[-1]]
    assert got[0] == pytest.approx(want[0], rel=1e-6) and got[1] == pytest.approx(want[1], rel=1e-6)
