"""``python -m dse.sweep``: the Hydra application.

Hydra parses the command line (overrides, ``-m``, ``--cfg``, ``--info``, ``-h``, shell completion), composes
``dse/conf/config.yaml`` with the dataclass schema and the experiments registered in the ConfigStore, makes the
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
from dse.errors import DSEError, first_line
from dse.sweep.stop import interrupted_line

log = logging.getLogger("dse.sweep")
_runs: list[int] = []  # the exit code of each job of this invocation (several with -m)


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
        register_configs([a for a in sys.argv[1:] if not a.startswith("-")])
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
        return f"{head}: {first_line(str(cause.msg))}"
    if isinstance(e, DSEError):
        return first_line(e)
    return head or type(e).__name__


def _job(cfg: DictConfig) -> int | None:
    """One Hydra job (one study). Never raises: the exit code goes to ``_runs`` and is returned (a SLURM job of
    the submitit launcher reports it to the submitting host: dse/sweep/cluster.py)."""
    if 130 in _runs:  # -m after Ctrl-C: do not start the next study
        return None
    _runs.append(sweep(cfg))
    return _runs[-1]


def sweep(cfg: DictConfig) -> int:
    from dse.sweep.runner import setup_logging
    from dse.sweep.stop import install_raise_once

    setup_logging(bool(cfg.verbose))
    # SIGTERM (SLURM preemption, kill) and Ctrl-C / kill -INT stop the sweep cleanly, also when it was started
    # with SIGINT ignored (a shell's background job inherits SIG_IGN, and Python then installs no
    # KeyboardInterrupt handler of its own)
    install_raise_once()
    try:
        refuse_config_password(cfg)
        check(cfg)
        from dse.sweep.plan import make_plan  # imports torch (seconds): not for a bad value

        plan = make_plan(cfg, check_data=not cfg.dry_run)  # a dry run downloads nothing
        if cfg.dry_run:
            from dse.sweep.dryrun import print_dry_run
            from dse.sweep.tune import CachedEstimates

            print_dry_run(plan, cfg, CachedEstimates(OmegaConf.to_container(cfg, resolve=True)))
            return 0
        if plan.mode == "grid" and not plan.runnable or plan.mode == "sample" and plan.missing_data:
            raise_no_data(plan)
        for line in plan.missing_data:
            log.warning("%s; skipping %s in this run", line, "them" if plan.trials else "it")
        url = store_url(cfg)
        from dse.sweep.study import run_study

        return run_study(cfg, plan, url)
    except KeyboardInterrupt:  # planning, calibrating, opening the store: no trial of ours was running
        print(f"\n{interrupted_line(None)}", file=sys.stderr)
        return 130
    except DSEError as e:
        log.debug("%s", traceback.format_exc())
        print(f"error: {first_line(e)}", file=sys.stderr)
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
