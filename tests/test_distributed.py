"""Two CPU processes (gloo), as `torchrun --nproc_per_node=2` would start them."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from workbench.config import apply_overrides, preset
from workbench.data import Collate, dataset_from_config
from workbench.distributed import DistContext, ShardSampler
from workbench.evaluate import evaluate_combinations
from workbench.models import load_model
from workbench.train import train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg():
    return apply_overrides(preset("tiny"), {"data.train_samples": 16, "data.val_samples": 6, "train.epochs": 2,
                                            "data.batch_size": 2, "train.device": "cpu"})


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    cfg = _cfg()
    import workbench.train as train_module

    made = []
    build = train_module.build_method
    train_module.build_method = lambda *a, **k: made.append(build(*a, **k)) or made[-1]
    train(cfg, os.path.join(out, "run"), progress=False)
    # every rank's own in-memory weights after training (DDP keeps parameters in sync; buffers are
    # rank 0's, broadcast after every epoch), not rank 0's checkpoint
    model = made[0].model.eval()
    ctx = DistContext.from_env("cpu")
    torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    ds = dataset_from_config(cfg.data, "val", augment=False)
    loader = DataLoader(ds, batch_size=2, sampler=ShardSampler(len(ds), rank, world), collate_fn=Collate(ds.modalities))
    sharded = evaluate_combinations(model, loader, progress=False, reduce_fn=ctx.all_reduce_sum,
                                    conditions=ds.conditions, cases=ds.cases)
    if rank == 0:
        torch.save({k: v for k, v in sharded.cms.items()}, os.path.join(out, "sharded.pt"))
    dist.barrier()
    dist.destroy_process_group()
    # leave without running C++ static destructors: on a busy machine a gloo/OpenMP worker thread still
    # joinable at interpreter exit aborted one process ("terminate called without an active exception")
    # after all of its work was written; the assertions below check that work
    os._exit(0)


@pytest.mark.slow
def test_two_process_training_keeps_ranks_identical_and_sharded_eval_is_exact(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the checkpoint written by rank 0 holds the same weights
    model = load_model(tmp_path / "run" / "final.pt")
    assert all(torch.equal(model.state_dict()[k], a[k]) for k in a)
    history = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "train/loss" in line]
    assert len(history) == 2 * (16 // 2 // 2)  # 2 epochs x (16 samples / 2 ranks / batch 2) steps
    cfg = _cfg()
    ds = dataset_from_config(cfg.data, "val", augment=False)
    single = evaluate_combinations(model, DataLoader(ds, batch_size=2, collate_fn=Collate(ds.modalities)),
                                   progress=False)
    sharded = torch.load(tmp_path / "sharded.pt")
    assert sharded.keys() == single.cms.keys()
    assert all(torch.equal(sharded[k], single.cms[k]) for k in sharded)


def _distill_worker(rank: int, world: int, port: int, out: str, teacher: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    cfg = apply_overrides(preset("robustseg", "tiny"), {"data.train_samples": 16, "data.val_samples": 4,
                                                        "train.epochs": 1, "data.batch_size": 2,
                                                        "train.device": "cpu"})
    import workbench.train as train_module

    made = []
    build = train_module.build_method
    train_module.build_method = lambda *a, **k: made.append(build(*a, **k)) or made[-1]
    train(cfg, os.path.join(out, "student"), progress=False, teacher_checkpoint=teacher)
    # this rank's own in-memory student and (feedback-updated) teacher, not rank 0's checkpoint
    method = made[0]
    torch.save({"student": method.model.state_dict(), "teacher": method.teacher.state_dict()},
               os.path.join(out, f"distill_rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    # leave without running C++ static destructors: on a busy machine a gloo/OpenMP worker thread still
    # joinable at interpreter exit aborted one process ("terminate called without an active exception")
    # after all of its work was written; the assertions below check that work
    os._exit(0)


@pytest.mark.slow
def test_two_process_distillation_with_feedback_keeps_student_and_teacher_in_sync(tmp_path):
    base = train(apply_overrides(preset("tiny"), {"data.train_samples": 16, "data.val_samples": 4,
                                                  "train.epochs": 1, "data.batch_size": 2}),
                 tmp_path / "teacher", progress=False)
    mp.spawn(_distill_worker, args=(2, _free_port(), str(tmp_path), str(base.checkpoint)), nprocs=2, join=True)
    a, b = torch.load(tmp_path / "distill_rank0.pt"), torch.load(tmp_path / "distill_rank1.pt")
    for part in ("student", "teacher"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    before = load_model(base.checkpoint).state_dict()
    assert any(not torch.equal(before[k], a["teacher"][k]) for k in before)  # feedback moved the teacher
