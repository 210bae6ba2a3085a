"""The shared helpers: atomic writes with readable modes, the one Pareto-front definition."""

import os
import stat

import pytest

from dse.common import atomic_path, atomic_write, pareto_front


def test_atomic_write_is_readable_by_others_and_leaves_no_temp(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "sub" / "a.md", "hello")
    finally:
        os.umask(old)
    p = tmp_path / "sub" / "a.md"
    assert p.read_text() == "hello"
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert [q.name for q in p.parent.iterdir()] == ["a.md"]


def test_atomic_path_keeps_the_old_file_when_the_block_fails(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert p.read_bytes() == b"old"
    assert [q.name for q in tmp_path.iterdir()] == ["a.bin"]


def test_pareto_front_accuracy_up_size_down():
    acc = [50.0, 60.0, 55.0, 70.0, 40.0, 70.0, None]
    size = [100, 200, 300, 400, 50, 500, 10]
    # 4 (smallest), 0, 1, 3; 2 is beaten by 1, 5 ties 3 on accuracy but is larger, 6 has no accuracy
    assert pareto_front(acc, size) == [4, 0, 1, 3]


def test_pareto_front_exact_ties_keep_the_first_and_missing_size_is_largest():
    assert pareto_front([60.0, 60.0], [100, 100]) == [0]
    assert pareto_front([90.0, 50.0], [None, 100]) == [1, 0]


def test_paths_inside_results_are_kept_relative_so_the_folder_can_move(tmp_path):
    from dse.common import RESULTS, results_path, results_relative

    inside = RESULTS / "checkpoints" / "s" / "t3-m" / "best.pt"
    assert results_relative(inside) == "checkpoints/s/t3-m/best.pt"
    assert results_path("checkpoints/s/t3-m/best.pt") == inside
    outside = tmp_path / "best.pt"
    assert results_relative(outside) == str(outside.resolve()) and results_path(str(outside)) == outside
