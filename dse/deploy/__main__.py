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
import logging
import math
import os
import sys
from pathlib import Path

from dse.deploy import DeployError
from dse.deploy.chance import CHANCE_MARGIN_POINTS
from dse.deploy.choose import from_store
from dse.deploy.fit import load_target
from dse.deploy.inputs import bundle_cache, load_checkpoint, pick_test_images
from dse.deploy.options import Options
from dse.deploy.pipeline import DEFAULT_OUT, deploy_all, deploy_model
from dse.deploy.report import DeployReport, FormatResult, summary
from dse.deploy.select import Candidate
from dse.errors import DSEError, first_line
from dse.store import DEFAULT_URL

log = logging.getLogger("dse.deploy")


def parser() -> argparse.ArgumentParser:
    """The command line: which models, where the files go, what is measured."""
    head, examples, commands = __doc__.split("\n\n")[:3]
    p = argparse.ArgumentParser(prog="python -m dse.deploy", description=head.split(": ", 1)[1],
                                epilog=examples.replace("::", ":") + "\n" + commands,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _which_models(p.add_argument_group("which models"))
    o = p.add_argument_group("where")
    o.add_argument("--db", default=os.environ.get("DSE_STORAGE_URL", DEFAULT_URL),
                   help=f"results store URL (default: env DSE_STORAGE_URL or {DEFAULT_URL})")
    o.add_argument("--out", type=Path,
                   help="output folder (default results/deploy/<model>-t<Optuna trial number>/; several "
                        "models: <out>/<model>-t<N>/)")
    o.add_argument("--data-root",
                   help="dataset folder (default: the trial's data source, else env DSE_DATA_DIR)")
    o.add_argument("--no-record", action="store_true", help="do not write the measurements to the store")
    _what(p.add_argument_group("what"))
    return p


def _which_models(g) -> None:
    """The selection flags: a study's best, its Pareto front, a size or latency budget, trials, a checkpoint."""
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


def _what(m) -> None:
    """The measurement flags: test and calibration images, int8, the component, latency, tolerances."""
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
    m.add_argument("--target", metavar="NAME",
                   help="check each deployed model against a target's budgets (dse/conf/target/NAME.yaml: host, "
                        "mcu, arm_board): its file, peak RAM and measured latency")
    m.add_argument("--atol", type=float, default=1e-4, help="max |logit difference| exported vs PyTorch")
    m.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    m.add_argument("--force", action="store_true",
                   help=f"deploy a model even when its test accuracy is within {CHANCE_MARGIN_POINTS:g} points of "
                        "chance (refused otherwise: it did not learn)")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; 2 with one line on stderr for an expected error, 130 when interrupted."""
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


def _options(args) -> Options:
    """The pipeline's options from the parsed arguments; DeployError for a value out of range."""
    if args.test_images < 1 or args.calib_images < 1 or args.runs < 1 or args.warmup < 0:
        raise DeployError("--test-images, --calib-images and --runs must be >= 1, --warmup >= 0")
    if args.runtime == "torchscript" and args.component_model == "int8":
        raise DeployError("--component-model int8 needs --runtime onnxruntime (the int8 model is ONNX)")
    budget = args.max_latency_ms
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise DeployError(f"--max-latency-ms must be > 0, got {args.max_latency_ms}")
    return Options(out=Path(), test_images=args.test_images, calib_images=args.calib_images,
                   per_channel={"auto": "auto", "on": True, "off": False}[args.per_channel],
                   runtime=args.runtime,
                   component_model=args.component_model, warmup=args.warmup, runs=args.runs,
                   latency=not args.no_latency, atol=args.atol, opset=args.opset, force=args.force,
                   target=load_target(args.target) if args.target else None)


def _open_store(args):
    """The results store, or None for a bare checkpoint with --no-record (which needs no store at all)."""
    adhoc = bool(args.model or args.checkpoint)
    if adhoc and args.no_record:
        return None
    from dse.store import Store, resolve_url

    # choosing trials reads the store: a missing one is an error, not a new empty store; an ad-hoc checkpoint
    # is recorded, so its store may be new
    return Store(resolve_url(args.db), create=adhoc)


def _check_selection(args) -> None:
    """DeployError for selection flags that do not combine, or a --model/--checkpoint that cannot be used."""
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


def run(args) -> int:
    """Check the arguments, choose the models, deploy each, print the table and where the files are."""
    opts = _options(args)
    store = _open_store(args)
    _check_selection(args)
    bundle_for = bundle_cache(args.data_root)
    if args.model or args.checkpoint:
        chosen = [Candidate(model_name=args.model, checkpoint_path=args.checkpoint)]
    else:
        chosen = from_store(store, opts, bundle_for, study=args.study, trials=args.trial, pareto=args.pareto,
                            max_size=args.max_size, max_latency_ms=args.max_latency_ms,
                            latency_stat=args.latency_stat)
    log.info("deploying %s", ", ".join(c.label for c in chosen))
    reports = deploy_all(chosen, args.out, opts, bundle_for, store=None if args.no_record else store)
    print(summary(reports))
    for rep in reports:
        print(f"{rep.model_name}: files in {rep.out}; RTMaps component {rep.component} "
              f"({rep.component_model}, {rep.runtime})")
    return 0


# the names tests and callers import from here, now defined in the pipeline's modules
__all__ = ["DEFAULT_OUT", "DeployReport", "FormatResult", "Options", "deploy_model", "load_checkpoint", "main",
           "parser", "pick_test_images", "run", "summary"]

if __name__ == "__main__":
    sys.exit(main())
