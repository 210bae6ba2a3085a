"""The model card of a deploy folder: ``README.md`` for people, the same facts in the ONNX files' metadata.

A deployed file must say what it is without the store beside it: which model, how accurate at which budget
(a two-epoch model is not the paper's), how big and how fast on which machine, and how to feed it (RGB 32x32,
the training mean/std, NCHW float32) and read it (class labels in output order). ``facts`` gathers them once;
``markdown`` renders the README; ``stamp_onnx`` writes them into ``metadata_props`` of the float and int8 ONNX
models (``onnx.helper.set_model_props``), where any ONNX runtime or Netron shows them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dse.common import atomic_write

#: Keys of the ONNX metadata and the README's facts table, in display order.
KEYS = ("model", "registry_name", "warning", "study", "optuna_trial", "dataset", "val_acc_pct", "test_acc_pct",
        "test_images_scored", "budget_epochs", "budget_train_images", "data_copy", "checkpoint_bytes", "params",
        "macs", "input", "output", "preprocessing", "mean", "std", "class_labels", "opset", "latency",
        "latency_machine", "target")


def _pct(v: float | None) -> str:
    return "unknown" if v is None else f"{v:.2f}"


def _int(v: Any) -> str:
    try:
        return f"{int(v)}"
    except (TypeError, ValueError):
        return "unknown"


def facts(*, spec, cand, classes: Sequence[str], mean: Sequence[float], std: Sequence[float], opset: int,
          test_acc: float, test_images: int, latency: Mapping[str, Mapping[str, Any]], machine: str,
          params: int, macs: int, warning: str = "", target: str = "") -> dict[str, str]:
    """The card's facts as strings (ONNX metadata values are strings). ``latency``: format -> LatencyResult dict.

    ``test_acc`` is the accuracy measured now on ``test_images`` test images; the validation accuracy and the
    budget come from the store (``unknown`` for a checkpoint deployed without a trial). ``warning``: e.g. that
    the model is near chance and was deployed with --force ("none" when empty). ``target``: the verdict of
    ``dse.deploy.fit`` (e.g. "mcu: fits").
    """
    from dse.deploy.export import INPUT_NAME, OUTPUT_NAME

    lat = "; ".join(f"{fmt} p50 {r['p50_ms']:.3f} ms p99 {r['p99_ms']:.3f} ms ({r['threads']} thread, batch 1)"
                    for fmt, r in latency.items() if r) or "not measured (--no-latency)"
    return {
        "model": spec.display_name, "registry_name": spec.name, "warning": warning or "none",
        "study": cand.study or "none (checkpoint not in the store)",
        "optuna_trial": _int(cand.optuna_number),
        "dataset": cand.dataset, "val_acc_pct": _pct(cand.best_val_acc), "test_acc_pct": _pct(test_acc),
        "test_images_scored": str(test_images), "budget_epochs": _int(cand.epochs),
        "budget_train_images": _int(cand.train_images), "data_copy": cand.data_source or "unknown",
        "checkpoint_bytes": _int(cand.checkpoint_bytes), "params": str(params), "macs": str(macs),
        "input": f"{INPUT_NAME}: float32 [batch, 3, 32, 32] (NCHW)",
        "output": f"{OUTPUT_NAME}: float32 [batch, {len(classes)}] (logits, class order below)",
        "preprocessing": "RGB 32x32 uint8 -> x / 255 -> (x - mean) / std per channel -> NCHW float32",
        "mean": json.dumps([round(float(m), 6) for m in mean]), "std": json.dumps([round(float(s), 6) for s in std]),
        "class_labels": json.dumps(list(classes)), "opset": str(opset), "latency": lat,
        "latency_machine": machine, "target": target or "none checked (python -m dse.deploy --target NAME)",
    }


def markdown(f: Mapping[str, str], files: Mapping[str, str]) -> str:
    """The README: a short description, the facts table, the files of the folder and how to run the model."""
    classes = json.loads(f["class_labels"])
    lines = [f"# {f['model']} (`{f['registry_name']}`)", ""]
    if f["warning"] != "none":
        lines += [f"**Warning: {f['warning']}.**", ""]
    lines += [
             f"Trained on {f['dataset']} in study `{f['study']}`, Optuna trial {f['optuna_trial']}: "
             f"validation accuracy {f['val_acc_pct']} %, test accuracy {f['test_acc_pct']} % on "
             f"{f['test_images_scored']} test images, at a budget of {f['budget_epochs']} epochs on "
             f"{f['budget_train_images']} training images per epoch (data copy `{f['data_copy']}`).", "",
             "| fact | value |", "|---|---|"]
    lines += [f"| {k} | {str(f[k]).replace('|', '/')} |" for k in KEYS if k != "class_labels"]
    lines += ["", "## Input and output", "",
              f"- input `{f['input']}`", f"- output `{f['output']}`",
              f"- preprocessing: {f['preprocessing']}; mean {f['mean']}, std {f['std']}", "",
              "Class labels, in output order:", ""]
    lines += [f"{i}. {c}" for i, c in enumerate(classes)]
    lines += ["", "## Files", ""] + [f"- `{name}`: {what}" for name, what in files.items()]
    lines += ["", "The same facts are in the ONNX models' `metadata_props` (e.g. "
              "`onnx.load('model.onnx').metadata_props`).", ""]
    return "\n".join(lines)


def stamp_onnx(path: str | os.PathLike, f: Mapping[str, str]) -> int:
    """Write ``f`` into the ONNX model's ``metadata_props`` (replacing earlier ones); returns the new size."""
    import onnx

    from dse.deploy.export import save_onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, dict(f))
    save_onnx(model, path)
    return Path(path).stat().st_size


def write_card(out: Path, f: Mapping[str, str], files: Mapping[str, str]) -> Path:
    path = Path(out) / "README.md"
    atomic_write(path, markdown(f, files))
    return path


__all__ = ["KEYS", "facts", "markdown", "stamp_onnx", "write_card"]
