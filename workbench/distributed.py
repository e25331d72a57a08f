"""Multi-process training with `torchrun` (DistributedDataParallel): process group, samplers, reductions.

`torchrun --nproc_per_node=N -m workbench train ...` sets RANK/WORLD_SIZE/LOCAL_RANK; without them
everything here is a no-op on a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "auto") -> DistContext:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        ctx = cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            use_cuda = torch.cuda.is_available() and device != "cpu"
            if use_cuda:
                torch.cuda.set_device(ctx.local_rank)
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return ctx

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return t
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BN running statistics) to every rank: DDP broadcasts them only at the start
        of a forward, so after the last step each rank holds its own; evaluation needs one model."""
        if self.enabled:
            for b in module.buffers():
                dist.broadcast(b, 0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


class ShardSampler(Sampler[int]):
    """Evaluation shards: rank r takes indices r, r + W, ...; no padding, so nothing is counted twice."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class EpochSampler(Sampler[int]):
    """Training order: a permutation drawn from (seed, epoch), split across ranks (drop_last-style
    equal shards), so an interrupted and resumed run sees exactly the same batches."""

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.rank, self.world = n, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        per_rank = self.n // self.world
        return iter(perm[self.rank * per_rank:(self.rank + 1) * per_rank])

    def __len__(self) -> int:
        return self.n // self.world
