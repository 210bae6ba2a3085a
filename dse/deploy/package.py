"""Package a deploy folder: the RTMaps component, the model card (README.md + ONNX metadata) and report.json."""

from __future__ import annotations

import json
from pathlib import Path

from dse.common import atomic_write
from dse.deploy.chance import chance_warning
from dse.deploy.options import Options
from dse.deploy.report import DeployReport, timing_warnings
from dse.deploy.select import Candidate

#: The model files of a deploy folder, by format.
FORMAT_FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "onnx_int8": "model.int8.onnx"}


def package(report: DeployReport, spec, cand: Candidate, bundle, opts: Options) -> None:
    """The RTMaps component, the model card (README.md + ONNX metadata) and report.json of one folder."""
    from dse.data import CIFAR_MEAN, CIFAR_STD
    from dse.deploy import card, fit, rtmaps
    from dse.models import model_facts

    out = Path(opts.out)
    comp_fmt = opts.component_format
    comp = report.format(comp_fmt)
    comp_path = out / f"rtmaps_{spec.name}.py"
    rtmaps.generate_component(
        comp_path, Path(comp.path), model_name=spec.name, class_names=bundle.classes, mean=CIFAR_MEAN,
        std=CIFAR_STD, runtime=opts.runtime,
        provenance={"display_name": spec.display_name, "optuna_trial_number": cand.optuna_number,
                    "study": cand.study, "format": comp_fmt, "test_images": comp.test_images,
                    "test_acc": round(comp.test_acc, 2)})
    report.component, report.component_model = str(comp_path), comp_fmt
    mf = model_facts(spec)
    verdict = fit.verdict(report.target)
    warning = "; ".join(w for w in [chance_warning(report.format("torch").test_acc, spec.num_classes),
                                    *timing_warnings(report.formats),
                                    verdict if "does not fit" in verdict else ""] if w)
    f = card.facts(spec=spec, cand=cand, classes=bundle.classes, mean=CIFAR_MEAN, std=CIFAR_STD, opset=opts.opset,
                   test_acc=report.format("torch").test_acc, test_images=comp.test_images,
                   latency={r.format: r.latency for r in report.formats if r.latency}, machine=report.machine,
                   params=cand.params or mf.params, macs=cand.macs or mf.macs, warning=warning, target=verdict)
    for r in report.formats:
        if r.format in ("onnx", "onnx_int8"):
            r.file_bytes = card.stamp_onnx(r.path, f)  # metadata only: the graph and its outputs are unchanged
    files = {FORMAT_FILES["onnx"]: "float32 ONNX", FORMAT_FILES["onnx_int8"]: "int8 ONNX (QDQ, static)",
             FORMAT_FILES["torchscript"]: "TorchScript (traced)", comp_path.name: f"RTMaps component ({comp_fmt})",
             "report.json": "every measurement of this folder (paths relative to it)"}
    card.write_card(out, f, files)
    atomic_write(out / "report.json", json.dumps(report.as_json(), indent=2, default=str) + "\n")


__all__ = ["FORMAT_FILES", "package"]
