"""The model zoo: SqueezeNet, SqueezeNext, Modified SqueezeNext and Shallow SqueezeNext for 32x32 images.

Duggal & El-Sharkawy 2020, sections 2-3. A model is a frozen ``ModelSpec`` (arch, stage depths, width,
dropout, activation, classes); its registry name (``spec.name``, e.g. ``shallow_sqnxt_06_0_4x``) is the join
key everywhere, and its paper name (``spec.display_name``) is derived from it.
``python -m dse.models --table`` prints every paper model with its size next to the paper's.
"""

from dse.models.facts import ModelFacts, model_facts
from dse.models.registry import (
    PAPER_ROWS,
    PAPER_TABLE_MODELS,
    InvalidModelConfig,
    ModelSpec,
    PaperRow,
    build_model,
    canonical_stage_depths,
    create_model,
    display_name_of,
    list_models,
    normalize_paper_name,
    paper_spec,
    spec_from_name,
)

__all__ = [
    "PAPER_ROWS",
    "PAPER_TABLE_MODELS",
    "InvalidModelConfig",
    "ModelFacts",
    "ModelSpec",
    "PaperRow",
    "build_model",
    "canonical_stage_depths",
    "display_name_of",
    "create_model",
    "list_models",
    "model_facts",
    "normalize_paper_name",
    "paper_spec",
    "spec_from_name",
]
