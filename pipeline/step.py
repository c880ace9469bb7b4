"""One optimizer step's parts: LR schedule, the skip-guarded client optimizer, which sequences to
keep (LAI or a baseline filter), and the masked, globally normalised loss.

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
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from pipeline import dist
from pipeline.config import LAIConfig, TrainConfig


# ---------------------------------------------------------------- LR schedule

def lr_at(step: int, t: TrainConfig) -> float:
    """LR of optimizer step `step` (1-based): linear warmup to t.lr over t.warmup_steps, then
    cosine to t.min_lr at t.steps | constant | warmup-stable-decay (linear decay to t.min_lr over
    the last t.decay_frac of the steps)."""
    if step <= t.warmup_steps:
        return t.lr * step / max(1, t.warmup_steps)
    if t.schedule == "constant":
        return t.lr
    if t.schedule == "wsd":
        decay = max(1, round(t.decay_frac * t.steps))
        start = t.steps - decay
        if step <= start:
            return t.lr
        return t.lr + (t.min_lr - t.lr) * min(1.0, (step - start) / decay)
    span = max(1, t.steps - t.warmup_steps)
    progress = min(1.0, (step - t.warmup_steps) / span)
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------- client optimizer

class SkipGuard:
    """Mixin for the client optimizer DeepSpeed drives. Its `step` (called by every rank, also by
    ZeRO on the fp32 partitions) is skipped on all ranks when `skip` was set by the loop (a
    non-finite loss on some rank) or when any rank holds a non-finite gradient. ZeRO 1-3 and bf16
    already skip overflowing steps before calling us; this also covers ZeRO 0 in fp32 and
    non-finite losses with finite gradients. Skipping leaves weights and optimizer state as they
    were; DeepSpeed clears the gradients as after any step."""

    skip: bool = False
    comm_device: torch.device = torch.device("cpu")
    calls: int = 0
    last_skipped: bool = False

    @torch.no_grad()
    def step(self, *args, **kwargs):
        self.calls += 1
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        finite = bool(torch.stack([torch.isfinite(x).all() for x in grads]).all()) \
            if grads else True                              # one device sync, not one per tensor
        self.last_skipped = dist.any_rank(self.skip or not finite, self.comm_device)
        if self.last_skipped:
            return None
        return super().step(*args, **kwargs)


class GuardedAdamW(SkipGuard, torch.optim.AdamW):
    pass


def build_optimizer(model: torch.nn.Module, t: TrainConfig, device: torch.device,
                    offload: bool) -> torch.optim.Optimizer:
    """AdamW over `model` (weight decay on >= 2-D weights only). torch's (fused on CUDA);
    DeepSpeed's CPU Adam when optimizer states are offloaded next to a GPU."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)
    if offload and device.type == "cuda":
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        cls = type("GuardedCPUAdam", (SkipGuard, DeepSpeedCPUAdam), {})
        opt = cls(groups, adamw_mode=True, **kw)
    else:
        opt = GuardedAdamW(groups, fused=device.type == "cuda" and not offload, **kw)
    opt.comm_device = device
    return opt


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


# ---------------------------------------------------------------- keep decisions

