"""Model registry: the typed ``ModelSpec``, registry names, the paper's names, and the model builder.

Registry names (the join key of the store and the tables; ``ModelSpec.name``):

- ``squeezenet_1_0``, ``squeezenet_1_1``
- ``{arch}_{DD}_{W}x`` for arch ``sqnxt``, ``modified_sqnxt``, ``shallow_sqnxt``: DD = total depth (sum of
  the four stage block counts + 2, at least two digits), W = width with "." written "_"
  (``shallow_sqnxt_06_0_4x``, ``sqnxt_23_2x``, ``shallow_sqnxt_14_1_5x``). This short form always means the
  canonical stage depths of that total depth (``canonical_stage_depths``).
- ``{arch}_23v5_{W}x`` (sqnxt / modified_sqnxt only): the SqueezeNext-23v5 layout 2-4-14-1.
- ``{arch}_{DD}_{W}x_s{a}_{b}_{c}_{d}`` for any other stage depths (``shallow_sqnxt_14_1x_s1_5_5_1``).
  Parsing accepts the explicit form for canonical depths too; ``ModelSpec.name`` always gives the shortest.

Widths are written as the shortest decimal that round-trips the float (``repr``, in positional notation,
trailing ".0" dropped): 1 -> "1", 2.0 -> "2", 0.4 -> "0_4", 0.33 -> "0_33", 1e-05 -> "0_00001". So any two
specs with different (arch, stage_depths, width) get different names, and ``spec_from_name(spec.name)`` gives
back the same arch, stage_depths and width.

Display names (the paper's naming, ``ModelSpec.display_name``): "Shallow SqueezeNext-06-0.4x",
"SqueezeNext-23-2x", "SqueezeNext-23v5-1x", "Modified SqueezeNext-23-1x", "SqueezeNet-v1.1". The width uses
the same shortest-decimal rule with a "." (so 1.0 -> "1x", 2.0 -> "2x"; the paper writes both "2x" and "2.0x",
``normalize_paper_name`` maps its names onto ours). Stage depths are not part of a display name, as in the
paper (Table 2's 14-1x is 1-5-5-1, Table 1's 14-1.5x is 1-2-8-1).
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import importlib
import math
import numbers
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from torch import nn

from dse.common import PAPER_TABLES


@dataclass(frozen=True)
class Arch:
    """One architecture of the zoo, everything the rest of the code knows about it. Adding one is one entry in
    ARCHITECTURES (and its module); names, defaults, the builder and the figures' colours follow."""

    display: str  # the paper's name: the family's ("Shallow SqueezeNext") or, without stages, the model's
    staged: bool  # four stages of blocks and a width multiplier (the SqueezeNext family); else neither
    dropout: float  # default classifier dropout probability
    activation: str  # default activation
    builder: str  # "module:Class"; staged: Class(stage_depths, width=, num_classes=, dropout=, activation=),
    #               else Class(variant, num_classes, dropout, activation)
    colour: str  # its points in the figures (matplotlib tab10: stable across runs)
    variant: str = ""  # the builder's version argument (SqueezeNet "1_0" / "1_1")
    v5: bool = False  # has the SqueezeNext-23v5 layout (2-4-14-1) under the name {arch}_23v5_{W}x


