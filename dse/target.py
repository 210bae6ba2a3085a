"""The board a study searches for: which facts it needs before training and which budgets reject a configuration.

A configuration is checked against ``search.constraints`` before any training (grid: at planning, shown by the dry
run; sample: as the sampler draws it), with the measured value in the reason. The facts:

- params, MACs, float32 checkpoint bytes, int8 flash and peak activations: ``dse.models.model_facts`` (cheap,
  always known);
- batch-1 latency of the untrained network on this host (``dse.deploy.facts``): about half a second per
  architecture cold, so measured only when ``target.latency`` is ``always``, or ``auto`` (the default) and a
  ``max_latency_ms`` budget or the ``latency_ms`` objective needs it.

``target.precision`` says which bytes the RAM and flash budgets count: ``int8`` (one byte per activation, int8
weights: a microcontroller) or ``fp32`` (four bytes per activation, the float32 checkpoint: a board running the
float model).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dse.models import ModelFacts, ModelSpec

#: Objectives that read a fact measured only on demand.
LATENCY_OBJECTIVES = ("latency_ms",)


def needs_latency(tree: Mapping[str, Any]) -> bool:
    """Whether a composed config (as a plain dict) measures latency before training."""
    target = tree.get("target") or {}
    mode = target.get("latency", "auto")
    if mode != "auto":
        return mode == "always"
    search = tree.get("search") or {}
    constraints = search.get("constraints") or {}
    return constraints.get("max_latency_ms") is not None or any(
        o in LATENCY_OBJECTIVES for o in search.get("objectives") or [])


def latency_of(specs: Iterable[ModelSpec], tree: Mapping[str, Any]) -> dict[ModelSpec, Any]:
    """The untrained networks' latency facts when the config needs them (``needs_latency``), else {}."""
    if not needs_latency(tree):
        return {}
    from dse.deploy.facts import latency_facts  # exports to ONNX and times in a child: only when asked

    return latency_facts(specs)


def ram_bytes(facts: ModelFacts, precision: str) -> int:
    return facts.ram_bytes_int8 if precision == "int8" else facts.ram_bytes_fp32


def flash_bytes(facts: ModelFacts, precision: str) -> int:
    return facts.flash_bytes if precision == "int8" else facts.checkpoint_bytes


def check_constraints(facts: ModelFacts, constraints: Mapping[str, Any], latency: Any = None,
                      precision: str = "int8") -> str | None:
    """Why a model violates a budget (the measured value beside the limit), or None when it fits. ``latency``: its
    ``LatencyFacts`` (None: not measured; a latency budget then cannot be checked, which the config refuses)."""
    checks = [("max_checkpoint_bytes", facts.checkpoint_bytes, "checkpoint bytes"),
              ("max_macs", facts.macs, "MACs"), ("max_params", facts.params, "params"),
              ("max_ram_bytes", ram_bytes(facts, precision), f"peak {precision} activation bytes"),
              ("max_flash_bytes", flash_bytes(facts, precision), f"{precision} weight bytes")]
    for key, value, what in checks:
        limit = constraints.get(key)
        if limit is not None and value > limit:
            return f"{what} {value:,} > {key} {limit:,}"
    limit = constraints.get("max_latency_ms")
    if limit is not None and latency is not None and latency.p99_ms > limit:
        return f"p99 latency {latency.p99_ms:.2f} ms (untrained, this host) > max_latency_ms {limit:g}"
    return None


def fact_fields(facts: ModelFacts, latency: Any = None) -> dict[str, Any]:
    """The dse_trials columns of the facts known before training."""
    out: dict[str, Any] = dict(params=facts.params, macs=facts.macs, checkpoint_bytes=facts.checkpoint_bytes,
                               flash_bytes=facts.flash_bytes, ram_bytes_int8=facts.ram_bytes_int8,
                               ram_bytes_fp32=facts.ram_bytes_fp32)
    if latency is not None:
        out.update(latency_p50_ms=latency.p50_ms, latency_p99_ms=latency.p99_ms,
                   latency_runtime=f"{latency.runtime} on {latency.host}")
    return out


__all__ = ["LATENCY_OBJECTIVES", "check_constraints", "fact_fields", "flash_bytes", "latency_of", "needs_latency",
           "ram_bytes"]
