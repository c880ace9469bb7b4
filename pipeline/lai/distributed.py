"""Communication for LAI over an optional torch.distributed process group.

`Comm` hides whether we run single-process or inside a process group: `gather` returns the
list of every rank's tensor (shapes may differ between ranks; padding is handled here) and
`all_reduce_sum` sums in place. Works with gloo (CPU tensors) and NCCL (CUDA tensors).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Comm:
    group: Any = None
    active: bool = False

    @staticmethod
    def local() -> "Comm":
        """No communication: this process is the whole world."""
        return Comm()

    @staticmethod
    def resolve(group: Any = None) -> "Comm":
        """`group` if given, else the default group when torch.distributed is initialized."""
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

    def gather(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All ranks' `x` in rank order. Ranks may differ in every dim (same ndim and dtype):
        shapes are exchanged first, tensors are zero-padded to the max and sliced back."""
        if not self.active or self.world == 1:
            return [x]
        x = x.contiguous()
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

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of `x` over ranks (in place, also returned)."""
        if self.active and self.world > 1:
            dist.all_reduce(x, op=dist.ReduceOp.SUM, group=self.group)
        return x

    def offset_and_total(self, n_local: int, device: torch.device) -> tuple[int, int]:
        """(number of sequences on lower ranks, global number of sequences)."""
        counts = [int(c) for c in torch.cat(self.gather(
            torch.tensor([n_local], dtype=torch.int64, device=device))).tolist()]
        return sum(counts[: self.rank]), sum(counts)
