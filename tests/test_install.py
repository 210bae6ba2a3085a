"""A non-editable install finds its configs, experiments and paper tables, and keeps a study's files in its cwd.

The wheel is built from this checkout and installed with pip into a fresh virtual environment whose only other
path is this environment's site-packages (for torch and the rest: installing them again would download gigabytes).
A path line in a .pth file adds that folder without running the .pth files inside it, so this checkout's editable
install does not come along: the fresh environment imports the dse the wheel installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.install


def _run(cmd: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DSE_ROOT", "DSE_RUNS_DIR", "DSE_CONF_DIR",
                                                            "DSE_EXPERIMENTS_DIR")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the fresh environment's python, an empty working folder outside the checkout)."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"  # what the wheel is built from, copied: setuptools writes build/ into its source
    shutil.copytree(REPO / "dse", source / "dse", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    wheels = tmp / "wheels"
    r = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
              str(source)], cwd=tmp)
    assert r.returncode == 0, r.stderr[-2000:]
    venv = tmp / "venv"
    r = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    assert r.returncode == 0, r.stderr[-2000:]
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(wheels.glob("dse-*.whl"))
    r = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
             cwd=tmp)
    assert r.returncode == 0, r.stderr[-2000:]
    work = tmp / "work"
    work.mkdir()
    return python, work


def test_the_installed_package_is_not_the_checkout(installed):
    python, work = installed
    r = _run([str(python), "-c", "import dse.common as c; print(c.PACKAGE); print(c.ROOT)"], cwd=work)
    assert r.returncode == 0, r.stderr
    package, root = r.stdout.split()
    assert REPO not in Path(package).parents and "site-packages" in package
    assert Path(root) == work.resolve()  # results/ and data/ of an installed dse: the current folder


def test_help_lists_the_packaged_config_groups(installed):
    python, work = installed
    r = _run([str(python), "-m", "dse.sweep", "--help"], cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    for group in ("model", "optimizer", "budget", "experiment"):
        assert group in r.stdout
    assert "table3" in r.stdout and "sgd_nesterov" in r.stdout  # the experiments and options: from the package


def test_a_dry_run_plans_a_paper_table_from_the_package(installed):
    python, work = installed
    r = _run([str(python), "-m", "dse.sweep", "experiment=table4", "budget=smoke", "dry_run=true",
              "dry_run_list=true"], cwd=work, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "5 planned trials" in r.stdout and r.stdout.count("Shallow SqueezeNext-06-0.2x") == 5
    assert list(work.glob("results/runs/*/sweep.log")), "the run folder belongs under the current folder"
