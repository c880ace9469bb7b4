"""The one way ranks talk to each other: collectives over an optional torch.distributed group.

    comm = Comm.resolve()            # the default group if torch.distributed is initialised,
                                     # else a world of one (every collective returns its input)
    parts = comm.gather(x)           # every rank's tensor, in rank order (shapes may differ)
    comm.all_reduce(x)               # in place, "sum" or "max"
    comm.any(flag, device)           # True on every rank if True on any

Tensors travel on their own device (gloo: CPU, NCCL: CUDA). No DeepSpeed here: the LAI math uses
this module too; pipeline.train.runtime starts the process group.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Comm:
    group: Any = None
    active: bool = False

    @staticmethod
    def local() -> Comm:
        """No communication: this process is the whole world."""
        return Comm()

    @staticmethod
    def resolve(group: Any = None) -> Comm:
        """`group` (a process group, or a Comm as it is) if given, else the default group when
        torch.distributed is initialised."""
        if isinstance(group, Comm):
            return group
        if group is not None:
            return Comm(group, True)
        if dist.is_available() and dist.is_initialized():
            return Comm(None, True)
        return Comm()

    @property
    def world(self) -> int:
        return dist.get_world_size(self.group) if self.active else 1

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group) if self.active else 0

    @property
    def _talks(self) -> bool:
        return self.active and self.world > 1

    def gather(self, x: torch.Tensor, *, same_shape: bool = False) -> list[torch.Tensor]:
        """All ranks' `x` in rank order. Ranks may differ in every dim (same ndim and dtype):
        shapes are exchanged first, tensors zero-padded to the max and sliced back.
        `same_shape=True` (the caller knows every rank's shape is x's) skips that exchange."""
        if not self._talks:
            return [x]
        x = x.contiguous()
        if same_shape:
            out = [torch.empty_like(x) for _ in range(self.world)]
            dist.all_gather(out, x, group=self.group)
            return out
        shape = torch.tensor(list(x.shape), dtype=torch.int64, device=x.device)
        shapes = [torch.empty_like(shape) for _ in range(self.world)]
        dist.all_gather(shapes, shape, group=self.group)
        shapes = [tuple(int(v) for v in s.tolist()) for s in shapes]
        top = tuple(max(s[d] for s in shapes) for d in range(x.dim()))
        padded = x.new_zeros(top)
        padded[tuple(slice(0, n) for n in x.shape)] = x
        out = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(out, padded, group=self.group)
        return [o[tuple(slice(0, n) for n in s)] for o, s in zip(out, shapes)]

    def all_reduce(self, x: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """`x` reduced over ranks ("sum" | "max"), in place; returns `x`."""
        if self._talks:
            dist.all_reduce(x, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX,
                            group=self.group)
        return x

    def any(self, flag: bool, device: torch.device | str = "cpu") -> bool:
        """True on every rank if `flag` is True on any rank."""
        return bool(self.all_reduce(torch.tensor([float(flag)], device=device), "max").item())

    def gather_objects(self, obj: Any) -> list:
        """Every rank's `obj` (picklable), in rank order, on every rank."""
        if not self._talks:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def barrier(self) -> None:
        if self._talks:
            dist.barrier(group=self.group)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (rendezvous for local runs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
