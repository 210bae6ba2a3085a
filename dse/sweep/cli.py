"""``python -m dse.sweep``: the Hydra application.

Hydra parses the command line (overrides, ``-m``, ``--cfg``, ``--info``, ``-h``, shell completion), composes
``conf/config.yaml`` with the dataclass schema and the experiments registered in the ConfigStore, makes the
run folder (``results/runs/<date_time>`` with ``.hydra/config.yaml`` and ``sweep.log``) and calls ``sweep``
once per job. Errors are one line on stderr (tracebacks with ``verbose=true``); the exit code says how the
run went: 0 done, 1 some trial failed, 2 could not run (configuration, data, device, disk, store), 130
interrupted.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dse.config import CONF_DIR, check, register_configs
from dse.errors import DSEError

log = logging.getLogger("dse.sweep")
_runs: list[int] = []  # the exit code of each job of this invocation (several with -m)


def interrupted_line(n: int | None) -> str:
    """What a stop by Ctrl-C/SIGINT/SIGTERM did: ``n`` running trials marked interrupted (None: before any
    worker started)."""
    if n is None:
        return "interrupted before any trial started; the next run carries on"
    if n == 0:
        return "interrupted: no trial was running; nothing finished is lost, the next run carries on"
    return (f"interrupted: {n} running trial{'s' * (n != 1)} marked 'interrupted'; the next run resumes "
            f"{'them' if n != 1 else 'it'} from {'their' if n != 1 else 'its'} last epoch checkpoint; nothing "
            "finished is lost")


def main(argv: list[str] | None = None) -> int:
    """The command line entry point; returns the exit code."""
    saved, root = list(sys.argv), logging.getLogger()
    handlers, level = list(root.handlers), root.level
    signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    if argv is not None:  # Hydra reads sys.argv
        sys.argv = [sys.argv[0] if sys.argv else "dse.sweep", *argv]
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # Hydra raises; we print one line instead of its report
    _runs.clear()
    try:
        refuse_url_password(sys.argv[1:])
        return _main()
    except DSEError as e:  # before Hydra writes a run folder: nothing of the secret is kept anywhere
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:  # called as a function (tests, notebooks): leave the caller's logging, argv and signals as they were
        sys.argv = saved
        for s, h in signals.items():
            if h is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(s, h)
        for h in root.handlers:
            if h not in handlers:
                h.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def _main() -> int:
    import hydra

    try:
        register_configs()
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
        app = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_job)
        app()
    except KeyboardInterrupt:
        print(f"\n{interrupted_line(None)}", file=sys.stderr)
        return 130
    except SystemExit as e:  # --help and friends
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    except Exception as e:  # noqa: BLE001 - composition errors: one line naming the key, value and allowed type
        print(f"error: {hydra_error_line(e)}", file=sys.stderr)
        if "verbose=true" in sys.argv:
            traceback.print_exc()
        return 2
    return max(_runs, default=0)


def refuse_url_password(argv: list[str]) -> None:
    """StoreError for a ``storage.url=`` override (also ``+``/``++``, and each value of a ``-m`` list) that has
    a password inside: Hydra would write it to the run folder's config.yaml, hydra.yaml and overrides.yaml."""
    from dse.store import password_refusal, url_password

    for arg in argv:
        key, _, value = arg.lstrip("+").partition("=")
        if key == "storage.url" and value:
            for url in (value, *value.split(",")):
                if url_password(url.strip("'\"")):
                    raise password_refusal(url.strip("'\""))


def scrub_run_folder(secret: str) -> None:
    """Replace ``secret`` by *** in every file Hydra wrote for this run (a URL with a password that came from a
    config file rather than the command line)."""
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    folders = [Path(hc.runtime.output_dir) / str(hc.output_subdir or ".hydra"), Path(hc.sweep.dir)]
    for f in (f for d in folders if d.is_dir() for f in d.glob("*.yaml")):
        text = f.read_text()
        if secret in text:
            f.write_text(text.replace(secret, "***"))


