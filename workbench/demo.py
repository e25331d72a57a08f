"""`make demo`: the classroom page (notebooks/09_classroom.ipynb) served by Voila on 127.0.0.1 (README,
"The classroom app").

    python -m workbench.demo [--port 8866] [--notebook FILE] [--no-prepare]

First the page's runs are made ready (`workbench.sliders.prepare_classroom`: the cached quick runs, or a
reduced pair trained now), then Voila serves the notebook with the workbench's kernel spec. Two things
Voila does not do by itself:

- Idle kernels are culled. Every page load (a health check too) starts a kernel, which otherwise lives
  until the server stops; a kernel with no page connected and idle for `--cull-idle-timeout` seconds is
  shut down (jupyter_server's `MappingKernelManager.cull_*` settings). An open page keeps its kernel.
- SIGINT and SIGTERM stop the server cleanly (its kernels shut down, its connection files removed), also
  without a terminal: a shell that starts `make demo &` without job control ignores SIGINT in it, and
  Python then never installs its KeyboardInterrupt handler, so both signals get an explicit handler.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from workbench.paths import REPO_ROOT

log = logging.getLogger(__name__)

NOTEBOOK = REPO_ROOT / "notebooks" / "09_classroom.ipynb"
CULL_IDLE_TIMEOUT = 600  # seconds a kernel with no page connected may stay idle
CULL_INTERVAL = 60  # seconds between two checks for such kernels


def voila_argv(notebook: str | Path, port: int, cull_idle_timeout: int = CULL_IDLE_TIMEOUT,
               cull_interval: int = CULL_INTERVAL) -> list[str]:
    """Voila's command line for the page: local only, the given port or none, progressive rendering, and
    idle kernels culled."""
    return [str(notebook), "--no-browser", "--Voila.ip=127.0.0.1", f"--port={port}", "--Voila.port_retries=0",
            "--progressive_rendering=True",
            f"--MappingKernelManager.cull_idle_timeout={cull_idle_timeout}",
            f"--MappingKernelManager.cull_interval={cull_interval}",
            "--MappingKernelManager.cull_connected=False"]


def serve(argv: list[str]) -> int:
    """Run Voila with `argv` until SIGINT or SIGTERM, then stop it cleanly; returns 0."""
    from voila.app import Voila

    app = Voila()
    app.initialize(argv)

    def stop(signum, frame):
        log.info("stopping the classroom app (%s)", signal.Signals(signum).name)
        loop = getattr(app, "ioloop", None)
        if loop is None:  # not listening yet: nothing to shut down but the process
            raise SystemExit(0)
        loop.add_callback_from_signal(loop.stop)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)  # also where SIGINT arrives ignored (no terminal)
    app.start()  # returns once the loop has stopped and Voila has shut its kernels down
    return 0


def main(argv: list[str] | None = None) -> int:
    from workbench.logs import setup_logging

    p = argparse.ArgumentParser(prog="python -m workbench.demo", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8866, help="the local port (default 8866)")
    p.add_argument("--notebook", type=Path, default=NOTEBOOK, help="the notebook to serve")
    p.add_argument("--no-prepare", action="store_true", help="serve at once; the page makes its runs itself")
    p.add_argument("--cull-idle-timeout", type=int, default=CULL_IDLE_TIMEOUT,
                   help=f"seconds an idle kernel with no page connected lives (default {CULL_IDLE_TIMEOUT})")
    p.add_argument("--cull-interval", type=int, default=CULL_INTERVAL,
                   help=f"seconds between checks for idle kernels (default {CULL_INTERVAL})")
    args = p.parse_args(argv)
    setup_logging()
    from workbench.suite import ensure_kernel

    if not args.no_prepare:
        from workbench.sliders import prepare_classroom

        print("[make] runs:", prepare_classroom(), flush=True)
    ensure_kernel()  # the page's kernel is this interpreter (a private spec first on JUPYTER_PATH)
    print(f"[make] classroom app: http://127.0.0.1:{args.port}/ (open it in a browser; Ctrl-C stops it)", flush=True)
    return serve(voila_argv(args.notebook, args.port, args.cull_idle_timeout, args.cull_interval))


if __name__ == "__main__":
    sys.exit(main())