#: SqueezeNet's classifier dropout 0.5 (Iandola 2016), none in the SqueezeNext reference, p = 0.3 for Shallow
#: SqueezeNext (section 3, Table 4); ELU for Shallow SqueezeNext (Fig. 6), ReLU otherwise.
ARCHITECTURES: dict[str, Arch] = {
    "squeezenet_1_0": Arch("SqueezeNet-v1.0", False, 0.5, "relu", "dse.models.squeezenet:SqueezeNet", "#1f77b4",
                           variant="1_0"),
    "squeezenet_1_1": Arch("SqueezeNet-v1.1", False, 0.5, "relu", "dse.models.squeezenet:SqueezeNet", "#17becf",
                           variant="1_1"),
    "sqnxt": Arch("SqueezeNext", True, 0.0, "relu", "dse.models.squeezenext:SqueezeNext", "#ff7f0e", v5=True),
    "modified_sqnxt": Arch("Modified SqueezeNext", True, 0.0, "relu", "dse.models.squeezenext:ModifiedSqueezeNext",
                           "#9467bd", v5=True),
    "shallow_sqnxt": Arch("Shallow SqueezeNext", True, 0.3, "elu",
                          "dse.models.shallow_squeezenext:ShallowSqueezeNext", "#2ca02c"),
}
ARCHS = tuple(ARCHITECTURES)
SQUEEZENET_ARCHS = tuple(a for a, d in ARCHITECTURES.items() if not d.staged)
SQNXT_ARCHS = tuple(a for a, d in ARCHITECTURES.items() if d.staged)
ACTIVATIONS = ("elu", "relu")
DEFAULT_DROPOUT = {a: d.dropout for a, d in ARCHITECTURES.items()}
DEFAULT_ACTIVATION = {a: d.activation for a, d in ARCHITECTURES.items()}

SQNXT_23 = (6, 6, 8, 1)
SQNXT_23V5 = (2, 4, 14, 1)

#: Canonical stage depths per total depth: the layouts the paper gives (Tables 1, 2, 5, 6) and guesses for
#: depths it names without a layout. 6: 1-1-1-1 (Tables 1-5). 7: 1-1-2-1 (guess for Table 3's 07-0.7x: one
#: block more in stage 3, like 09 = 1-1-4-1). 8/10/12/16: 1-N-N-1 (Table 2). 9: 1-1-4-1 (Tables 5-7).
#: 14: 1-2-8-1 (Tables 1, 2, 5, 7; Table 2's 14-1x 1-5-5-1 gets the explicit name). 21: 2-2-14-1 (Tables
#: 1, 2, 5). 23: 6-6-8-1 (SqueezeNext-23).
PAPER_CANONICAL: dict[int, tuple[int, int, int, int]] = {
    6: (1, 1, 1, 1),
    7: (1, 1, 2, 1),
    8: (1, 2, 2, 1),
    9: (1, 1, 4, 1),
    10: (1, 3, 3, 1),
    12: (1, 4, 4, 1),
    14: (1, 2, 8, 1),
    16: (1, 6, 6, 1),
    21: (2, 2, 14, 1),
    23: SQNXT_23,
}

class InvalidModelConfig(ValueError):
    """A model name or spec field is invalid; the message names the bad value and what is allowed."""


