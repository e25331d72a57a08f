"""The sliders notebook in a real front end: JupyterLab on 127.0.0.1 and headless Chromium (Playwright).

Runs every cell, switches RGB off and moves a degradation slider, and checks that the displayed
prediction and the sample's mIoU change each time; the screenshot goes to WORKBENCH_RUNS/browser/.
Skipped where Debian's /usr/bin/chromium is missing, except in CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from workbench.paths import REPO_ROOT, runs_dir

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
NOTEBOOK = "06_sliders.ipynb"


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run installs Debian's chromium (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} not found (install Debian's chromium to run the browser test)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status


def _smoke_copy(root: Path) -> Path:
    """A copy of the sliders notebook whose parameters cell says profile = "smoke"."""
    nb = nbformat.read(REPO_ROOT / "notebooks" / NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = re.sub(r'^profile = .*$', 'profile = "smoke"', cell.source, flags=re.M)
    dst = root / NOTEBOOK
    nbformat.write(nb, dst)
    return dst


@contextlib.contextmanager
def jupyterlab(root: Path):
    """JupyterLab serving `root` on a free local port with a token; shut down (kernels too) on exit."""
    from workbench.suite import ensure_kernel

    ensure_kernel()  # the python3 kernel is this interpreter (a private spec first on JUPYTER_PATH)
    token, port = secrets.token_hex(16), _free_port()
    state = root.parent / "jupyter-state"
    env = os.environ | {"JUPYTER_CONFIG_DIR": str(state / "config"), "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
                        "JUPYTERLAB_SETTINGS_DIR": str(state / "settings"),
                        "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log_path = state / "jupyterlab.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    notify = state / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notify.parent.mkdir(parents=True, exist_ok=True)
    notify.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))  # no news toast, no fetch
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
        try:
            deadline = time.monotonic() + 90
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                with contextlib.suppress(OSError):
                    if _get(f"{base}/api/status?token={token}") == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not answer in 90 s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            yield base, token, log_path
        finally:
            with contextlib.suppress(OSError):  # clean shutdown: kernels first, then the server
                req = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST",
                                             headers={"Authorization": f"token {token}"})
                urllib.request.urlopen(req, timeout=10).close()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)  # our own process group (start_new_session)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def _miou(page) -> str:
    return page.locator(".wb-miou").inner_text().strip()


def _prediction(page) -> bytes:
    """The prediction image's pixels as displayed (its blob URL changes on every update, so compare pixels)."""
    return page.locator(".wb-prediction").screenshot()


def _wait_for_change(page, before_miou: str, before_pred: bytes, what: str, timeout: float = 60.0) -> tuple[str, bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page.wait_for_timeout(300)
        miou, pred = _miou(page), _prediction(page)
        if miou != before_miou and pred != before_pred:
            return miou, pred
    raise AssertionError(f"after {what}: mIoU {before_miou!r} -> {_miou(page)!r}, prediction changed: "
                         f"{_prediction(page) != before_pred}; expected both to change")


@pytest.mark.slow
def test_sliders_notebook_in_jupyterlab(tmp_path):
    _require_chromium()
    from playwright.sync_api import sync_playwright

    root = tmp_path / "lab"
    root.mkdir()
    _smoke_copy(root)
    shots = runs_dir() / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    with jupyterlab(root) as (base, token, log_path), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        try:
            page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}", wait_until="domcontentloaded", timeout=90_000)
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=90_000)
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                                   " && window.jupyterapp.shell.currentWidget.sessionContext", timeout=60_000)
            page.evaluate("async () => { const w = window.jupyterapp.shell.currentWidget;"
                          " await w.sessionContext.ready; }")
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.wait_for_function(r"() => { const e = document.querySelector('.wb-miou');"
                                   r" return e && /mIoU: \d/.test(e.textContent); }", timeout=240_000)
            page.locator(".wb-miou").scroll_into_view_if_needed()
            miou0, pred0 = _miou(page), _prediction(page)

            page.locator(".wb-toggle-rgb").click()  # RGB off
            miou1, pred1 = _wait_for_change(page, miou0, pred0, "switching RGB off")

            track = page.locator(".wb-depth-noise .noUi-target")  # depth noise to ~80 % of its range
            box = track.bounding_box()
            track.click(position={"x": box["width"] * 0.8, "y": box["height"] / 2})
            miou2, _ = _wait_for_change(page, miou1, pred1, "moving the depth noise slider")
            readout = page.locator(".wb-depth-noise .widget-readout").inner_text()
            assert float(readout) > 0.5, f"the depth noise slider reads {readout}"
            assert "rgb off" in page.locator(".wb-info").inner_text()
            page.screenshot(path=str(shots / "sliders.png"), full_page=True)
            print(json.dumps({"miou": [miou0, miou1, miou2], "screenshot": str(shots / "sliders.png")}))
        except Exception:
            page.screenshot(path=str(shots / "sliders_failure.png"), full_page=True)
            print(f"JupyterLab log ({log_path}):\n{log_path.read_text()[-3000:]}")
            raise
        finally:
            browser.close()
