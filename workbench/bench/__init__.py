"""Benchmarks (`python -m workbench bench NAME`): each times the workbench's way against the naive way
in one run and prints the ratio, then one JSON line. Each module exposes `add_arguments` and `run`."""

BENCHES = {
    "combos": "workbench.bench.combos",  # one-pass all-combination evaluation vs one forward per combination
    "losses": "workbench.bench.losses",  # vectorized HPD losses vs loop references
    "step": "workbench.bench.step",  # a RobustSeg training step vs a baseline step
    "contention": "workbench.bench.contention",  # the training step beside a busy process, sleeping vs spinning
    "repro": "workbench.bench.repro",  # the training step with the math libraries' code paths pinned vs default
    "train": "workbench.bench.train",  # the quick baseline step's FLOP rate against the machine's matmul
    "gpu": "workbench.bench.gpu",  # the step part by part on one device, per profile (MFU, peak memory, compile)
    "suite": "workbench.bench.suite",  # the cold notebook suite's wall time by part
}
