"""`make help` lists every target, and every example in the help text of dse.tables and dse.deploy parses."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from dse.common import ROOT as REPO


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_make_help_lists_every_phony_target():
    phony = re.search(r"^\.PHONY:(.*)$", (REPO / "Makefile").read_text(), re.M)
    assert phony is not None
    out = subprocess.run(["make", "-s", "--no-print-directory", "help"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    listed = {line.split()[1] for line in out.splitlines() if line.strip().startswith("make ")}
    assert set(phony.group(1).split()) == listed


def _examples(doc: str, prog: str) -> list[list[str]]:
    """The argument lists of the ``python -m <prog> ...`` example lines of a docstring (comments dropped)."""
    lines = [ln.split("#", 1)[0].split() for ln in doc.splitlines() if ln.strip().startswith(f"python -m {prog}")]
    return [ln[3:] for ln in lines]


def test_every_help_example_parses():
    import dse.deploy.__main__ as deploy
    import dse.tables.__main__ as tables

    examples = _examples(deploy.__doc__, "dse.deploy")
    assert len(examples) >= 5
    for argv in examples:
        deploy.parser().parse_args(argv)  # argparse exits (SystemExit) on an example that does not parse
    assert all("quick" not in a or a == "cpu-quick" for argv in examples for a in argv)  # the default study
    assert len(_examples(tables.__doc__, "dse.tables")) >= 2