def hydra_error_line(e: BaseException) -> str:
    """One line from Hydra/OmegaConf's multi-line errors: the override, and what the schema expected."""
    import dataclasses

    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    head = " ".join(str(e).split("Config search path")[0].split())  # Hydra appends its search path
    cause = e.__cause__
    schema = getattr(cause, "object_type", None)
    if isinstance(cause, ConfigKeyError | ConfigAttributeError) and dataclasses.is_dataclass(schema):  # not in schema
        allowed = ", ".join(f.name for f in dataclasses.fields(schema))
        return f"unknown config key {cause.full_key!r}; allowed there: {allowed}"
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "msg", None):
        return f"{head}: {str(cause.msg).strip().splitlines()[0]}"
    if isinstance(e, DSEError):
        return str(e).strip().splitlines()[0]
    return head or type(e).__name__


def _job(cfg: DictConfig) -> int | None:
    """One Hydra job (one study). Never raises: the exit code goes to ``_runs`` and is returned (a SLURM job of
    the submitit launcher reports it to the submitting host: dse/sweep/cluster.py)."""
    if 130 in _runs:  # -m after Ctrl-C: do not start the next study
        return None
    _runs.append(sweep(cfg))
    return _runs[-1]


def sweep(cfg: DictConfig) -> int:
    from dse.sweep.stop import install_raise_once

    setup_logging(bool(cfg.verbose))
    # SIGTERM (SLURM preemption, kill) and Ctrl-C / kill -INT stop the sweep cleanly, also when it was started
    # with SIGINT ignored (a shell's background job inherits SIG_IGN, and Python then installs no
    # KeyboardInterrupt handler of its own)
    install_raise_once()
    try:
        refuse_config_password(cfg)
        check(cfg)
        from dse.sweep.plan import make_plan, print_dry_run  # imports torch (seconds): not for a bad value

        plan = make_plan(cfg, check_data=not cfg.dry_run)  # a dry run downloads nothing
        if cfg.dry_run:
            print_dry_run(plan, cfg)
            return 0
        if plan.mode == "grid" and not plan.runnable or plan.mode == "sample" and plan.missing_data:
            raise_no_data(plan)
        for line in plan.missing_data:
            log.warning("%s; skipping %s in this run", line, "them" if plan.trials else "it")
        url = store_url(cfg)
        return run_study(cfg, plan, url)
    except KeyboardInterrupt:  # planning, calibrating, opening the store: no trial of ours was running
        print(f"\n{interrupted_line(None)}", file=sys.stderr)
        return 130
    except DSEError as e:
        log.debug("%s", traceback.format_exc())
        print(f"error: {_first_line(e)}", file=sys.stderr)
        return 2


def refuse_config_password(cfg: DictConfig) -> None:
    """A password inside storage.url from a config file: scrubbed from the run folder, then refused."""
    from dse.store import password_refusal, url_password

    secret = url_password(cfg.storage.url)
    if secret:
        scrub_run_folder(secret)
        raise password_refusal(str(cfg.storage.url))


def raise_no_data(plan: Any) -> None:
    from dse.errors import EnvironmentFault

    raise EnvironmentFault(f"nothing to run for study {plan.name}: {'; '.join(plan.missing_data)}")


def store_url(cfg: DictConfig) -> str:
    from dse.store import resolve_url

    s = cfg.storage
    return resolve_url(s.url, url_env=s.url_env, password_env=s.password_env, password_file=s.password_file,
                       backend=s.backend)


