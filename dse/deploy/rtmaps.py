"""Generate the RTMaps Python component that runs an exported model (paper section 5, Table 7).

RTMaps' Python bridge loads a file defining ``class rtmaps_python(BaseComponent)`` with ``Dynamic()`` (declare
inputs, outputs, properties), ``Birth()`` (once at start), ``Core()`` (per input; reads
``self.inputs[name].ioelt.data``, writes ``self.outputs[name].write(...)``) and ``Death()`` (once at stop); it
imports ``rtmaps.types``, ``rtmaps.core`` and ``rtmaps.base_component``, which exist only inside RTMaps.

The generated file is ``templates/rtmaps_classifier.py`` (a valid, lint-checked Python file) with its settings
block replaced: the model file's path relative to the component, the runtime (onnxruntime, or TorchScript as a
fallback), the input/output names, the normalisation constants, the class names and where the model came from.
It loads the model in Birth, classifies each frame in Core (label and softmax score on two outputs) and
releases it in Death. RTMaps cannot be installed here; the tests drive the generated class through a stand-in
of the ``rtmaps`` modules that they define.
"""

from __future__ import annotations

import datetime as dt
import os
import pprint
from importlib import resources
from pathlib import Path
from typing import Any

from dse.common import atomic_path
from dse.deploy import DeployError
from dse.deploy.export import INPUT_NAME, OUTPUT_NAME

RUNTIMES = ("onnxruntime", "torchscript")
TEMPLATE = "rtmaps_classifier.py"
_BEGIN, _END = "# >>> dse.deploy settings >>>", "# <<< dse.deploy settings <<<"


def template_text() -> str:
    return resources.files("dse.deploy.templates").joinpath(TEMPLATE).read_text(encoding="utf-8")


def render(*, model_file: str, runtime: str, model_name: str, mean: tuple[float, ...], std: tuple[float, ...],
           class_names: list[str] | tuple[str, ...], image_size: int = 32, threads: int = 1,
           provenance: dict[str, Any] | None = None) -> str:
    """The component's source text (validated by ``compile``)."""
    if runtime not in RUNTIMES:
        raise DeployError(f"component runtime {runtime!r} is unknown; allowed: {', '.join(RUNTIMES)}")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise DeployError(f"normalisation needs 3 means and 3 positive stds, got mean={mean} std={std}")
    text = template_text()
    head, sep1, rest = text.partition(_BEGIN)
    _, sep2, tail = rest.partition(_END)
    if not (sep1 and sep2):
        raise DeployError(f"component template {TEMPLATE} lost its settings markers")
    settings = {
        "MODEL_NAME": model_name,
        "MODEL_FILE": model_file,
        "RUNTIME": runtime,
        "INPUT_NAME": INPUT_NAME,
        "OUTPUT_NAME": OUTPUT_NAME,
        "IMAGE_SIZE": int(image_size),
        "MEAN": tuple(float(v) for v in mean),
        "STD": tuple(float(v) for v in std),
        "CLASS_NAMES": tuple(str(c) for c in class_names),
        "THREADS": int(threads),
        "PROVENANCE": dict(provenance or {}),
    }
    block = "\n".join(f"{k} = {pprint.pformat(v, width=100, sort_dicts=False)}" for k, v in settings.items())
    source = f"{head}{_BEGIN}\n{block}\n{_END}{tail}"
    try:
        compile(source, "rtmaps_component.py", "exec")
    except SyntaxError as e:  # a repr that is not valid Python: a bug here, not the user's input
        raise DeployError(f"generated RTMaps component does not compile: {e}") from e
    return source


def generate_component(out_path: str | os.PathLike, model_path: str | os.PathLike, *, model_name: str,
                       class_names: list[str] | tuple[str, ...], mean: tuple[float, ...],
                       std: tuple[float, ...], runtime: str = "onnxruntime", image_size: int = 32,
                       threads: int = 1, provenance: dict[str, Any] | None = None) -> Path:
    """Write the component for ``model_path`` to ``out_path`` (atomically); the model path is stored relative
    to the component's folder (absolute if on another drive)."""
    out_path, model_path = Path(out_path), Path(model_path)
    if not model_path.is_file():
        raise DeployError(f"model file {model_path} for the RTMaps component does not exist")
    try:
        rel = os.path.relpath(model_path.resolve(), out_path.parent.resolve())
    except ValueError:  # another drive (Windows)
        rel = str(model_path.resolve())
    prov = {"generated": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(), **(provenance or {})}
    source = render(model_file=Path(rel).as_posix(), runtime=runtime, model_name=model_name, mean=mean,
                    std=std, class_names=class_names, image_size=image_size, threads=threads, provenance=prov)
    with atomic_path(out_path) as tmp:
        tmp.write_text(source, encoding="utf-8")
    return out_path


__all__ = ["RUNTIMES", "generate_component", "render", "template_text"]
