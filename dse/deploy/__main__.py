"""``python -m dse.deploy``: pick trained models, export, quantize, measure, generate the RTMaps component.

Examples::

    python -m dse.deploy --study cpu-quick --best
    python -m dse.deploy --study cpu-quick --pareto
    python -m dse.deploy --study cpu-quick --max-size 272KB          # KB = 1000 bytes; KiB = 1024
    python -m dse.deploy --study cpu-quick --max-latency-ms 1.5      # p99, batch 1, 1 thread
    python -m dse.deploy --study cpu-quick --trial 12               # Optuna's trial number
    python -m dse.deploy --model shallow_sqnxt_06_0_4x --checkpoint path/to/best.pt --data-root DIR

For each model, into ``--out`` (default ``results/deploy/<model>-t<Optuna trial number>/``; with several
models, one sub-folder each): ``model.onnx`` (float32, opset 17), ``model.torchscript.pt``, ``model.int8.onnx``,
``rtmaps_<model>.py``, a model card ``README.md`` (its facts also in the ONNX files' ``metadata_props``) and
``report.json`` (paths relative to the folder). A model within 10 points of chance is refused unless
``--force``. Every format is scored on the test images (default all 10,000) and
timed at batch 1 on one thread; the rows go to the store's ``dse_deployments`` table (one per format and host)
and the trial's ``int8_bytes`` is set. Errors in the input (unknown trial, a checkpoint that does not match
its config, a budget nothing meets) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dse.common import REPO, atomic_write, chance_percent, near_chance
from dse.deploy import DeployError
from dse.deploy.select import Candidate
from dse.errors import DSEError, first_line
from dse.store import DEFAULT_URL

log = logging.getLogger("dse.deploy")

DEFAULT_OUT = Path("results") / "deploy"
FORMAT_FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "onnx_int8": "model.int8.onnx"}


@dataclass
class Options:
    """What the pipeline does with one model (the CLI's flags, minus the selection)."""

    out: Path
    test_images: int = 10000
    calib_images: int = 512
    per_channel: bool | str = "auto"
    runtime: str = "onnxruntime"  # the component's runtime
    component_model: str = "fp32"  # which ONNX file the component embeds (fp32 or int8)
    warmup: int = 50
    runs: int = 500
    latency: bool = True
    atol: float = 1e-4
    opset: int = 17
    force: bool = False  # deploy a model within CHANCE_MARGIN_POINTS of chance


@dataclass
class FormatResult:
    format: str
    path: str
    file_bytes: int
    test_acc: float
    test_images: int
    max_abs_diff: float
    agreement: float  # % of test images whose top-1 equals PyTorch's
    latency: dict[str, Any] | None = None


@dataclass
class DeployReport:
    model_name: str
    display_name: str
    trial_id: int | None  # the store's row id (dse_deployments.trial_id)
    optuna_trial_number: int | None  # what optuna-dashboard and the tables show
    study: str | None
    checkpoint: str
    out: str
    component: str
    component_model: str
    runtime: str
    stored_test_acc: float | None
    best_val_acc: float | None
    host: str
    machine: str
    int8_per_channel: bool
    int8_calibration_images: int
    int8_choice: dict[str, float]
    formats: list[FormatResult] = field(default_factory=list)

    def format(self, name: str) -> FormatResult:
        return next(f for f in self.formats if f.format == name)

    def as_json(self) -> dict[str, Any]:
        """The report with every path relative to the deploy folder (the folder can be moved or copied)."""
        d = asdict(self)

        def rel(p: str) -> str:
            return Path(os.path.relpath(Path(p).resolve(), Path(self.out).resolve())).as_posix()

        d["out"] = "."
        d["checkpoint"], d["component"] = rel(self.checkpoint), rel(self.component)
        for f in d["formats"]:
            f["path"] = rel(f["path"])
        return d


# ---------------------------------------------------------------------------------------- loading
def resolve_checkpoint(cand: Candidate) -> Path:
    path = Path(cand.checkpoint_path)
    tries = [path] if path.is_absolute() else [path, REPO / path]
    for p in tries:
        if p.is_file():
            return p
    raise DeployError(f"{cand.label}: checkpoint {cand.checkpoint_path} does not exist")


def load_checkpoint(cand: Candidate):
    """(model in eval mode, spec) of a candidate; DeployError if unusable or not the trial's model."""
    from dse.errors import CheckpointError
    from dse.train import load_model

    path = resolve_checkpoint(cand)
    try:
        model, spec = load_model(path)
    except CheckpointError as e:
        raise DeployError(f"{cand.label}: checkpoint {path} is unusable: {e}") from e
    if spec.name != cand.model_name:
        raise DeployError(f"{cand.label}: checkpoint {path} holds {spec.name}, but the trial is "
                          f"{cand.model_name}; the checkpoint does not match its config")
    for key, want in cand.expected.items():
        got = getattr(spec, key, None)
        same = math.isclose(float(got), float(want), abs_tol=1e-9) if isinstance(want, float) else got == want
        if not same:
            raise DeployError(f"{cand.label}: checkpoint {path} has {key}={got!r}, the trial's config says "
                              f"{want!r}; the checkpoint does not match its config")
    return model.eval().cpu(), spec


def load_bundle(dataset: str, data_root: str | None, data_source: str | None = None):
    """The dataset's bundle (train for calibration, val for choices, test for scoring), never downloading."""
    from dse.data import DataConfig, load_data

    root = data_root
    if root is None and data_source and ":" in data_source:  # e.g. "imagefolder:/data/cifar10-jpg"
        cand_root = data_source.split(":", 1)[1]
        if Path(cand_root).exists():
            root = cand_root
    return load_data(DataConfig(dataset=dataset, root=root, download=False))


def pick_test_images(bundle, n: int):
    """(uint8 images, numpy int labels) of ``n`` test images: all, or a class-balanced draw (seed 0).

    Not the first n: image folders are stored class by class, so the first 1,000 images are one class.
    """
    import torch

    from dse.data import stratified_pick

    x, y = bundle.test_x.cpu(), bundle.test_y.cpu()
    if n < len(y):
        idx = stratified_pick(y, n, torch.Generator().manual_seed(0))
        x, y = x[idx], y[idx]
    return x, y.numpy()


# ---------------------------------------------------------------------------------------- the pipeline
#: A model at most this many points above chance (100 / classes %) is refused unless --force: it did not learn,
#: and a deployment of it would only look like a result.
CHANCE_MARGIN_POINTS = 10.0


class Steps:
    """Progress through the deployment of one model: a tqdm bar on a terminal, plain log lines otherwise."""

    NAMES = ("score PyTorch", "export + verify ONNX", "export + verify TorchScript", "quantize int8",
             "score int8", "time torch", "time torchscript", "time onnx", "time onnx_int8", "package")

    def __init__(self, label: str, latency: bool) -> None:
        self.label, self.total = label, len(self.NAMES) - (0 if latency else 4)
        self.done = 0
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=label, unit="step", leave=True, dynamic_ncols=True)

    def start(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(name)
        else:
            log.info("%s: step %d/%d: %s", self.label, self.done + 1, self.total, name)

    def finish(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            if self.done == self.total:
                self.bar.close()


def refuse_near_chance(label: str, acc: float, num_classes: int, force: bool) -> None:
    """DeployError when ``acc`` (percent) is within CHANCE_MARGIN_POINTS of guessing, unless ``force``."""
    chance = chance_percent(num_classes)
    if not force and near_chance(acc, num_classes, CHANCE_MARGIN_POINTS):
        raise DeployError(f"refusing to deploy {label}: test accuracy {acc:.1f} % is within "
                          f"{CHANCE_MARGIN_POINTS:g} points of chance ({chance:g} % for {num_classes} classes); "
                          "train it longer, or pass --force to deploy it anyway")


def _export_and_score(model, cand: Candidate, bundle, opts: Options, test_x, test_y, steps: Steps):
    """Every format exported, verified against PyTorch and scored on the test images: (results, int8 result)."""
    import numpy as np
    import onnx

    from dse.deploy import export, quantize

    out = Path(opts.out)
    steps.start("score PyTorch")
    ref = export.logits_torch(model, test_x)
    ref_top, n = ref.argmax(1), len(test_y)
    ckpt = resolve_checkpoint(cand)
    results = [FormatResult("torch", str(ckpt), ckpt.stat().st_size, export.accuracy(ref, test_y), n, 0.0,
                            100.0)]
    refuse_near_chance(cand.label, results[0].test_acc, ref.shape[1], opts.force)
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused model leaves no folder behind
    steps.finish()

    def add(fmt: str, path: Path, logits, diff: float) -> None:
        same = float((logits.argmax(1) == ref_top).mean() * 100.0)
        results.append(FormatResult(fmt, str(path), path.stat().st_size, export.accuracy(logits, test_y), n,
                                    diff, same))

    with tempfile.TemporaryDirectory(prefix=".work-", dir=out) as work_dir:  # intermediate files
        work = Path(work_dir)
        steps.start("export + verify ONNX")
        # the quantizer needs the export with PyTorch's tensor names (see quantize.quantize_int8)
        raw_onnx = export.export_onnx(model, work / "raw.onnx", opset=opts.opset, compact=False)
        onnx_path = export.save_onnx(export.compact_names(onnx.load(str(raw_onnx))), out / FORMAT_FILES["onnx"])
        lo = export.logits_onnx(onnx_path, test_x)
        add("onnx", onnx_path, lo, export.verify(ref, lo, what=f"ONNX export {onnx_path}", atol=opts.atol))
        steps.finish()
        steps.start("export + verify TorchScript")
        ts_path = export.export_torchscript(model, out / FORMAT_FILES["torchscript"])
        lt = export.logits_torchscript(ts_path, test_x)
        add("torchscript", ts_path, lt,
            export.verify(ref, lt, what=f"TorchScript export {ts_path}", atol=opts.atol))
        steps.finish()
        steps.start("quantize int8")
        calib = quantize.calibration_images(bundle.train_x.cpu(), bundle.train_y.cpu(), opts.calib_images)
        check = bundle.val_x[:quantize.CHECK_IMAGES].cpu() if len(bundle.val_x) else None
        per_channel = opts.per_channel if check is not None or opts.per_channel != "auto" else True
        q = quantize.quantize_int8(raw_onnx, out / FORMAT_FILES["onnx_int8"], calib, per_channel=per_channel,
                                   check=check)
        steps.finish()
    steps.start("score int8")
    lq = export.logits_onnx(q.path, test_x)
    add("onnx_int8", q.path, lq, float(np.max(np.abs(lq.astype(np.float64) - ref))))
    steps.finish()
    log.info("%s: int8 (%s) %d bytes, calibrated on %d training images", cand.label,
             "per-channel" if q.per_channel else "per-tensor", q.file_bytes, q.calibration_images)
    return results, q


def _time_formats(model, spec, cand: Candidate, results: list[FormatResult], test_x, opts: Options,
                  steps: Steps) -> None:
    """Batch-1, one-thread latency of every format (each in a fresh process), into ``results``."""
    from dse.deploy import export, latency

    feed = export.preprocess(test_x[:16]).numpy()
    with tempfile.TemporaryDirectory() as d:
        paths = {r.format: Path(r.path) for r in results}
        paths["torch"] = latency.save_eager(model, spec, Path(d) / "eager.pt")
        for r in results:
            steps.start(f"time {r.format}")
            res = latency.measure(r.format, paths[r.format], feed, warmup=opts.warmup, runs=opts.runs)
            r.latency = res.to_dict()
            steps.finish()
            log.info("%s: %-11s p50 %.3f ms  p99 %.3f ms", cand.label, r.format, res.p50_ms, res.p99_ms)


def deploy_model(model, spec, cand: Candidate, bundle, opts: Options, store=None) -> DeployReport:
    """Export, verify, quantize, score, time and package one model; record it in ``store`` if given.

    DeployError before anything is written to the store when the model is within CHANCE_MARGIN_POINTS of
    chance on the test images (unless ``opts.force``).
    """
    from dse.deploy import latency

    if spec.num_classes != bundle.num_classes:
        raise DeployError(f"{cand.label}: the model has {spec.num_classes} classes, the data "
                          f"{bundle.num_classes}")
    n = min(int(opts.test_images), len(bundle.test_y))
    if n < 1:
        raise DeployError(f"--test-images must be >= 1, got {opts.test_images}")
    test_x, test_y = pick_test_images(bundle, n)
    t0 = time.perf_counter()
    steps = Steps(cand.label, opts.latency)
    results, q = _export_and_score(model, cand, bundle, opts, test_x, test_y, steps)
    log.info("%s: exported, verified and scored on %d test images (%.1f s)", cand.label, n,
             time.perf_counter() - t0)
    if opts.latency:
        _time_formats(model, spec, cand, results, test_x, opts, steps)
    steps.start("package")
    report = DeployReport(
        model_name=spec.name, display_name=spec.display_name, trial_id=cand.trial_id,
        optuna_trial_number=cand.optuna_number, study=cand.study, checkpoint=results[0].path, out=str(opts.out),
        component="", component_model="", runtime=opts.runtime, stored_test_acc=cand.test_acc,
        best_val_acc=cand.best_val_acc, host=socket.gethostname(), machine=latency.machine(),
        int8_per_channel=q.per_channel, int8_calibration_images=q.calibration_images, int8_choice=q.tried,
        formats=results)
    package(report, spec, cand, bundle, opts)
    steps.finish()
    if store is not None:
        record(store, report)
    return report


def package(report: DeployReport, spec, cand: Candidate, bundle, opts: Options) -> None:
    """The RTMaps component, the model card (README.md + ONNX metadata) and report.json of one folder."""
    from dse.data import CIFAR_MEAN, CIFAR_STD
    from dse.deploy import card, rtmaps
    from dse.models import model_facts

    out = Path(opts.out)
    comp_fmt = "torchscript" if opts.runtime == "torchscript" else (
        "onnx_int8" if opts.component_model == "int8" else "onnx")
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
    acc, chance = report.format("torch").test_acc, chance_percent(spec.num_classes)
    warning = (f"test accuracy {acc:.1f} % is within {CHANCE_MARGIN_POINTS:g} points of chance ({chance:g} %): "
               "this model did not learn and was deployed with --force"
               if near_chance(acc, spec.num_classes, CHANCE_MARGIN_POINTS) else "")
    f = card.facts(spec=spec, cand=cand, classes=bundle.classes, mean=CIFAR_MEAN, std=CIFAR_STD, opset=opts.opset,
                   test_acc=report.format("torch").test_acc, test_images=comp.test_images,
                   latency={r.format: r.latency for r in report.formats if r.latency}, machine=report.machine,
                   params=cand.params or mf.params, macs=cand.macs or mf.macs, warning=warning)
    for r in report.formats:
        if r.format in ("onnx", "onnx_int8"):
            r.file_bytes = card.stamp_onnx(r.path, f)  # metadata only: the graph and its outputs are unchanged
    files = {FORMAT_FILES["onnx"]: "float32 ONNX", FORMAT_FILES["onnx_int8"]: "int8 ONNX (QDQ, static)",
             FORMAT_FILES["torchscript"]: "TorchScript (traced)", comp_path.name: f"RTMaps component ({comp_fmt})",
             "report.json": "every measurement of this folder (paths relative to it)"}
    card.write_card(out, f, files)
    atomic_write(out / "report.json", json.dumps(report.as_json(), indent=2, default=str) + "\n")


def _runtime_of(fmt: str) -> str:
    if fmt.startswith("onnx"):
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    import torch

    return f"torch {torch.__version__.split('+')[0]}"


def record(store, report: DeployReport) -> None:
    """One ``dse_deployments`` row per format (insert or replace); the trial's ``int8_bytes``.

    A run without latency (``--no-latency``) leaves the latency columns of an existing row as they were, so a
    quick re-export does not erase an earlier measurement.
    """
    for r in report.formats:
        values = dict(trial_id=report.trial_id, model_name=report.model_name, format=r.format, path=r.path,
                      file_bytes=r.file_bytes, test_acc=r.test_acc, test_images=r.test_images,
                      max_abs_diff=r.max_abs_diff, threads=1, host=report.host, machine=report.machine,
                      runtime=_runtime_of(r.format))
        if r.latency:
            values.update(p50_ms=r.latency["p50_ms"], p99_ms=r.latency["p99_ms"],
                          peak_mem_bytes=r.latency["peak_mem_bytes"], threads=r.latency["threads"],
                          runtime=r.latency["runtime"])
        store.record_deployment(**values)
    if report.trial_id is not None:
        store.update_trial(report.trial_id, int8_bytes=report.format("onnx_int8").file_bytes)


def summary(reports: list[DeployReport]) -> str:
    """A plain-text table: one row per model and format."""
    from tabulate import tabulate

    rows = []
    for rep in reports:
        for r in rep.formats:
            lat = r.latency or {}
            peak = lat.get("peak_mem_bytes")
            first = r.format == "torch"
            number = "" if rep.optuna_trial_number is None else rep.optuna_trial_number
            rows.append([rep.model_name if first else "", number if first else "", r.format,
                         f"{r.file_bytes / 1000:.1f}", f"{r.test_acc:.2f}", f"{r.agreement:.2f}",
                         f"{r.max_abs_diff:.1e}",
                         f"{lat['p50_ms']:.3f}" if lat else "-", f"{lat['p99_ms']:.3f}" if lat else "-",
                         f"{peak / 1e6:.1f}" if peak is not None else "-"])
    headers = ["model", "trial", "format", "file kB", "test acc %", "same top-1 %", "max|dlogit|", "p50 ms",
               "p99 ms", "peak MB"]
    text = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    if reports:
        rep = reports[0]
        n = rep.formats[0].test_images
        text += (f"\n{n} test images; latency: batch 1, 1 thread, host {rep.host}, {rep.machine}; "
                 "kB = 1000 bytes; peak MB = peak RSS added by loading and running the model")
    return text


# ---------------------------------------------------------------------------------------- selection
def _latency_probe(cand: Candidate, fmt: str, stat: str, opts: Options, store, bundle_for) -> float:
    """A candidate's latency in ms: the store's measurement on this host if any, else measured now."""
    if store is not None and cand.trial_id is not None:
        df = store.deployments([cand.trial_id])
        df = df[(df["format"] == fmt) & (df["host"] == socket.gethostname()) & (df["threads"] == 1)]
        col = f"{stat}_ms"
        if len(df) and df[col].notna().any():
            ms = float(df[col].dropna().iloc[-1])
            log.info("%s: %s %s %.3f ms (stored measurement)", cand.label, fmt, stat, ms)
            return ms
    from dse.deploy import export, latency, quantize

    model, spec = load_checkpoint(cand)
    bundle = bundle_for(cand)
    feed = export.preprocess(pick_test_images(bundle, 16)[0]).numpy()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        if fmt == "torchscript":
            path = export.export_torchscript(model, d / "m.pt")
        else:
            path = export.export_onnx(model, d / "m.onnx", opset=opts.opset, compact=fmt != "onnx_int8")
            if fmt == "onnx_int8":
                calib = quantize.calibration_images(bundle.train_x.cpu(), bundle.train_y.cpu(),
                                                    opts.calib_images)
                pc = opts.per_channel if opts.per_channel != "auto" else True
                path = quantize.quantize_int8(path, d / "m.int8.onnx", calib, per_channel=pc).path
        res = latency.measure(fmt, path, feed, warmup=opts.warmup, runs=opts.runs)
    ms = res.p50_ms if stat == "p50" else res.p99_ms
    log.info("%s: %s %s %.3f ms (measured)", cand.label, fmt, stat, ms)
    return ms


def select(args, store, opts: Options, bundle_for) -> list[Candidate]:
    from dse.deploy import select as sel

    choosers = [flag for flag, on in (("--pareto", args.pareto), ("--max-size", args.max_size is not None),
                                      ("--max-latency-ms", args.max_latency_ms is not None)) if on]
    if (args.model or args.checkpoint) and (choosers or args.study or args.trial):
        raise DeployError("--model/--checkpoint deploy one file; they do not combine with "
                          f"{', '.join(choosers + ['--study'] * bool(args.study) + ['--trial'] * bool(args.trial))}")
    if args.trial and choosers:
        raise DeployError(f"--trial deploys the trials named; it does not combine with {', '.join(choosers)}")
    if args.model or args.checkpoint:
        if not (args.model and args.checkpoint):
            raise DeployError("--model and --checkpoint go together (a registry name and its best.pt)")
        from dse.models import InvalidModelConfig, spec_from_name

        try:
            spec_from_name(args.model)
        except InvalidModelConfig as e:
            raise DeployError(str(e)) from e
        return [Candidate(model_name=args.model, checkpoint_path=args.checkpoint)]
    trials = store.trials(study=args.study)
    if args.trial:
        return sel.trials_by_number(trials, args.trial)
    cands = sel.candidates(trials[trials["status"] == "complete"] if len(trials) else trials)
    where = f"study {args.study!r}" if args.study else "the store"
    if not cands:
        studies = ", ".join(store.studies()) or "none"
        raise DeployError(f"no complete trial with a checkpoint in {where} ({store_url_hint(store)}; "
                          f"studies: {studies})")
    if args.max_size is not None:
        cands = sel.under_size(cands, sel.parse_size(args.max_size))
    if args.pareto:
        cands = sel.pareto_front(cands)
    if args.max_latency_ms is not None:
        fmt = "torchscript" if opts.runtime == "torchscript" else (
            "onnx_int8" if opts.component_model == "int8" else "onnx")
        probe = lambda c: _latency_probe(c, fmt, args.latency_stat, opts, store, bundle_for)  # noqa: E731
        if args.pareto:
            kept = [c for c in cands if probe(c) <= args.max_latency_ms]
            if not kept:
                raise DeployError(f"no Pareto-front trial meets the latency budget of "
                                  f"{args.max_latency_ms} ms")
            return kept
        winner, _ = sel.first_under_latency(cands, args.max_latency_ms, probe)
        return [winner]
    return cands if args.pareto else [sel.best(cands)]


def store_url_hint(store) -> str:
    from dse.store import redact

    return redact(store.url)


# ---------------------------------------------------------------------------------------- CLI
def parser() -> argparse.ArgumentParser:
    head, examples, commands = __doc__.split("\n\n")[:3]
    p = argparse.ArgumentParser(prog="python -m dse.deploy", description=head.split(": ", 1)[1],
                                epilog=examples.replace("::", ":") + "\n" + commands,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("which models")
    g.add_argument("--study", help="study name in the store (default: every study)")
    g.add_argument("--best", action="store_true",
                   help="the most accurate trial (validation accuracy; the default)")
    g.add_argument("--pareto", action="store_true",
                   help="every trial on the Pareto front of max validation accuracy vs min checkpoint bytes")
    g.add_argument("--max-size", metavar="SIZE",
                   help="best trial whose float32 checkpoint is at most SIZE: 272KB, 0.3MB, 2048 (bytes); "
                        "KB/MB = 1000/1000^2 bytes, KiB/MiB = 1024/1024^2")
    g.add_argument("--max-latency-ms", type=float, metavar="MS",
                   help="best trial whose latency (batch 1, 1 thread, the component's format) is at most MS; "
                        "candidates are tried in order of accuracy until one passes, each measured now unless "
                        "the store holds a measurement from this host")
    g.add_argument("--latency-stat", choices=("p50", "p99"), default="p99",
                   help="which latency --max-latency-ms bounds (default p99: a real-time budget)")
    g.add_argument("--trial", type=int, nargs="+", metavar="N",
                   help="these Optuna trial numbers (as optuna-dashboard and the tables show them; with --study "
                        "when several studies have the number)")
    g.add_argument("--model", help="a registry name, with --checkpoint: deploy a checkpoint not in the store")
    g.add_argument("--checkpoint", help="path of the model's best.pt (with --model)")
    o = p.add_argument_group("where")
    o.add_argument("--db", default=os.environ.get("DSE_STORAGE_URL", DEFAULT_URL),
                   help=f"results store URL (default: env DSE_STORAGE_URL or {DEFAULT_URL})")
    o.add_argument("--out", type=Path,
                   help="output folder (default results/deploy/<model>-t<Optuna trial number>/; several "
                        "models: <out>/<model>-t<N>/)")
    o.add_argument("--data-root",
                   help="dataset folder (default: the trial's data source, else env DSE_DATA_DIR)")
    o.add_argument("--no-record", action="store_true", help="do not write the measurements to the store")
    m = p.add_argument_group("what")
    m.add_argument("--test-images", type=int, default=10000, help="test images scored (default 10000)")
    m.add_argument("--calib-images", type=int, default=512, help="training images for int8 calibration")
    m.add_argument("--per-channel", choices=("auto", "on", "off"), default="auto",
                   help="int8 per-channel weight scales (auto: the variant agreeing more with fp32 on "
                        "validation images)")
    m.add_argument("--runtime", choices=("onnxruntime", "torchscript"), default="onnxruntime",
                   help="what the RTMaps component runs")
    m.add_argument("--component-model", choices=("fp32", "int8"), default="fp32",
                   help="which ONNX model the component embeds (onnxruntime runtime)")
    m.add_argument("--warmup", type=int, default=50, help="untimed runs before timing (default 50)")
    m.add_argument("--runs", type=int, default=500, help="timed batch-1 runs per format (default 500)")
    m.add_argument("--no-latency", action="store_true", help="skip the latency measurements")
    m.add_argument("--atol", type=float, default=1e-4, help="max |logit difference| exported vs PyTorch")
    m.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    m.add_argument("--force", action="store_true",
                   help=f"deploy a model even when its test accuracy is within {CHANCE_MARGIN_POINTS:g} points of "
                        "chance (refused otherwise: it did not learn)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return run(args)
    except DSEError as e:  # our own, expected failures: one line, no traceback
        msg = first_line(e)
        print(f"dse.deploy: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dse.deploy: interrupted", file=sys.stderr)
        return 130


def run(args) -> int:
    if args.test_images < 1 or args.calib_images < 1 or args.runs < 1 or args.warmup < 0:
        raise DeployError("--test-images, --calib-images and --runs must be >= 1, --warmup >= 0")
    if args.runtime == "torchscript" and args.component_model == "int8":
        raise DeployError("--component-model int8 needs --runtime onnxruntime (the int8 model is ONNX)")
    budget = args.max_latency_ms
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise DeployError(f"--max-latency-ms must be > 0, got {args.max_latency_ms}")
    opts = Options(out=Path(), test_images=args.test_images, calib_images=args.calib_images,
                   per_channel={"auto": "auto", "on": True, "off": False}[args.per_channel],
                   runtime=args.runtime,
                   component_model=args.component_model, warmup=args.warmup, runs=args.runs,
                   latency=not args.no_latency, atol=args.atol, opset=args.opset, force=args.force)
    adhoc = bool(args.model or args.checkpoint)
    store = None
    if not (adhoc and args.no_record):  # a bare checkpoint with --no-record needs no store at all
        from dse.store import Store, resolve_url

        # choosing trials reads the store: a missing one is an error, not a new empty store; an ad-hoc checkpoint
        # is recorded, so its store may be new
        store = Store(resolve_url(args.db), create=adhoc)
    bundles: dict[tuple, Any] = {}

    def bundle_for(c: Candidate):
        key = (c.dataset, args.data_root, c.data_source)
        if key not in bundles:
            bundles[key] = load_bundle(c.dataset, args.data_root, c.data_source)
        return bundles[key]

    chosen = select(args, store, opts, bundle_for)
    log.info("deploying %s", ", ".join(c.label for c in chosen))
    reports = []
    for c in chosen:
        if args.out is None:
            out = DEFAULT_OUT / c.label
        else:
            out = args.out if len(chosen) == 1 else args.out / c.label
        model, spec = load_checkpoint(c)
        opts.out = out
        reports.append(deploy_model(model, spec, c, bundle_for(c), opts,
                                    store=None if args.no_record else store))
    print(summary(reports))
    for rep in reports:
        print(f"{rep.model_name}: files in {rep.out}; RTMaps component {rep.component} "
              f"({rep.component_model}, {rep.runtime})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
