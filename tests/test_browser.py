"""The interactive notebooks in a real front end and headless Chromium (Playwright): the sliders notebook
(06) in JupyterLab and the classroom page (09) served by Voila, both on 127.0.0.1.

Each test switches RGB off and moves a degradation slider, and checks that the displayed predictions and
mIoU values change each time (06: RobustSeg's; 09: the baseline's and RobustSeg's); the screenshots go to
WORKBENCH_RUNS/browser/. Skipped where Debian's /usr/bin/chromium is missing, except in CI (CI=true),
where that is a failure. `python tests/test_browser.py classroom PROFILE PNG` drives the classroom page on
the runs in `runs/` (e.g. the quick profile after `make suite`) and saves its screenshot to PNG.
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
CLASSROOM = "09_classroom.ipynb"


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


def _smoke_copy(root: Path, name: str = NOTEBOOK, profile: str = "smoke") -> Path:
    """A copy of a notebook whose parameters cell says profile = `profile`."""
    nb = nbformat.read(REPO_ROOT / "notebooks" / name, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = re.sub(r'^profile = .*$', f'profile = "{profile}"', cell.source, flags=re.M)
    dst = root / name
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


def _miou(page, model: str = "robustseg") -> str:
    return page.locator(f".wb-miou-{model}").inner_text().strip()


def _prediction(page, model: str = "robustseg") -> bytes:
    """The prediction image's pixels as displayed (its blob URL changes on every update, so compare pixels)."""
    return page.locator(f".wb-prediction-{model}").screenshot()


def _shown(page, models) -> dict[str, tuple[str, bytes]]:
    return {m: (_miou(page, m), _prediction(page, m)) for m in models}


def _wait_for_change(page, before: dict[str, tuple[str, bytes]], what: str, timeout: float = 60.0):
    """Wait until every model's mIoU text and prediction differ from `before`; returns the new values."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page.wait_for_timeout(300)
        now = _shown(page, before)
        if all(now[m][0] != before[m][0] and now[m][1] != before[m][1] for m in before):
            return now
    now = _shown(page, before)
    changes = {m: (f"{before[m][0]!r} -> {now[m][0]!r}", now[m][1] != before[m][1]) for m in before}
    raise AssertionError(f"after {what}: (mIoU, prediction changed) per model {changes}; expected both to change "
                         f"for every model")


def _move_slider(page, css: str, fraction: float) -> float:
    track = page.locator(f"{css} .noUi-target")
    track.scroll_into_view_if_needed()
    box = track.bounding_box()
    track.click(position={"x": box["width"] * fraction, "y": box["height"] / 2})
    page.wait_for_timeout(200)
    return float(page.locator(f"{css} .widget-readout").inner_text())


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
            page.wait_for_function(r"() => { const e = document.querySelector('.wb-miou-robustseg');"
                                   r" return e && /mIoU: \d/.test(e.textContent); }", timeout=240_000)
            # the cells after the widget (static grid, predict) run on: wait until every cell has run
            page.wait_for_function("() => { const w = window.jupyterapp.shell.currentWidget;"
                                   " const cells = w.content.model.cells;"
                                   " for (let i = 0; i < cells.length; i++) { const c = cells.get(i);"
                                   "   if (c.type === 'code' && !c.executionCount) return false; }"
                                   " return w.sessionContext.session.kernel.status === 'idle'; }", timeout=240_000)
            page.locator(".wb-miou-robustseg").scroll_into_view_if_needed()
            page.wait_for_function(r"() => /mIoU: \d/.test(document.querySelector('.wb-miou-robustseg').innerText)",
                                   timeout=30_000)
            shown0 = _shown(page, ["robustseg"])

            page.locator(".wb-toggle-rgb").click()  # RGB off
            shown1 = _wait_for_change(page, shown0, "switching RGB off")

            level = _move_slider(page, ".wb-depth-level", 0.8)  # depth Gaussian noise to ~80 % of its range
            assert level > 0.5, f"the depth level slider reads {level}"
            shown2 = _wait_for_change(page, shown1, "moving the depth noise slider")
            assert "rgb off" in page.locator(".wb-info").inner_text()
            page.screenshot(path=str(shots / "sliders.png"), full_page=True)
            mious = [s["robustseg"][0] for s in (shown0, shown1, shown2)]
            print(json.dumps({"miou": mious, "screenshot": str(shots / "sliders.png")}))
        except Exception:
            page.screenshot(path=str(shots / "sliders_failure.png"), full_page=True)
            print(f"JupyterLab log ({log_path}):\n{log_path.read_text()[-3000:]}")
            raise
        finally:
            browser.close()


@contextlib.contextmanager
def voila(notebook: Path):
    """Voila serving `notebook` on a free local port, as `make demo` starts it; stopped on exit."""
    from workbench.suite import ensure_kernel

    ensure_kernel()  # the python3 kernel is this interpreter (a private spec first on JUPYTER_PATH)
    port = _free_port()
    cmd = [sys.executable, "-m", "voila", str(notebook), "--no-browser", "--Voila.ip=127.0.0.1", f"--port={port}",
           "--Voila.port_retries=0", "--progressive_rendering=True"]
    log_path = notebook.parent / "voila.log"
    env = os.environ | {"JUPYTER_CONFIG_DIR": str(notebook.parent / "jupyter-config")}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=notebook.parent,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 90
            while "Voil" not in log_path.read_text() or "running at" not in log_path.read_text():
                if proc.poll() is not None:
                    raise RuntimeError(f"Voila exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Voila did not start in 90 s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            yield f"http://127.0.0.1:{port}/", log_path
        finally:
            os.killpg(proc.pid, signal.SIGTERM)  # our own process group (start_new_session): Voila and its kernel
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _trim(png: Path, margin: int = 16) -> None:
    """Cut the blank rows below a page's content off a screenshot."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as im:
        a = np.asarray(im.convert("RGB"))
    rows = np.nonzero((a < 250).any(axis=(1, 2)))[0]
    if len(rows):
        Image.fromarray(a[:min(len(a), rows[-1] + margin)]).save(png)


