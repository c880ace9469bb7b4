"""The batch triple: global batch = micro batch x gradient accumulation x ranks.

How a run states it (`resolve_batch` fills the triple for the number of ranks it runs on):

- `train.global_batch: G` with `train.grad_accum: 0` (every shipped config): G sequences per
  optimizer step on any number of ranks. Each of the `world` ranks takes G / world of them per
  step, in micro-batches of the largest size <= `train.micro_batch` that divides G / world (the
  configured micro batch is what a device holds at most), over grad_accum = G / world / micro
  micro-steps. A run resumed on another number of ranks keeps G and re-derives the rest; the
  loader then slices the same global order anew (step s always trains samples
  [(s-1) G, s G)).
- `train.grad_accum: A > 0`: the triple as given; G, when set, must equal micro x A x world.
- neither: grad_accum 1 and G = micro x world.
"""
from __future__ import annotations

from pipeline.config.schema import TrainConfig
from pipeline.errors import UserError


def resolve_batch(t: TrainConfig, world: int) -> None:
    """Fill t.micro_batch / t.grad_accum / t.global_batch for `world` ranks, in place (the start
    line shows the result, e.g. "global batch 16 = 2 x 1 x 8 ranks"). UserError (one line,
    naming the field) when the numbers do not fit."""
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    if t.grad_accum > 0:
        product = t.micro_batch * t.grad_accum * world
        if t.global_batch not in (0, product):
            raise UserError(
                f"train.global_batch: {t.global_batch} != train.micro_batch ({t.micro_batch}) x "
                f"train.grad_accum ({t.grad_accum}) x ranks ({world}) = {product} (set "
                "train.grad_accum=0 to derive it from train.global_batch)")
        t.global_batch = product
        return
    if t.global_batch == 0:
        t.grad_accum, t.global_batch = 1, t.micro_batch * world
        return
    per_rank, rest = divmod(t.global_batch, world)
    if rest or per_rank == 0:
        raise UserError(f"train.global_batch: {t.global_batch} sequences do not split evenly over "
                        f"{world} ranks; use a multiple of {world}, or a number of ranks that "
                        f"divides {t.global_batch}")
    micro = max(d for d in range(1, min(t.micro_batch, per_rank) + 1) if per_rank % d == 0)
    t.micro_batch, t.grad_accum = micro, per_rank // micro


def pool_size(factor: float, global_batch: int, world: int) -> int:
    """lai.select.kind=oversample's candidates per step, P = factor x global_batch; ValueError
    (lai.select.factor) unless P is a whole multiple of `world`."""
    p = round(factor * global_batch)
    if abs(p - factor * global_batch) > 1e-9 or p % world:
        raise ValueError(f"lai.select.factor: {factor:g} x global batch {global_batch} = "
                         f"{factor * global_batch:g} candidates per step must be a whole "
                         f"multiple of the {world} rank(s)")
    return p