class Selector:
    """Values and keep mask of a micro-batch.

    lai.enabled: LAI values (LAIScorer) of every sequence, logged to the ledger.
    lai.filter:  lai    -> FilterPolicy(threshold, warmup, cap) on the LAI values;
                 none   -> keep all;
                 random -> exclude each sequence with probability baseline_rate (a coin per
                           seq_id and run.seed, whichever rank holds it);
                 loss   -> exclude the baseline_rate fraction of highest losses of the global
                           micro-batch (self-paced-learning style);
                 full_gradient -> FilterPolicy(threshold, warmup, cap) on the exact full-gradient
                           inner product (pipeline.lai.full_gradient_values) of each sequence with
                           the rest of the global micro-batch (j left out unless include_self):
                           an upper reference for evaluating LAI on small models, not a
                           production filter (every rank computes B_global per-sample gradients
                           of the whole model; needs the full parameters, so no ZeRO-3).
    The baselines go through a FilterPolicy(threshold=0) too: same warmup, same cap, never a whole
    global micro-batch. The ledger value is the LAI value when LAI is enabled, else the filter's
    score (the full-gradient value for full_gradient, NaN for none)."""

    def __init__(self, lai_cfg: LAIConfig, seed: int):
        self.cfg, self.seed = lai_cfg, seed
        self.scorer = None
        if lai_cfg.enabled:
            from pipeline.lai import DEFAULT_PAIRING, LAIScorer
            self.scorer = LAIScorer(
                pairing=DEFAULT_PAIRING if lai_cfg.pairing == "default" else lai_cfg.pairing,
                method=lai_cfg.method, layers=lai_cfg.layers, reference=lai_cfg.reference,
                include_self=lai_cfg.include_self,
                sketch_dim=(lai_cfg.sketch_dim or None) if lai_cfg.method == "sketch" else None,
                seed=seed, compile=None if lai_cfg.compile else False)
        from pipeline.lai import FilterPolicy
        c = lai_cfg
        threshold = c.threshold if c.filter in ("lai", "full_gradient") else 0.0
        self.policy = FilterPolicy(threshold=threshold, warmup_steps=c.warmup_steps,
                                   max_exclude_frac=c.max_exclude_frac)

    def capture(self, model: torch.nn.Module):
        """Context for the forward: records layer inputs when LAI is on."""
        if self.scorer is None:
            return nullcontext()
        from pipeline.lai import LayerInputCapture
        return LayerInputCapture(model, self.scorer.layers)

    @torch.no_grad()
    def select(self, step: int, cap, logits: torch.Tensor, targets: torch.Tensor,
               losses: torch.Tensor, seq_ids: torch.Tensor, *,
               input_ids: torch.Tensor | None = None, model: torch.nn.Module | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(values float64 [B], keep bool [B]) for optimizer step `step` (1-based). Collective:
        every rank calls it with its own micro-batch. `input_ids` [B, T] and the (unwrapped)
        `model` are needed by filter=full_gradient only; the model is left as found."""
        c = self.cfg
        values = None
        if self.scorer is not None:
            values = self.scorer.values(cap.inputs, logits, targets)
        if c.filter == "none":
            keep = torch.ones_like(losses, dtype=torch.bool)
        else:
            if c.filter == "lai":
                score = values
            elif c.filter == "full_gradient":
                score = self._full_gradient(model, input_ids, targets)
            elif c.filter == "random":
                u = [np.random.default_rng([self.seed, int(i)]).random() for i in seq_ids.tolist()]
                score = torch.tensor(u, dtype=torch.float64, device=losses.device) - c.baseline_rate
            else:
                all_losses = torch.cat(dist.gather_tensors(losses.detach().double()))
                k = round(c.baseline_rate * all_losses.numel())
                kth = torch.topk(all_losses, k).values[-1] if k else math.inf
                score = kth - losses.detach().double()    # <= 0 for the k highest losses
            # a non-finite score comes from non-finite logits, whose step is skipped anyway
            # (masked_loss flags it); the policy needs finite values to decide on the others
            finite = torch.nan_to_num(score, nan=0.0, posinf=0.0, neginf=0.0)
            keep = self.policy.mask(finite, step - 1)   # policy steps are 0-based
            if values is None:
                values = score
        if values is None:
            values = torch.full_like(losses, float("nan"), dtype=torch.float64)
        return values.detach(), keep

    def _full_gradient(self, model, input_ids, targets) -> torch.Tensor:
        """float64 [B]: full_gradient_values of this rank's sequences against the global
        micro-batch (all ranks' sequences gathered; local batches are equal-sized). Every rank
        computes the whole global batch, so the model must hold its full parameters."""
        if model is None or input_ids is None:
            raise ValueError("lai.filter=full_gradient: select() needs input_ids= and model=")
        bad = bool((targets == -100).any()) or not torch.equal(input_ids[:, 1:], targets[:, :-1])
        if dist.any_rank(bad, input_ids.device):        # raised on every rank together
            from pipeline.errors import UserError
            raise UserError("lai.filter: full_gradient scores whole sequences whose targets are "
                            "the inputs shifted by one; a batch has ignored (-100) or other "
                            "targets")
        # the seq_len + 1 token sample: HF shifts inside (labels=None), all seq_len targets count
        x = torch.cat(dist.gather_tensors(torch.cat([input_ids[:, :1], targets], 1)))
        from pipeline.lai import full_gradient_values
        values = full_gradient_values(model, x, include_self=self.cfg.include_self)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        b = input_ids.shape[0]
        return values[rank * b:(rank + 1) * b]

    def needs_val_reference(self) -> bool:
        return self.scorer is not None and self.cfg.reference == "val"

    def refresh_val_reference(self, model, batches) -> None:
        self.scorer.set_val_reference(model, batches)

    def state_dict(self) -> dict:
        return {"scorer": self.scorer.state_dict() if self.scorer is not None else None}

    def load_state_dict(self, d: dict) -> None:
        if self.scorer is not None and d.get("scorer") is not None:
            self.scorer.load_state_dict(d["scorer"])


# ---------------------------------------------------------------- masked loss

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

    @property
    def loss(self) -> float:          # token mean over all sequences
        return self.loss_sum / max(self.tokens, 1.0)

    @property
    def kept_loss(self) -> float:     # token mean over kept sequences (what is trained)
        return self.kept_loss_sum / max(self.kept_tokens, 1.0)


def masked_loss(losses: torch.Tensor, n_tokens: torch.Tensor, keep: torch.Tensor,
                world: int) -> tuple[torch.Tensor, MicroStats]:
    """The loss rank r hands to engine.backward (see the module doc) and the micro-step's global
    sums. `losses` [B] differentiable per-sequence mean losses, `n_tokens` [B] valid targets,
    `keep` bool [B]. Collective (one all_reduce of 7 numbers)."""
    n = n_tokens.to(losses.dtype)
    weighted = torch.where(keep, losses * n, torch.zeros_like(losses))
    finite = torch.isfinite(losses.detach())
    local = torch.stack([
        (n * keep).sum().double(),
        n.sum().double(),
        weighted.detach().sum().double(),
        torch.where(finite, losses.detach() * n, torch.zeros_like(n)).sum().double(),
        (~finite).any().double(),
        keep.sum().double(),
        torch.tensor(float(keep.numel()), dtype=torch.float64, device=losses.device),
    ])
    g = dist.all_reduce(local).tolist()
    stats = MicroStats(kept_tokens=g[0], tokens=g[1], kept_loss_sum=g[2], loss_sum=g[3],
                       nonfinite=g[4] > 0, kept_seqs=g[5], seqs=g[6])
    loss = weighted.sum() / max(g[0], 1.0) * world
    return loss, stats
