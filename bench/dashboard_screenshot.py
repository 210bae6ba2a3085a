"""Screenshots of optuna-dashboard in headless Chromium: what a user sees of a study (not a test).

Starts ``optuna-dashboard <storage>`` on a free local port, waits for its API, and has the Chromium command line
(``chromium --headless --screenshot``) render three pages to PNG: the study list, the study's page (history,
Pareto view when the study has two objectives) and one trial's page (its intermediate values: the learning
curve). Look at the PNGs; a script cannot judge a page. Needs the ``chromium`` binary (Debian: ``apt-get install
chromium``) and the dashboard from this project's environment.

    python bench/dashboard_screenshot.py --storage sqlite:///results/dse.db
    python bench/dashboard_screenshot.py --storage sqlite:///results/dse.db --study cpu-quick --trial 3

Exit status 1 with one line when the storage, the study, Chromium or the dashboard is missing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
START_TIMEOUT_S = 60.0  # the dashboard's first answer (imports + opening the storage)
RENDER_BUDGET_MS = 15_000  # virtual time Chromium lets the page's scripts run before the screenshot


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def wait_for(url: str, proc: subprocess.Popen) -> dict:
    """The JSON at ``url`` once the dashboard answers; SystemExit when it dies or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: optuna-dashboard exited with status {proc.returncode} before answering")
        try:
            return get_json(url)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    sys.exit(f"error: optuna-dashboard did not answer {url} within {START_TIMEOUT_S:.0f} s")


def screenshot(browser: str, url: str, path: Path, size: str) -> None:
    # --no-sandbox: Chromium refuses to run as root with its sandbox (containers, CI)
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={size}",
           f"--virtual-time-budget={RENDER_BUDGET_MS}", f"--screenshot={path}", url]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if res.returncode != 0 or not path.exists():
        sys.exit(f"error: {browser} could not screenshot {url}: {res.stderr.strip().splitlines()[-1:]}")
    print(f"{path} <- {url} ({path.stat().st_size:,} bytes)")


def pick(studies: list[dict], name: str | None) -> dict:
    """The named study, or the first; SystemExit naming the known ones."""
    names = [s["study_name"] for s in studies]
    if not studies:
        sys.exit("error: the storage has no Optuna study; run `python -m dse.sweep` first")
    if name is not None and name not in names:
        sys.exit(f"error: unknown study {name!r}; the storage has: {', '.join(names)}")
    return next(s for s in studies if name is None or s["study_name"] == name)


def first_complete(base: str, study_id: int) -> int | None:
    detail = get_json(f"{base}/api/studies/{study_id}")
    done = [t["number"] for t in detail.get("trials", []) if t.get("state") == "Complete"]
    return min(done) if done else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n")[1])
    ap.add_argument("--storage", required=True, metavar="URL", help="the Optuna/dse storage URL")
    ap.add_argument("--study", help="study name (default: the first in the storage)")
    ap.add_argument("--trial", type=int, metavar="N", help="Optuna trial number (default: the first complete)")
    ap.add_argument("--out", type=Path, default=Path("results") / "dashboard", help="PNG folder")
    ap.add_argument("--width", type=int, default=1400, help="window width in pixels (heights: per page)")
    args = ap.parse_args(argv)
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        sys.exit(f"error: no Chromium found (looked for {', '.join(BROWSERS)}); e.g. apt-get install chromium")
    dashboard = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) or \
        shutil.which("optuna-dashboard")
    if dashboard is None:
        sys.exit("error: optuna-dashboard is not installed in this environment (pip install optuna-dashboard)")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([dashboard, args.storage, "--port", str(port), "--host", "127.0.0.1", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        studies = wait_for(f"{base}/api/studies", proc)["study_summaries"]
        study = pick(studies, args.study)
        sid = study["study_id"]
        number = first_complete(base, sid) if args.trial is None else args.trial
        args.out.mkdir(parents=True, exist_ok=True)
        # heights in pixels: the study page stacks history, Pareto front, importances and timeline
        pages = [("studies", f"{base}/dashboard", 1000), ("study", f"{base}/dashboard/studies/{sid}", 2600)]
        if number is not None:
            pages.append((f"trial-{number}", f"{base}/dashboard/studies/{sid}/trials?numbers={number}", 1300))
        else:
            print(f"note: study {study['study_name']} has no complete trial: no trial page")
        for name, url, height in pages:
            screenshot(browser, url, args.out / f"{name}.png", f"{args.width},{height}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
