"""`make demo` (workbench/demo.py): Voila culls the kernels of pages no longer open, and SIGINT or SIGTERM stop
it cleanly without a terminal; the classroom page shows no text about the notebook suite."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from workbench.paths import REPO_ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kernels(pid: int) -> list[int]:
    """Process ids of the ipykernel processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"ipykernel_launcher" in cmdline:
            found.append(int(entry.name))
    return found


def _wait(condition, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"{what} within {timeout:.0f} s; Voila's log:\n{log.read_text()[-3000:]}")


def _page(url: str, timeout: float) -> bytes:
    """The page's whole body (Voila streams it while the notebook runs), or an AssertionError after `timeout`."""
    deadline, body = time.monotonic() + timeout, b""
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.status == 200
        while chunk := r.read1(65536):
            body += chunk
            assert time.monotonic() < deadline, f"the page took more than {timeout:.0f} s: {body[-500:]!r}"
    return body


def _ignore_sigint():
    """As a shell without job control starts `make demo &`: SIGINT ignored, no terminal."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_demo_culls_idle_kernels_and_stops_cleanly_without_a_terminal(tmp_path, sig):
    from workbench.suite import KERNEL_NAME

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 6 * 7\nx")])
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3", "language": "python"}
    notebook = tmp_path / "page.ipynb"
    nbformat.write(nb, notebook)
    port, log_path = _free_port(), tmp_path / "demo.log"
    env = os.environ | {"JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"), "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "workbench.demo", "--no-prepare", "--notebook", str(notebook), "--port", str(port),
           "--cull-idle-timeout", "20", "--cull-interval", "2"]  # longer than a kernel's start on a busy machine
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=tmp_path, start_new_session=True, preexec_fn=_ignore_sigint)
    try:
        _wait(lambda: "running at" in log_path.read_text() or proc.poll() is not None, 90, "Voila did not start",
              log_path)
        assert proc.poll() is None, log_path.read_text()
        if sig == signal.SIGINT:  # culling once (it waits out the idle timeout); stopping by either signal
            for _ in range(2):  # two page loads (a health check is one), each starts a kernel
                assert b"42" in _page(f"http://127.0.0.1:{port}/", 120)
            assert len(_kernels(proc.pid)) == 2, "each page load started a kernel, kept after the page closed"
            _wait(lambda: not _kernels(proc.pid), 90, "the kernels of closed pages were not culled", log_path)
            assert "Culling 'idle' kernel" in log_path.read_text()
        assert b"42" in _page(f"http://127.0.0.1:{port}/", 120)  # one more, left running
        kernels = _kernels(proc.pid)
        assert kernels, "a page load starts a kernel"
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]
        _wait(lambda: not any(Path(f"/proc/{k}").exists() for k in kernels), 30, "its kernel outlived it", log_path)
        assert "Traceback" not in log_path.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # our own process group (start_new_session)
            proc.wait()


def test_the_classroom_page_shows_no_suite_text():
    """Voila shows the markdown cells and the outputs, not the code: no markdown cell of the classroom
    notebook may speak of the suite, the report or still images (that belongs in a code comment)."""
    nb = nbformat.read(REPO_ROOT / "notebooks" / "09_classroom.ipynb", as_version=4)
    shown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown").lower()
    for word in ("still images", "notebook suite", "papermill", "the report", "figures/"):
        assert word not in shown, word
