"""Process group and rank helpers (data parallel only: one group, all ranks).

Works under `deepspeed --num_gpus N`, `torchrun --nproc_per_node N`, srun (via the launchers) and
as a single process without any launcher (world 1, no process group). NCCL on CUDA, gloo on CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def init(local_rank: int | None = None) -> DistInfo:
    """Initialise torch.distributed through DeepSpeed (a no-op if already initialised) and pick
    this rank's device. `local_rank`: from `--local_rank` (deepspeed launcher) or LOCAL_RANK."""
    import deepspeed

    if local_rank is None or local_rank < 0:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    else:
        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce kernel (~30 s) that only
        # its inference all-reduce uses; training talks gloo, so mark the op unavailable.
        from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder
        deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False
    if "RANK" not in os.environ:              # plain `python -m pipeline.train`: world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK=str(local_rank),
                          MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"),
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(free_port())))
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", auto_mpi_discovery=False,
                               verbose=False)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (rendezvous for local runs)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def all_reduce(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce over all ranks ("sum" | "max"); returns `x`. No-op without a group."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return x


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is True on any rank."""
    return bool(all_reduce(torch.tensor([float(flag)], device=device), "max").item())


def gather_objects(obj) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_tensors(x: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's `x` (same shape on all ranks), in rank order."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [x]
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return out


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown(engine=None, *, clean: bool = True) -> None:
    """Destroy the engine (DeepSpeed needs it before the group goes) and the process group.
    clean (every rank gets here together): a barrier first, so that no rank tears its connections
    down while a peer still uses them. clean=False (an error on this rank): no collective, which
    could wait forever for peers that are elsewhere."""
    if engine is not None:
        engine.destroy()
    if dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
