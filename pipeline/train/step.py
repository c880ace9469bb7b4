"""One optimizer step, top to bottom: `grad_accum` micro-steps, each

    batch -> forward (layer inputs captured) -> per-sequence losses -> values and keep mask
          -> masked, globally normalised loss -> backward -> engine.step

where DeepSpeed's step applies the update at the accumulation boundary, unless the SkipGate
skips it on every rank (a non-finite loss or gradient on any rank).

The masked loss (per micro-step m, all ranks r, sequences j with n_j valid target tokens,
per-sequence mean loss l_j, keep mask k_j):

    K_m      = sum_{r, j} k_j n_j                    (all_reduce: kept target tokens of micro-step m)
    loss_r   = world * sum_{j on r} k_j n_j l_j / K_m   (what rank r hands to engine.backward)

DeepSpeed averages gradients over the `world` ranks and scales each micro-step by 1/grad_accum, so
the optimizer step sees

    G = (1/A) sum_{m=1..A} grad( sum_{kept j in m, all ranks} sum_t ce_{j,t} / K_m )

the mean over the A micro-steps of the gradient of each micro-step's kept-token mean loss. With
A = 1 this is exactly the gradient of training on only the kept sequences (the token mean over
them). With A > 1 each micro-step is normalised by its own kept tokens, as plain DeepSpeed
training normalises each micro-step by its own tokens; normalising by the kept tokens of the whole
step would need the keep decisions of micro-steps that have not run their forward yet. The two
agree when every micro-step keeps the same number of tokens (e.g. no filtering, packed data).
Dropped sequences contribute exactly zero gradient (their terms are selected away, not multiplied
by zero, so even a non-finite dropped loss cannot leak into the loss value).

lai.weighting (pipeline.lai.selection.weighting) gives sequence j a raw weight w_j; then n_j becomes w_j n_j
in both sums: loss_r = world * sum_{j on r} k_j w_j n_j l_j / W_m, W_m = sum_{r, j} k_j w_j n_j,
the weighted token mean over the kept sequences. Sequence j's tokens then weigh w_j K_m / W_m
against an unweighted token (the ledger's `weight`; 1 kept, 0 dropped without weighting), and
these weights average exactly 1 over the micro-step's kept tokens.

lai.unit=document (pipeline.lai.kernels.units): every j above is a document unit of a packed row instead
of the row (n_j its target count, l_j its mean loss), so a dropped document's tokens leave the
loss and the rest of its row trains; the sums are unchanged.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from pipeline.comm import Comm
from pipeline.lai.kernels.grads import per_sequence_loss, per_unit_loss
from pipeline.lai.kernels.units import units_of
from pipeline.lai.selection.selector import Selector
from pipeline.lai.selection.weighting import sequence_weights
from pipeline.train import faults
from pipeline.train.optim import SkipGate, lr_at, set_lr
from pipeline.train.runtime import PhaseClock


@dataclass
class MicroStats:
    """Global (all-rank) sums of one micro-step, identical on every rank."""
    kept_tokens: float
    tokens: float
    kept_loss_sum: float      # sum over kept sequences of n_j l_j
    loss_sum: float           # sum over all sequences of n_j l_j (finite ones)
    nonfinite: bool
    kept_seqs: float
    seqs: float
    weighted_tokens: float    # W: sum over kept sequences of w_j n_j (= kept_tokens unweighted)

    @property
    def loss(self) -> float:          # token mean over all sequences
        return self.loss_sum / max(self.tokens, 1.0)

    @property
    def kept_loss(self) -> float:     # token mean over kept sequences (what is trained)
        return self.kept_loss_sum / max(self.kept_tokens, 1.0)


def masked_loss(losses: torch.Tensor, n_tokens: torch.Tensor, keep: torch.Tensor,
                comm: Comm, weights: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, MicroStats]:
    """The loss rank r hands to engine.backward (see the module doc) and the micro-step's global
    sums. `losses` [B] differentiable per-sequence mean losses, `n_tokens` [B] valid targets,
    `keep` bool [B], `weights` [B] raw loss weights (None: all 1). Collective over `comm` (one
    all_reduce of 8 numbers)."""
    n = n_tokens.to(losses.dtype)
    w = n if weights is None else n * weights.to(losses.device, losses.dtype)
    zero = torch.zeros_like(losses)
    weighted = torch.where(keep, losses * w, zero)
    kept_sum = weighted if weights is None else torch.where(keep, losses * n, zero)
    finite = torch.isfinite(losses.detach())
    local = torch.stack([
        (n * keep).sum().double(),
        n.sum().double(),
        kept_sum.detach().sum().double(),
        torch.where(finite, losses.detach() * n, torch.zeros_like(n)).sum().double(),
        (~finite).any().double(),
        keep.sum().double(),
        torch.tensor(float(keep.numel()), dtype=torch.float64, device=losses.device),
        (w.detach() * keep).sum().double(),
    ])
    g = comm.all_reduce(local).tolist()
    stats = MicroStats(kept_tokens=g[0], tokens=g[1], kept_loss_sum=g[2], loss_sum=g[3],
                       nonfinite=g[4] > 0, kept_seqs=g[5], seqs=g[6], weighted_tokens=g[7])
    loss = weighted.sum() / (g[7] if g[7] > 0 else 1.0) * comm.world
    return loss, stats


def token_weights(keep: torch.Tensor, weights: torch.Tensor | None, stats: MicroStats
                  ) -> torch.Tensor:
    """float64 [B]: each sequence's token weight in the trained loss against an unweighted kept
    token (w_j K / W; 1 kept, 0 dropped without weighting): the ledger's `weight`."""
    kept = keep.to(torch.float64)
    if weights is None:
        return kept
    return kept * weights.to(torch.float64) * (stats.kept_tokens / max(stats.weighted_tokens,
                                                                       1e-300))


