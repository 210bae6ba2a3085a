"""Does a deployed model fit a target? The trained model's files and timings against the target's budgets.

``python -m dse.deploy --target mcu`` checks each deployed model against ``dse/conf/target/mcu.yaml``: the
budgets its ``search.constraints`` set, counted at its ``target.precision``:

- flash: the bytes of the deployed file the board would hold (``.int8.onnx`` for int8, ``model.onnx`` for fp32:
  weights and graph, so a little more than the search's count of the weights alone);
- RAM: the peak activations of one image at that precision (``dse.models.footprint``, the number the search used:
  training does not change it);
- latency: the trained model's p99 measured now (batch 1, one thread, this host), beside the untrained network's
  p99 that the search measured when the store has it;
- checkpoint bytes, MACs and params when the target budgets them.

The result goes into ``report.json``, the model card and the printed summary; a model that does not fit is
deployed all the same (the files are what tells you by how much), with a warning.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from dse.config import CONF_DIR
from dse.deploy import DeployError

TARGETS = CONF_DIR / "target"


def target_names() -> list[str]:
    return sorted(p.stem for p in TARGETS.glob("*.yaml"))


def load_target(name: str) -> dict[str, Any]:
    """The target preset ``name``: its name, precision, source and the budgets it sets (None ones left out)."""
    path = TARGETS / f"{name}.yaml"
    if not path.is_file():
        raise DeployError(f"unknown target {name!r}; known: {', '.join(target_names())}")
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    target = dict(cfg.get("target") or {})
    budgets = ((cfg.get("search") or {}).get("constraints") or {})
    return {"name": target.get("name", name), "precision": target.get("precision", "int8"),
            "source": target.get("source", ""), "budgets": {k: v for k, v in budgets.items() if v is not None}}


def _row(what: str, value: float | None, limit: float, unit: str, how: str) -> dict[str, Any]:
    return {"what": what, "value": value, "limit": limit, "unit": unit, "how": how,
            "ok": None if value is None else value <= limit}


def check(report: Any, spec: Any, cand: Any, target: dict[str, Any]) -> dict[str, Any]:
    """The checks of one deployed model (``DeployReport``) against ``target`` (``load_target``)."""
    from dse.models import model_facts

    facts, precision, budgets = model_facts(spec), target["precision"], target["budgets"]
    fmt = "onnx_int8" if precision == "int8" else "onnx"
    rows = []
    if "max_flash_bytes" in budgets:
        rows.append(_row("flash", report.format(fmt).file_bytes, budgets["max_flash_bytes"], "bytes",
                         f"the deployed {fmt} file, before its model-card metadata"))
    if "max_ram_bytes" in budgets:
        stored = cand.ram_bytes_int8 is not None  # the store's, as the search counted it
        elements = cand.ram_bytes_int8 if stored else facts.peak_activations
        ram = elements * (1 if precision == "int8" else 4)
        rows.append(_row("RAM", ram, budgets["max_ram_bytes"], "bytes", f"peak {precision} activations, one image"
                         f" ({'the store' if stored else 'counted now'})"))
    if "max_latency_ms" in budgets:
        lat = report.format(fmt).latency
        searched = f"; the search measured {cand.latency_p99_ms:.2f} ms untrained" if cand.latency_p99_ms else ""
        rows.append(_row("latency p99", lat["p99_ms"] if lat else None, budgets["max_latency_ms"], "ms",
                         f"{fmt}, trained, batch 1, 1 thread, this host{searched}"))
    for key, what, value in (("max_checkpoint_bytes", "checkpoint", facts.checkpoint_bytes),
                             ("max_macs", "MACs", facts.macs), ("max_params", "params", facts.params)):
        if key in budgets:
            rows.append(_row(what, value, budgets[key], "", "counted"))
    known = [r["ok"] for r in rows if r["ok"] is not None]
    return {"target": target["name"], "precision": precision, "source": target["source"], "checks": rows,
            "fits": all(known) if known else None}


def lines(result: dict[str, Any]) -> list[str]:
    """One line per check, and the verdict."""
    out = []
    for r in result["checks"]:
        value = "not measured" if r["value"] is None else f"{r['value']:,.2f}".rstrip("0").rstrip(".")
        verdict = {True: "ok", False: "OVER", None: "unknown"}[r["ok"]]
        out.append(f"{r['what']} {value} {r['unit']} <= {r['limit']:,} {r['unit']}: {verdict} ({r['how']})")
    fits = {True: "fits", False: "does NOT fit", None: "unknown (nothing measured)"}[result["fits"]]
    return [f"target {result['target']} ({result['precision']}): {fits}", *out]


def verdict(result: dict[str, Any] | None) -> str:
    """The model card's one-line verdict ("" without a target)."""
    if not result:
        return ""
    over = [r["what"] for r in result["checks"] if r["ok"] is False]
    if result["fits"] is None:
        return f"{result['target']}: unknown (nothing measured)"
    return f"{result['target']}: fits" if not over else f"{result['target']}: does not fit ({', '.join(over)} over)"


__all__ = ["check", "lines", "load_target", "target_names", "verdict"]
