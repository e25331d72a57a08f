"""Numerical determinism of CPU runs: the same bits on a busy machine, and, with `WORKBENCH_REPRO=1`, the
same bits on another machine (docs/RELIABILITY.md, the two "same bits" rows; README, "Reproducibility").

Always (`apply_environment`, called by `workbench/__init__.py` before torch is imported, and
`configure_torch` once torch is loaded): no dynamic thread adjustment. GNU OpenMP with OMP_DYNAMIC=true
sizes each parallel team from the 15-minute load average (cores minus load), so on a loaded machine a
"2-thread" run silently runs 1-thread teams, and the ops whose reduction order follows the team size
(LayerNorm's weight gradients, oneDNN convolutions) change their bits as the load average drifts; oneDNN's
1x1-convolution weight gradient even waits forever for a thread the smaller team does not have. MKL's
MKL_DYNAMIC (on by default) may likewise use fewer threads than asked for. Both are switched off:
OMP_DYNAMIC=FALSE and MKL_DYNAMIC=FALSE, the settings MKL's reproducibility conditions ask for.

With `WORKBENCH_REPRO=1` (`make suite REPRO=1`, `make test REPRO=1`): every library that picks a code
path from the CPU it runs on is pinned to the AVX2 level through its documented switch, so any x86-64
CPU with AVX2 (Intel or AMD) takes the same paths:

- ATen's kernels: ATEN_CPU_CAPABILITY=avx2 (an AVX-512 machine would otherwise use its avx512 kernels);
- oneDNN (convolutions): ONEDNN_MAX_CPU_ISA=AVX2;
- MKL (matrix products): MKL_CBWR=COMPATIBLE, its conditional numerical reproducibility mode. MKL's
  AVX2 branch is honoured on Intel CPUs only (on others MKL falls back to AUTO, whose result may
  differ), so the one branch that is the same on Intel and AMD is COMPATIBLE;
- numpy (the synthetic data): NPY_DISABLE_CPU_FEATURES switches off its AVX-512 dispatch targets (numpy
  2's names; names it does not know are ignored);
- a fixed thread count, `REPRO_THREADS` (OMP_NUM_THREADS, MKL_NUM_THREADS, torch.set_num_threads):
  reductions split work by thread, so the bits depend on it;
- torch.use_deterministic_algorithms(True): an op without a deterministic implementation raises
  instead of drifting (none of the workbench's CPU ops does), and CUBLAS_WORKSPACE_CONFIG is set for
  CUDA's deterministic cuBLAS.

The environment must be set before torch (and numpy) initialise these libraries; `workbench` does it on
import, and the suite's kernels and every subprocess inherit it. `configure_torch` checks that it held.
The mode is recorded in each run's run_info.json (`mode()`), and runs made in the two modes never share a
cache entry (`cache_folder_name`): REPRO changes the numbers, not the config.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

ENV_FLAG = "WORKBENCH_REPRO"
REPRO_THREADS = 2  # the suite's thread count (workbench.suite.THREADS): the committed figures use it
# always: no team shrinks with the load average, no library picks fewer threads on its own
ALWAYS = {"OMP_DYNAMIC": "FALSE", "MKL_DYNAMIC": "FALSE"}
# WORKBENCH_REPRO=1: the code paths of any x86-64 CPU with AVX2, at a fixed thread count
PINNED = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "COMPATIBLE",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    "OMP_NUM_THREADS": str(REPRO_THREADS),
    "MKL_NUM_THREADS": str(REPRO_THREADS),
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
}
# what a run records of its environment (the switches above, whoever set them)
RECORDED = ("OMP_DYNAMIC", "MKL_DYNAMIC", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR",
            "NPY_DISABLE_CPU_FEATURES", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def enabled() -> bool:
    """Whether this process runs in the reproducibility mode (WORKBENCH_REPRO=1)."""
    value = os.environ.get(ENV_FLAG, "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


def environment(repro: bool | None = None) -> dict[str, str]:
    """The environment variables the workbench sets: `ALWAYS`, and `PINNED` in the reproducibility mode
    (`repro`; default: this process's mode). For a subprocess: `{**os.environ, **environment(True)}`
    with WORKBENCH_REPRO=1 in it."""
    return {**ALWAYS, **(PINNED if (enabled() if repro is None else repro) else {})}


_late: list[str] = []  # variables apply_environment changed after torch had loaded (too late for it)


def apply_environment() -> None:
    """Set `environment()` in os.environ; before torch and numpy are imported (workbench/__init__.py).
    The values replace any the user set: they are what the workbench's guarantees rest on."""
    env = environment()
    if "torch" in sys.modules:
        _late[:] = sorted(k for k, v in env.items() if os.environ.get(k) != v)
    os.environ.update(env)


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loaded(name: str) -> str | None:
    """The path of a shared library already loaded into this process whose file name contains `name`."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(" ", 1)[-1].strip()
                if name in os.path.basename(path):
                    return path
    except OSError:
        pass
    return None


def _dynamic_off() -> None:
    """Switch dynamic thread adjustment off in the loaded OpenMP and MKL runtimes, for the case where torch
    was imported before the workbench could set OMP_DYNAMIC / MKL_DYNAMIC (they are read when the
    libraries load). OpenMP's setting is per thread: this is the calling (main) thread's, the one that
    trains and evaluates (CPU autograd runs on the caller's thread)."""
    for lib_name, setter, getter in (("libgomp", "omp_set_dynamic", "omp_get_dynamic"),
                                     ("libtorch_cpu", "MKL_Set_Dynamic", None)):
        path = _loaded(lib_name)
        if path is None:
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if hasattr(lib, setter) and (getter is None or getattr(lib, getter)() != 0):
            getattr(lib, setter).argtypes = [ctypes.c_int]
            getattr(lib, setter)(0)


def omp_dynamic() -> bool | None:
    """Whether GNU OpenMP's dynamic adjustment is on for this thread (None: no libgomp loaded)."""
    path = _loaded("libgomp")
    if path is None:
        return None
    return bool(ctypes.CDLL(path).omp_get_dynamic())


def configure_torch() -> None:
    """Once torch is loaded (`workbench.models` calls this on import): dynamic thread adjustment off; in
    the reproducibility mode, the thread count and deterministic algorithms, after checking that the
    pinned code paths took effect (a ConfigError says how to start the process if they did not)."""
    import torch

    from workbench.errors import ConfigError

    _dynamic_off()
    if not enabled():
        return
    if _late:
        raise ConfigError(f"{ENV_FLAG}=1: torch was imported before the workbench could set {', '.join(_late)}, "
                          f"which the math libraries read when they load; import workbench before torch (the suite's "
                          f"kernels do), or export workbench.repro.environment(True) before Python starts")
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "AVX2":
        why = ("this CPU has no AVX2" if not torch.cpu._is_avx2_supported() else
               f"torch was loaded before {ENV_FLAG}=1 could set ATEN_CPU_CAPABILITY=avx2")
        raise ConfigError(f"{ENV_FLAG}=1 pins the AVX2 code paths, but torch uses {capability} ({why}); set "
                          f"{ENV_FLAG}=1 in the environment before Python starts (make ... REPRO=1), import "
                          f"workbench before torch, or run without {ENV_FLAG} on a CPU without AVX2")
    torch.set_num_threads(REPRO_THREADS)
    torch.use_deterministic_algorithms(True)


def mode_name() -> str:
    """`repro` (WORKBENCH_REPRO=1) or `default`."""
    return "repro" if enabled() else "default"


def check_resume(recorded: dict | None, path) -> None:
    """A run resumes in the numerical mode it started in (`recorded`: its run_info's "numerics"; runs made
    before the mode was recorded are `default`): the other mode's bits would mix into its weights."""
    from workbench.errors import CheckpointError

    started = (recorded or {}).get("mode", "default")
    if started != mode_name():
        flag = f"{ENV_FLAG}=1" if started == "repro" else f"{ENV_FLAG} unset"
        raise CheckpointError(f"{path} was trained in the {started} numerical mode and this process runs in the "
                              f"{mode_name()} mode; resume it with {flag} (or train it again with --force)")


def mode() -> dict:
    """This process's numerical mode, as recorded in run_info.json ("numerics")."""
    torch = sys.modules.get("torch")
    out = {"mode": mode_name(), "cpu": cpu_model(), "machine": platform.machine(),
           "env": {k: os.environ.get(k) for k in RECORDED}}
    if torch is not None:
        out |= {"threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                "omp_dynamic": omp_dynamic()}
    return out


def cache_folder_name() -> str:
    """The run cache's folder under runs/: `cache`, or `cache-repro` in the reproducibility mode. The mode
    changes the trained bits but not the config, so it is kept out of Config.hash (config hashes stay
    comparable across modes and machines) and in the folder instead."""
    return "cache-repro" if enabled() else "cache"