@dataclass
class Micro:
    """What one micro-step leaves for the ledger and the logs (this rank's sequences)."""
    seq_ids: torch.Tensor
    values: torch.Tensor              # float64 [B]
    value_norm: torch.Tensor          # float64 [B], z-score in the global micro-batch
    keep: torch.Tensor                # bool [B]
    weight: torch.Tensor              # float64 [B]: token weight in the loss (token_weights)
    losses: torch.Tensor              # [B], detached
    stats: MicroStats                 # global sums
    clock: PhaseClock                 # marks: data, forward, LAI, backward + step
    rank_tokens: int
    segments: torch.Tensor | None = None   # lai.unit=document: int64, each unit's document run
                                           # (the fields above are then per unit)


@dataclass
class StepResult:
    step: int
    lr: float
    grad_norm: float
    skipped: bool
    micros: list[Micro] = field(default_factory=list)
    rejected: dict | None = None      # lai.select: this rank's untrained candidates
    pool_clock: PhaseClock | None = None   # lai.select: the pool's draw, as LAI time

    @property
    def tokens(self) -> int:          # target tokens of the step, all ranks
        return int(sum(m.stats.tokens for m in self.micros))


class StepRunner:
    """Runs optimizer steps on the parts a step touches. Collective: every rank runs each step.
    `own_grad_norm`: DeepSpeed keeps no gradient norm (ZeRO 0 in fp32), so measure it here."""

    def __init__(self, engine, optimizer, gate: SkipGate, selector: Selector, loader, comm: Comm,
                 device: torch.device, train_cfg, own_grad_norm: bool, pool=None):
        """`pool`: lai.select's CandidatePool (pipeline.train.pool), None: train what the
        loader yields."""
        self.engine, self.optimizer, self.gate = engine, optimizer, gate
        self.pool = pool
        self.selector, self.loader, self.comm, self.device = selector, loader, comm, device
        self.t, self.own_grad_norm = train_cfg, own_grad_norm
        self.nan_steps = faults.nonfinite_loss_steps()       # tests only (pipeline.train.faults)

    def step(self, step: int) -> StepResult:
        """Optimizer step `step` (1-based): LR, val reference, the micro-steps, the update."""
        lr = lr_at(step, self.t)
        set_lr(self.optimizer, lr)
        self.selector.refresh(step, self.engine.module)
        out = StepResult(step, lr, float("nan"), False)
        drawn = self._draw(step, out) if self.pool is not None else None
        for k in range(self.t.grad_accum):
            out.micros.append(self._micro_step(step, out, drawn, k))
        out.rejected = drawn.rejected() if drawn is not None else None
        out.skipped = self.gate.close(self.engine)
        if not self.own_grad_norm:
            gn = self.engine.get_global_grad_norm()
            out.grad_norm = float(gn) if gn is not None else float("nan")
        return out

    def _draw(self, step: int, out: StepResult):
        """lai.select: the step's candidate pool; its time counts as the phase LAI (the clock's
        data, forward and backward + step phases stay empty)."""
        out.pool_clock = clock = PhaseClock(self.device)
        for _ in range(3):
            clock.mark()
        drawn = self.pool.draw(step, self.engine)
        clock.mark()
        clock.mark()
        return drawn

    def _micro_step(self, step: int, out: StepResult, drawn, k: int) -> Micro:
        engine, dev = self.engine, self.device
        clock = PhaseClock(dev)
        clock.mark()
        batch, pos = (self.loader.next_batch(), None) if drawn is None \
            else self.pool.batch(drawn, k)                # pinned host memory on CUDA: async
        input_ids = batch["input_ids"].to(dev, non_blocking=True)
        targets = batch["targets"].to(dev, non_blocking=True)
        clock.mark()
        units = units_of(batch["segments"].to(dev), targets) if "segments" in batch else None
        with self.selector.capture(engine.module) if drawn is None else nullcontext() as cap:
            logits = engine(input_ids=input_ids).logits
        # the loss's pass over the logits also folds the LAI sketch's vocabulary side
        vocab = self.selector.vocab_request(cap, logits) if drawn is None else None
        losses = per_sequence_loss(logits, targets, vocab=vocab) if units is None else \
            per_unit_loss(logits, targets, units, vocab=vocab)
        if step in self.nan_steps:
            losses = faults.poison(losses, self.comm.rank)
        clock.mark()
        if drawn is None:
            values, keep, value_norm = self.selector.select(
                step, cap, logits, targets, losses, batch["seq_ids"], input_ids=input_ids,
                model=engine.module, units=units, vocab=vocab)
        else:                                             # chosen and scored by the pool
            values, value_norm = drawn.values[pos], drawn.value_norm[pos]
            keep = torch.ones_like(losses, dtype=torch.bool)
        clock.mark()
        n_tokens = (targets != -100).sum(1) if units is None else units.tokens
        weights = sequence_weights(value_norm, self.selector.settings.weighting)
        loss, stats = masked_loss(losses, n_tokens, keep, self.comm, weights)
        self.gate.observe(stats.nonfinite)
        del cap, logits
        engine.backward(loss)
        if self.own_grad_norm and engine.is_gradient_accumulation_boundary():
            grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
            out.grad_norm = float(torch.nn.utils.get_total_norm(grads))
        engine.step()
        clock.mark()
        seq_ids, segments = (batch["seq_ids"], None) if units is None else \
            (batch["seq_ids"][units.rows.cpu()], units.segment.cpu())
        return Micro(seq_ids, values, value_norm, keep,
                     token_weights(keep.cpu(), None if weights is None else weights.cpu(), stats),
                     losses.detach(), stats, clock, int(n_tokens.sum()), segments)