def canonical_stage_depths(depth: int) -> tuple[int, int, int, int]:
    """Stage block counts that the short name ``{arch}_{depth}_{W}x`` stands for.

    The paper's layouts (``PAPER_CANONICAL``) where it has one; otherwise 1-k-k-1 for an even number of blocks
    (the Table 2 pattern) and 1-k-(k+1)-1 for an odd one. Depth = blocks + 2, at least 6.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 6:
        raise InvalidModelConfig(
            f"depth must be an integer >= 6 (four stages of >= 1 block, + 2), got {depth!r}"
        )
    if depth in PAPER_CANONICAL:
        return PAPER_CANONICAL[depth]
    blocks = depth - 2
    k = (blocks - 2) // 2
    return (1, k, k + (blocks % 2), 1)


def format_width(width: float, sep: str = ".") -> str:
    """Shortest round-tripping decimal of ``width``, positional, without a trailing ".0"; "." -> ``sep``."""
    s = format(Decimal(repr(float(width))), "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s.replace(".", sep)


def _norm_depths(value: Any) -> tuple[int, int, int, int] | None:
    if value is None:
        return None
    try:
        items = tuple(value)
    except TypeError:
        items = None
    if (
        items is None
        or len(items) != 4
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in items)
    ):
        shown = items if items is not None else value
        raise InvalidModelConfig(f"stage_depths must be four positive integers, got {shown!r}")
    return tuple(int(v) for v in items)  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelSpec:
    """Everything that defines a model; frozen and hashable (the facts cache and the store key on it).

    ``dropout``/``activation`` left as None take the arch's default (0.3 / "elu" for shallow_sqnxt, paper
    section 3; 0.5 / "relu" for SqueezeNet; 0.0 / "relu" for sqnxt and modified_sqnxt).
    """

    arch: str
    stage_depths: tuple[int, int, int, int] | None = None
    width: float = 1.0
    dropout: float | None = None
    activation: str | None = None
    num_classes: int = 10

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.arch not in ARCHS:
            raise InvalidModelConfig(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        depths = _norm_depths(self.stage_depths)
        if self.arch in SQUEEZENET_ARCHS and depths is not None:
            raise InvalidModelConfig(f"stage_depths must be None for {self.arch}, got {depths!r}")
        if self.arch in SQNXT_ARCHS and depths is None:
            raise InvalidModelConfig(f"stage_depths must be four positive integers for {self.arch}, got None")
        set_(self, "stage_depths", depths)
        w = self.width
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) or w <= 0:
            raise InvalidModelConfig(f"width must be > 0, got {w!r}")
        w = float(w)
        if self.arch in SQUEEZENET_ARCHS and w != 1.0:
            raise InvalidModelConfig(f"width must be 1.0 for {self.arch} (no width multiplier), got {w!r}")
        set_(self, "width", w)
        p = DEFAULT_DROPOUT[self.arch] if self.dropout is None else self.dropout
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
            raise InvalidModelConfig(f"dropout must be in [0, 1), got {p!r}")
        set_(self, "dropout", float(p))
        act = DEFAULT_ACTIVATION[self.arch] if self.activation is None else self.activation
        if act not in ACTIVATIONS:
            raise InvalidModelConfig(f"activation must be one of {', '.join(ACTIVATIONS)}, got {act!r}")
        set_(self, "activation", act)
        n = self.num_classes
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
            raise InvalidModelConfig(f"num_classes must be >= 2, got {n!r}")
        set_(self, "num_classes", int(n))

    @property
    def depth(self) -> int | None:
        """Sum of stage blocks + 2 (stem and head convs); None for SqueezeNet (no stage layout)."""
        return None if self.stage_depths is None else sum(self.stage_depths) + 2

    @property
    def name(self) -> str:
        """Registry name (module docstring): canonical short form, ``23v5`` or explicit ``_sA_B_C_D``."""
        if self.arch in SQUEEZENET_ARCHS:
            return self.arch
        assert self.stage_depths is not None and self.depth is not None
        w = format_width(self.width, "_")
        if ARCHITECTURES[self.arch].v5 and self.stage_depths == SQNXT_23V5:
            return f"{self.arch}_23v5_{w}x"
        base = f"{self.arch}_{self.depth:02d}_{w}x"
        if self.stage_depths == canonical_stage_depths(self.depth):
            return base
        return base + "_s" + "_".join(str(d) for d in self.stage_depths)

    @property
    def display_name(self) -> str:
        """The paper's naming: "Shallow SqueezeNext-06-0.4x", "SqueezeNext-23-2x", "SqueezeNet-v1.1"."""
        arch = ARCHITECTURES[self.arch]
        if not arch.staged:
            return arch.display
        assert self.depth is not None
        tag = "23v5" if arch.v5 and self.stage_depths == SQNXT_23V5 else f"{self.depth:02d}"
        return f"{arch.display}-{tag}-{format_width(self.width)}x"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of all fields (stage_depths as a list, defaults filled in)."""
        d = dataclasses.asdict(self)
        d["stage_depths"] = None if self.stage_depths is None else list(self.stage_depths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise InvalidModelConfig(
                f"unknown ModelSpec keys {unknown}; allowed: {', '.join(sorted(allowed))}"
            )
        if "arch" not in d:
            raise InvalidModelConfig(f"ModelSpec dict needs 'arch', got keys {sorted(d)}")
        return cls(**d)

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with ``changes`` applied (validated again)."""
        try:
            return dataclasses.replace(self, **changes)
        except TypeError as e:  # unknown field
            raise InvalidModelConfig(
                f"{e}; fields: {', '.join(f.name for f in dataclasses.fields(self))}"
            ) from e