def run_study(cfg: DictConfig, plan: Any, url: str) -> int:
    """Open the study, queue the plan, run the workers here (one in this process, or ``workers`` children)."""
    from dse import store as st
    from dse.sweep.tune import tune_study
    from dse.sweep.worker import Worker

    worker = Worker(cfg, plan, url)
    worker.open()
    new = worker.prepare()
    counts = worker.queue.counts()
    log.info("study %s in %s: %d newly queued; %s", plan.name, st.redact(url), new,
             ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "empty")
    if worker.queue.waiting():
        worker.preflight()  # a bad device or folder is said once, before any calibration or training
        tune_study(cfg, worker.queue, worker.base, worker.only)  # workers=auto, auto settings, the estimate
    if cfg.workers == "auto":  # nothing waits here: this process only waits for others' running trials
        cfg.workers = 1
    worker.base = OmegaConf.to_container(cfg, resolve=True)  # the threads just decided
    if int(cfg.workers) > 1:
        from hydra.core.hydra_config import HydraConfig

        from dse.sweep.launch import launch

        worker.preflight()  # what every child would find wrong, said once
        run_dir = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else None
        trained, failed, rc, errors, interrupted = launch(cfg, plan, url, run_dir)
    else:
        trained, failed, rc, errors, interrupted = run_worker(cfg, plan, url, prepared=True, worker=worker)
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    if rc == 130:
        print(f"\n{interrupted_line(interrupted)}", file=sys.stderr)
    if rc in (2, 130):  # its one line is the last thing printed
        return rc
    summary(worker.queue, url, trained, failed)
    return 1 if rc == 0 and failed else rc


def run_worker(cfg: DictConfig, plan: Any, url: str, prepared: bool = False, worker: Any = None
               ) -> tuple[int, int, int, list[str], int]:
    """One worker's loop: (trained, failed, exit code, error lines, trials marked interrupted). Used in this
    process and in each child of workers=N; the caller prints the error lines (the parent of several children
    prints each only once)."""
    from dse.sweep.worker import Worker

    try:
        if worker is None:
            worker = Worker(cfg, plan, url)
            worker.open()
            if not prepared:
                worker.prepare()
        worker.preflight()
        r = worker.run()
        return r.trained, r.failed, 0, [], r.interrupted
    except KeyboardInterrupt:
        return (*_counts(worker), 130, [], _result(worker).interrupted)
    except DSEError as e:
        log.debug("%s", traceback.format_exc())
        return (*_counts(worker), 2, [_first_line(e)], _result(worker).interrupted)


def _result(worker: Any) -> Any:
    from dse.sweep.worker import RunResult

    return getattr(worker, "result", None) or RunResult()


def _counts(worker: Any) -> tuple[int, int]:
    """(trained, failed) by this worker so far."""
    r = _result(worker)
    return r.trained, r.failed


def summary(queue: Any, url: str, trained: int, failed: int) -> None:
    """The one-line result of the run, then the study's best trial and front."""
    from dse import store as st
    from dse.common import pareto_front

    counts = queue.counts()
    print(f"\nstudy {queue.study}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) +
          f"; trained by this worker: {trained}" + (f"; failed in this run: {failed}" if failed else ""))
    df = queue.store.trials(queue.study, status=st.COMPLETE)
    if len(df):
        best = df.loc[df["best_val_acc"].idxmax()]
        front = pareto_front(df["best_val_acc"].tolist(), df["checkpoint_bytes"].tolist())
        print(f"best so far: {best['model_name']} seed {best['seed']}: val {best['best_val_acc']:.2f} %, test "
              f"{best['test_acc']:.2f} %, {best['checkpoint_bytes'] / 1e6:.3f} MB; Pareto front (val acc up, "
              f"checkpoint size down): {len(front)} trials")
    print(f"store: {st.redact(url)}  (tables: python -m dse.tables; dashboard: optuna-dashboard {st.redact(url)})")


def setup_logging(verbose: bool) -> None:
    """Hydra configured the handlers (conf/hydra/job_logging); here: the levels, and Optuna's logs go through
    ours once (its own handler off, warnings only)."""
    import optuna

    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(logging.DEBUG if verbose else logging.WARNING)


def setup_child_logging(cfg: DictConfig, index: int, run_dir: str | None) -> None:
    """A spawned worker: stderr with its index, and its own log file in the run folder."""
    fmt = f"%(asctime)s [w{index}] %(levelname)s %(name)s: %(message)s"
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir:
        handlers.append(logging.FileHandler(os.path.join(run_dir, f"worker-{index}.log")))
    logging.basicConfig(level=logging.INFO, format=fmt, datefmt="%H:%M:%S", handlers=handlers, force=True)
    setup_logging(bool(cfg.verbose))
    from dse.sweep.stop import install_raise_once

    install_raise_once()


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__
