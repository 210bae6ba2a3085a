"""Progress through the deployment of one model: a tqdm bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("dse.deploy")


class Steps:
    """Progress through the deployment of one model: a tqdm bar on a terminal, plain log lines otherwise."""

    NAMES = ("score PyTorch", "export + verify ONNX", "export + verify TorchScript", "quantize int8",
             "score int8", "time torch", "time torchscript", "time onnx", "time onnx_int8", "package")

    def __init__(self, label: str, latency: bool) -> None:
        """Count the steps of ``label``'s deployment (four fewer without ``latency``); a bar only on a tty."""
        self.label, self.total = label, len(self.NAMES) - (0 if latency else 4)
        self.done = 0
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=label, unit="step", leave=True, dynamic_ncols=True)

    def start(self, name: str) -> None:
        """Show that step ``name`` begins."""
        if self.bar is not None:
            self.bar.set_postfix_str(name)
        else:
            log.info("%s: step %d/%d: %s", self.label, self.done + 1, self.total, name)

    def finish(self) -> None:
        """Count the current step as done (closing the bar after the last)."""
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            if self.done == self.total:
                self.bar.close()


__all__ = ["Steps"]