def _alternatives(names: Iterable[str]) -> str:
    """A regex alternation of `names`, longest first (so "shallow_sqnxt" is not read as "sqnxt")."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


_NAME_RE = re.compile(
    rf"^(?P<arch>{_alternatives(SQNXT_ARCHS)})_(?P<depth>\d+)(?P<v5>v5)?_(?P<width>\d+(?:_\d+)?)x"
    r"(?:_s(?P<s>\d+_\d+_\d+_\d+))?$"
)


def spec_from_name(
    name: str, *, num_classes: int = 10, dropout: float | None = None, activation: str | None = None
) -> ModelSpec:
    """Parse a registry name (module docstring) into a ``ModelSpec``; keyword fields override defaults."""
    kw = dict(num_classes=num_classes, dropout=dropout, activation=activation)
    if name in SQUEEZENET_ARCHS:
        return ModelSpec(name, **kw)
    m = _NAME_RE.match(name) if isinstance(name, str) else None
    if m is None:
        raise InvalidModelConfig(
            f"unknown model {name!r}; known: {', '.join(list_models())} "
            "(or pattern {sqnxt,modified_sqnxt,shallow_sqnxt}_DD_Wx[_sA_B_C_D])"
        )
    arch, depth = m["arch"], int(m["depth"])
    width = float(m["width"].replace("_", "."))
    if m["v5"]:
        if not ARCHITECTURES[arch].v5 or depth != 23 or m["s"]:
            known = " / ".join(f"{a}_23v5_Wx" for a, d in ARCHITECTURES.items() if d.v5)
            raise InvalidModelConfig(f"unknown model {name!r}: the v5 tag exists only as {known}")
        depths = SQNXT_23V5
    elif m["s"]:
        depths = tuple(int(v) for v in m["s"].split("_"))
        if sum(depths) + 2 != depth:
            raise InvalidModelConfig(f"model {name!r}: depth {depth} != sum of stage depths {depths} + 2")
    else:
        try:
            depths = canonical_stage_depths(depth)
        except InvalidModelConfig as e:
            raise InvalidModelConfig(f"model {name!r}: {e}") from None
    return ModelSpec(arch, depths, width, **kw)


def display_name_of(name: str) -> str:
    """The paper-style name of a registry name ("shallow_sqnxt_10_0_325x" -> "Shallow SqueezeNext-10-0.325x"); a
    name this version cannot parse (an older store's) is returned as it is."""
    try:
        return spec_from_name(name).display_name
    except InvalidModelConfig:
        return str(name)


def build_model(spec: ModelSpec) -> nn.Module:
    """Instantiate the ``nn.Module`` a spec describes (weights freshly initialised, train mode, CPU)."""
    if not isinstance(spec, ModelSpec):
        raise InvalidModelConfig(f"build_model needs a ModelSpec, got {type(spec).__name__}")
    arch = ARCHITECTURES[spec.arch]
    module, _, cls = arch.builder.partition(":")
    net = getattr(importlib.import_module(module), cls)  # imported when needed: a spec needs no torch modules
    if not arch.staged:
        return net(arch.variant, spec.num_classes, spec.dropout, spec.activation)
    return net(spec.stage_depths, width=spec.width, num_classes=spec.num_classes, dropout=spec.dropout,
               activation=spec.activation)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """``build_model(spec_from_name(name, **overrides))`` (overrides: num_classes, dropout, activation)."""
    return build_model(spec_from_name(name, **overrides))


# ----------------------------------------------------------------------------------------------- the paper


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's Tables 1-7 (as in its CSVs, shipped in dse/experiments/paper_tables/), with its size in
    MB."""

    table: str
    model: str
    resolution: str | None
    width: float | None
    size_mb: float
    dropout: float | None = None
    extra: str = ""  # optimizer (Table 6) etc., for display only
    spec: ModelSpec = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "spec", paper_spec(self.model, self.resolution, self.width, self.dropout))


_PAPER_NAME_RE = re.compile(
    rf"^(?P<fam>{_alternatives(d.display for d in ARCHITECTURES.values() if d.staged)})-(?P<depth>\d+)(?P<v5>v5)?"
    r"-(?P<width>\d+(?:\.\d+)?)x?$"
)
_PAPER_ALIASES = {"Squeezed CNN (SqueezeNet implementation)": "SqueezeNet-v1.0"}


def normalize_paper_name(model: str) -> str:
    """Map a name as printed in the paper onto our display-name form.

    Drops " (baseline)", a leading "Baseline ", the "-v1" suffix (Tables 4, 5: a re-run, same model), turns
    the width into the shortest decimal ("2.0x" -> "2x", "0.5" -> "0.5x", Table 7), and maps Table 7's
    "Squeezed CNN (SqueezeNet implementation)" to "SqueezeNet-v1.0".
    """
    s = " ".join(str(model).split())
    s = _PAPER_ALIASES.get(s, s)
    s = s.removesuffix("(baseline)").strip().removeprefix("Baseline ").strip()
    s = s.removesuffix("-v1") if not s.startswith("SqueezeNet-") else s
    m = _PAPER_NAME_RE.match(s)
    if m:
        tag = f"{int(m['depth']):02d}" + ("v5" if m["v5"] else "")
        s = f"{m['fam']}-{tag}-{format_width(float(m['width']))}x"
    return s


def _blank(v: Any) -> bool:
    """None, "", NaN, pandas' NA: "the paper gives no value" (pandas is not imported for this)."""
    if v is None:
        return True
    if isinstance(v, str):
        return not v.strip()
    if hasattr(v, "__len__"):  # a sequence of stage depths
        return len(v) == 0
    try:
        return bool(v != v)  # NaN; pd.NA's comparison is NA, whose bool() raises
    except (TypeError, ValueError):
        return True


def paper_spec(
    model: str,
    resolution: str | Iterable[int] | None = None,
    width: float | None = None,
    dropout: float | None = None,
    num_classes: int = 10,
) -> ModelSpec:
    """Map a row of the paper's tables (``model``, ``resolution`` "1-2-8-1" or empty, ``width``) to a spec.

    - Where the paper gives no resolution, the canonical depths of the name's total depth are a guess:
      06 -> 1-1-1-1, 07 -> 1-1-2-1, 12 -> 1-4-4-1, 14 -> 1-2-8-1 (Table 3's 12-0.4x, 14-0.5x, 06-*, 07-0.7x;
      Table 1's 12-1.0x; Table 6's 14-1.0x). See ``canonical_stage_depths``.
    - "SqueezeNext-23-1x (baseline)" -> sqnxt 6-6-8-1 1x; "SqueezeNet-v1.0 (baseline)" -> squeezenet_1_0.
    - "Squeezed CNN (SqueezeNet implementation)" (Table 7) -> squeezenet_1_0: the paper says only that it is a
      SqueezeNet implementation, and v1.0 is its Table 1 baseline (its 12.9 MB matches neither version).
    - ``width`` (blank/NaN = take it from the name) must agree with the name's width.
    Empty strings and NaN (pandas) count as "not given"; ``dropout`` None = the arch default (0.3).
    """
    norm = normalize_paper_name(model)
    by_display = {d.display: a for a, d in ARCHITECTURES.items()}
    if norm in by_display and not ARCHITECTURES[by_display[norm]].staged:
        return ModelSpec(by_display[norm], None, 1.0, None if _blank(dropout) else float(dropout), None, num_classes)
    m = _PAPER_NAME_RE.match(norm)
    if m is None:
        raise InvalidModelConfig(
            f"unknown paper model {model!r}; expected 'SqueezeNet-v1.0', 'SqueezeNet-v1.1' "
            "or '[Shallow |Modified ]SqueezeNext-DD-Wx'"
        )
    arch = by_display[m["fam"]]
    depth = int(m["depth"])
    w = _paper_width(model, width, float(m["width"]))
    if _blank(resolution):
        depths = SQNXT_23V5 if m["v5"] else canonical_stage_depths(depth)
    else:
        depths = _paper_depths(model, resolution, depth)
    return ModelSpec(arch, depths, w, None if _blank(dropout) else float(dropout), None, num_classes)


def _paper_width(model: str, width: Any, name_width: float) -> float:
    """A row's width multiplier: the name's, which a given ``width`` must agree with."""
    if _blank(width):
        return name_width
    if not math.isclose(float(width), name_width, rel_tol=1e-9):
        raise InvalidModelConfig(f"width {width!r} disagrees with the width in {model!r} ({name_width:g})")
    return float(width)


def _paper_depths(model: str, resolution: str | Iterable[int], depth: int) -> tuple[int, ...]:
    """A row's stage depths from its resolution ("1-2-8-1" or a sequence), which must add up to the name's depth
    (its blocks + the first convolution and the classifier)."""
    if isinstance(resolution, str):
        parts = [p for p in re.split(r"[-,\s]+", resolution.strip()) if p]
        try:
            depths = tuple(int(p) for p in parts)
        except ValueError:
            raise InvalidModelConfig(f"resolution must look like '1-2-8-1', got {resolution!r}") from None
    else:
        depths = tuple(resolution)
    depths = _norm_depths(depths)
    assert depths is not None
    if sum(depths) + 2 != depth:
        raise InvalidModelConfig(f"resolution {resolution!r} has {sum(depths)} blocks + 2 != depth {depth} of "
                                 f"{model!r}")
    return depths


def _read_paper_rows(folder: Path = PAPER_TABLES) -> tuple[PaperRow, ...]:
    """Every row of ``folder``'s ``table<N>_*.csv``, Table 1 first; a missing folder is an error, not no rows."""
    files = sorted(folder.glob("table[1-7]_*.csv"))
    if not files:
        raise FileNotFoundError(f"no paper tables (table1_*.csv ... table7_*.csv) in {folder}; dse runs from its "
                                "install; reinstall dse (pip install .), whose dse/experiments/paper_tables holds them")
    rows = []
    for f in files:
        with f.open(newline="") as fh:
            for r in csv.DictReader(fh):
                dropout = r.get("dropout") or None
                rows.append(PaperRow(
                    table=f.name.split("_")[0], model=r["model"], resolution=r["resolution"] or None,
                    width=float(r["width"]) if r["width"] else None, size_mb=float(r["size_mb"]),
                    dropout=float(dropout) if dropout else None,
                    extra=r.get("optimizer") or (f"p={dropout}" if dropout else "")))  # what --table shows
    return tuple(rows)


#: Every row of the paper's Tables 1-7, in order, read from ``dse/experiments/paper_tables`` (``PaperRow.spec`` is its
#: ModelSpec, 10 classes; Table 6 rows are CIFAR-100 in the paper but keep num_classes=10 here: pass num_classes
#: to ``paper_spec`` instead).
PAPER_ROWS: tuple[PaperRow, ...] = _read_paper_rows()


def _table_models() -> dict[str, list[ModelSpec]]:
    out: dict[str, list[ModelSpec]] = {}
    for row in PAPER_ROWS:
        specs = out.setdefault(row.table, [])
        spec = row.spec.replace(num_classes=100) if row.table == "table6" else row.spec
        if spec not in specs:
            specs.append(spec)
    return out


#: Distinct specs per paper table ("table1" ... "table7"); Table 6 at 100 classes (CIFAR-100).
PAPER_TABLE_MODELS: dict[str, list[ModelSpec]] = _table_models()

#: Baselines registered beside the paper's models.
BASELINE_NAMES = (
    "squeezenet_1_0",
    "squeezenet_1_1",
    "sqnxt_23_1x",
    "sqnxt_23_2x",
    "sqnxt_23v5_1x",
    "sqnxt_23v5_2x",
    "modified_sqnxt_23_1x",
    "modified_sqnxt_23_2x",
)


def _registered() -> tuple[str, ...]:
    names = set(BASELINE_NAMES) | {row.spec.name for row in PAPER_ROWS}
    return tuple(sorted(names))


_REGISTERED = _registered()


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching an fnmatch ``pattern``: every paper model plus the baselines."""
    return [n for n in _REGISTERED if fnmatch.fnmatchcase(n, pattern)]
