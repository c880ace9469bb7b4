"""lai.select.kind=oversample: each optimizer step draws a candidate pool of P = lai.select.factor x G
sequences (G: the global batch), scores them with a forward-only LAI pass (with LAI off: the
filter's scores, e.g. the oracle's, for a refill reference), and trains on the G best, so the
trained tokens per step do not change.

    pool = CandidatePool(selector, loader, comm, device, micro_batch, global_batch)
    drawn = pool.draw(step, engine)          # collective; then, per micro-step k of the step:
    batch = pool.batch(drawn, k)             # this rank's trained slice, values from the pool

Candidates: the next P samples of the loader's global order (`RankLoader.next_pool`), the same
whatever the rank split, so the loader state (P samples per step) resumes exactly. Scoring: in
global micro-batches of micro_batch x world (the last one smaller), rank r the r-th slice of
each, under no_grad; values and losses are gathered (one all-gather per chunk, stacked), so
every rank holds the pool's. Choice: the filter's FilterPolicy with a budget of exactly P - G
per step excludes the lowest values (ties: the earlier position first; a non-finite value counts
as the lowest), so the top G by value train; before lai.warmup_steps nothing is excluded and
the first G in pool order train. The trained ones, in pool order, form the step's grad_accum
global micro-batches (rank r: the r-th slice). The pool's time counts as LAI time in the step's
phases. Ledger: every candidate, trained (kept, by the rank that trains it) or not (by the rank
that scored it).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from pipeline.comm import Comm
from pipeline.config.batch import pool_size
from pipeline.lai.kernels.grads import per_sequence_loss
from pipeline.lai.selection.normalize import normalize
from pipeline.lai.selection.policy import FilterPolicy, FilterSettings


@dataclass
class Drawn:
    """One step's pool, identical on every rank (CPU tensors, pool order)."""
    seq_ids: torch.Tensor             # int64 [P]
    values: torch.Tensor              # float64 [P] LAI values
    value_norm: torch.Tensor          # float64 [P] z-score over the pool
    losses: torch.Tensor              # float32 [P] scoring forward's per-sequence loss
    chosen: torch.Tensor              # bool [P]: trained
    mine: torch.Tensor                # bool [P]: scored by this rank

    def rejected(self) -> dict[str, torch.Tensor]:
        """This rank's scored, untrained candidates: their ledger columns."""
        m = self.mine & ~self.chosen
        return {"seq_ids": self.seq_ids[m], "values": self.values[m],
                "value_norm": self.value_norm[m], "losses": self.losses[m]}


class CandidatePool:
    def __init__(self, selector, loader, comm: Comm, device: torch.device, micro_batch: int,
                 global_batch: int):
        settings = selector.settings
        self.loader, self.selector, self.comm, self.device = loader, selector, comm, device
        self.micro, self.g = micro_batch, global_batch
        self.p = pool_size(settings.select.factor, global_batch, comm.world)
        choice = FilterSettings(threshold=sys.float_info.max,
                                max_exclude_frac=(self.p - self.g) / self.p)   # keep the top G
        self.policy = FilterPolicy(choice, settings.warmup_steps)

    def _chunks(self) -> list[tuple[int, int]]:
        """(start, size per rank) of the pool's global micro-batches."""
        world, out, start = self.comm.world, [], 0
        while start < self.p:
            per_rank = min(self.micro, (self.p - start) // world)
            out.append((start, per_rank))
            start += per_rank * world
        return out

    @torch.no_grad()
    def draw(self, step: int, engine) -> Drawn:
        """Draw, score and choose step `step`'s (1-based) pool. Collective."""
        ids = torch.from_numpy(self.loader.next_pool(self.p))
        mine = torch.zeros(self.p, dtype=torch.bool)
        scored = []                                           # float64 [2, n]: values; losses
        for start, n in self._chunks():
            first = start + self.comm.rank * n
            mine[first:first + n] = True
            v, loss = self._score(step, engine, ids[first:first + n])
            scored += self.comm.gather(torch.stack([v, loss.double()]), same_shape=True)
        # chunk by chunk, each in rank order: that is pool order (float32 losses exact in float64)
        values, losses = torch.cat(scored, dim=1).cpu()
        losses = losses.float()
        finite = torch.nan_to_num(values, nan=-float("inf"))
        keep = self.policy.global_mask(finite, step - 1, budget=self.p - self.g)
        chosen = keep & (torch.cumsum(keep, 0) <= self.g)     # warmup: the first G
        return Drawn(ids, values, normalize(values, "zscore", Comm.local()), losses, chosen, mine)

    def _score(self, step: int, engine, seq_ids: torch.Tensor):
        """(values float64 [n], losses float32 [n]) of this rank's candidates `seq_ids`."""
        batch = self.loader.load(seq_ids.numpy())
        input_ids = batch["input_ids"].to(self.device, non_blocking=True)
        targets = batch["targets"].to(self.device, non_blocking=True)
        with self.selector.capture(engine.module) as cap:
            logits = engine(input_ids=input_ids).logits
        vocab = self.selector.vocab_request(cap, logits)     # folded by the loss, as in step
        losses = per_sequence_loss(logits, targets, vocab=vocab)
        sel = self.selector.select(step, cap, logits, targets, losses, batch["seq_ids"],
                                   input_ids=input_ids, model=engine.module, vocab=vocab)
        return sel.values.to(torch.float64), losses.float()

    def batch(self, drawn: Drawn, k: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(loader batch, pool positions int64 [micro]) of this rank's share of the step's k-th
        (0-based) trained global micro-batch."""
        trained = torch.nonzero(drawn.chosen).flatten()
        per_micro = self.micro * self.comm.world
        first = k * per_micro + self.comm.rank * self.micro
        pos = trained[first:first + self.micro]
        return self.loader.load(drawn.seq_ids[pos].numpy()), pos
