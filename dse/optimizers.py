"""The optimizers a trial can name: one entry each, read by the config check, the training core and the fast path.

Adding an optimizer is one entry in ``TABLE`` (and a ``dse/conf/optimizer/<name>.yaml`` to make it a config choice):
``tests/test_train.py`` and ``tests/test_fastpath.py`` iterate over the table, so a new entry is built, stepped
and checked against the CUDA graph's rules without a test of its own.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: AdaBound's convergence speed of its bounds (its authors' recommendation)
ADABOUND_GAMMA = 1e-3


@dataclass(frozen=True)
class Optimizer:
    """One optimizer of paper Table 6 (and plain SGD).

    builder: "module:Class". lr: the learning rate when ``optim.lr`` is null (parameter units per unit of
    gradient): the paper's 0.01 for SGD and 0.001 for AdaBound, PyTorch's defaults for the rest. options: the
    ``OptimConfig`` fields its constructor takes (``weight_decay`` left out where PyTorch has none). fixed:
    constructor arguments every trial uses. cycled: what a one-cycle schedule cycles besides the lr ("betas",
    "momentum" when it is above 0, or None). graph_flags: the constructor flags that keep its state on the
    device so a CUDA graph can capture its step; None, with ``no_graph`` saying why, where it cannot.
    """

    builder: str
    lr: float
    options: tuple[str, ...] = ("weight_decay",)
    fixed: dict[str, Any] = field(default_factory=dict)
    cycled: str | None = None
    graph_flags: dict[str, bool] | None = None
    no_graph: str = ""

    def cls(self) -> type:
        module, name = self.builder.split(":")
        return getattr(importlib.import_module(module), name)

    def build(self, params: Iterable[Any], cfg: Any, **flags: bool) -> Any:
        """The optimizer over ``params`` with ``cfg``'s (an OptimConfig) learning rate and options."""
        kwargs = {o: getattr(cfg, o) for o in self.options}
        return self.cls()(params, lr=cfg.resolved_lr, **kwargs, **self.fixed, **flags)

    def cycles_momentum(self, momentum: float) -> bool:
        """Whether a one-cycle schedule changes a momentum of this optimizer every step (``momentum``: the
        trial's SGD momentum)."""
        return self.cycled == "betas" or (self.cycled == "momentum" and momentum > 0)


_CAPTURABLE = {"capturable": True}
TABLE: dict[str, Optimizer] = {
    "sgd_nesterov": Optimizer("torch.optim:SGD", 0.01, ("momentum", "weight_decay"), {"nesterov": True},
                              cycled="momentum", graph_flags={"fused": True}),
    "sgd": Optimizer("torch.optim:SGD", 0.01, ("momentum", "weight_decay"), cycled="momentum",
                     graph_flags={"fused": True}),
    "adam": Optimizer("torch.optim:Adam", 1e-3, ("betas", "weight_decay"), cycled="betas", graph_flags=_CAPTURABLE),
    "adamax": Optimizer("torch.optim:Adamax", 2e-3, ("betas", "weight_decay"), cycled="betas",
                        graph_flags=_CAPTURABLE),
    "adagrad": Optimizer("torch.optim:Adagrad", 1e-2, no_graph="PyTorch's Adagrad keeps its step count on the host"),
    "adadelta": Optimizer("torch.optim:Adadelta", 1.0, graph_flags=_CAPTURABLE),
    "asgd": Optimizer("torch.optim:ASGD", 1e-2, graph_flags=_CAPTURABLE),
    "rmsprop": Optimizer("torch.optim:RMSprop", 1e-2, graph_flags=_CAPTURABLE),
    "rprop": Optimizer("torch.optim:Rprop", 1e-2, (), graph_flags=_CAPTURABLE),  # no weight decay in PyTorch
    "adabound": Optimizer("adabound:AdaBound", 1e-3, ("betas", "final_lr", "weight_decay"),
                          {"gamma": ADABOUND_GAMMA}, cycled="betas",
                          no_graph="a third-party optimizer computing in Python floats"),
}
NAMES = tuple(TABLE)

__all__ = ["ADABOUND_GAMMA", "NAMES", "TABLE", "Optimizer"]