def drive_classroom(root: Path, profile: str, screenshot: Path) -> dict:
    """Open the classroom page (a copy of notebook 09 at `profile`) in headless Chromium, switch RGB off,
    move the depth level slider, check that both models' predictions and mIoU values change each time,
    and save a screenshot of the page."""
    from playwright.sync_api import sync_playwright

    models = ("baseline", "robustseg")
    notebook = _smoke_copy(root, CLASSROOM, profile)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with voila(notebook) as (url, log_path), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(url, wait_until="domcontentloaded", timeout=240_000)
            page.wait_for_function(r"() => [...document.querySelectorAll('.wb-miou-baseline, .wb-miou-robustseg')]"
                                   r".filter(e => /mIoU: \d/.test(e.textContent)).length == 2", timeout=300_000)
            assert page.locator(".jp-CodeCell .jp-InputArea, .jp-InputArea-editor, .cm-editor").count() == 0
            assert "classroom_runs" not in page.inner_text("body"), "the page shows no code"
            body = page.inner_text("body")
            assert "Still images" not in body and "papermill" not in body, "the page shows no suite text"
            assert "classes:" in page.locator(".wb-legend").inner_text()
            shown0 = _shown(page, models)
            page.locator(".wb-toggle-rgb").click()  # RGB off
            shown1 = _wait_for_change(page, shown0, "switching RGB off")
            level = _move_slider(page, ".wb-depth-level", 0.8)  # depth Gaussian noise
            assert level > 0.5, f"the depth level slider reads {level}"
            shown2 = _wait_for_change(page, shown1, "moving the depth noise slider")
            assert "rgb off" in page.locator(".wb-info").inner_text()
            assert "Runs" in page.inner_text("body") and f"{profile} profile" in page.inner_text("body")
            page.set_viewport_size({"width": 1200, "height": 2400})  # Voila scrolls inside its page: show it all
            page.evaluate("() => window.scrollTo(0, 0)")
            page.wait_for_timeout(800)
            page.screenshot(path=str(screenshot), full_page=True)
            _trim(screenshot)
            return {m: [s[m][0] for s in (shown0, shown1, shown2)] for m in models} | {"screenshot": str(screenshot)}
        except Exception:
            page.screenshot(path=str(screenshot.with_name(screenshot.stem + "_failure.png")), full_page=True)
            print(f"Voila log ({log_path}):\n{log_path.read_text()[-3000:]}")
            raise
        finally:
            browser.close()


@pytest.mark.slow
def test_classroom_page_in_voila(tmp_path):
    _require_chromium()
    root = tmp_path / "voila"
    root.mkdir()
    result = drive_classroom(root, "smoke", runs_dir() / "browser" / "classroom.png")
    print(json.dumps(result))


if __name__ == "__main__":  # python tests/test_browser.py classroom PROFILE PNG
    import tempfile

    _, what, profile, png = sys.argv
    assert what == "classroom", "usage: python tests/test_browser.py classroom PROFILE PNG"
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(drive_classroom(Path(tmp), profile, Path(png).resolve())))
