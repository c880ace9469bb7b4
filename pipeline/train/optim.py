"""The optimizer side of a step: LR schedule, the client AdamW DeepSpeed drives, and the gate
that skips a step's update on every rank together.

Skipping: the loop tells the SkipGate about non-finite losses (`observe`) while it runs the
micro-steps; when DeepSpeed calls the guarded optimizer at the boundary, the gate decides for all
ranks at once (one all-reduce: any rank's non-finite loss or gradient; under fsdp2 the engine's
global gradient norm already says it, so no second check). ZeRO 1-3 and bf16 skip overflowing
steps before the optimizer is called; `SkipGate.close` reads both kinds of skip.
A skipped step leaves weights and optimizer state as they were; DeepSpeed clears the gradients
as after any step.
"""
from __future__ import annotations

import math

import torch
from torch.distributed.tensor import DTensor

from pipeline.comm import Comm
from pipeline.config import TrainConfig


def lr_at(step: int, t: TrainConfig) -> float:
    """LR of optimizer step `step` (1-based): linear warmup to t.lr over t.warmup_steps, then
    cosine to t.min_lr at t.steps | constant | linear (straight to t.min_lr at t.steps; with
    min_lr 0 and no warmup: a linear decay to zero, for annealing with run.continue_from) |
    warmup-stable-decay (linear decay to t.min_lr over the last t.decay_frac of the steps)."""
    if step <= t.warmup_steps:
        return t.lr * step / max(1, t.warmup_steps)
    if t.schedule == "constant":
        return t.lr
    if t.schedule == "linear":
        span = max(1, t.steps - t.warmup_steps)
        return t.lr + (t.min_lr - t.lr) * min(1.0, (step - t.warmup_steps) / span)
    if t.schedule == "wsd":
        decay = max(1, round(t.decay_frac * t.steps))
        start = t.steps - decay
        if step <= start:
            return t.lr
        return t.lr + (t.min_lr - t.lr) * min(1.0, (step - start) / decay)
    span = max(1, t.steps - t.warmup_steps)
    progress = min(1.0, (step - t.warmup_steps) / span)
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * progress))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


class SkipGate:
    """Whether the current optimizer step's update is applied (see the module doc)."""

    def __init__(self, comm: Comm, device: torch.device):
        self.comm, self.device = comm, device
        self._bad_loss = False
        self._refused = False

    def observe(self, nonfinite_loss: bool) -> None:
        """A micro-step of this step had a non-finite loss on some rank."""
        self._bad_loss |= nonfinite_loss

    def allows(self, grads: list[torch.Tensor], grads_finite: bool | None = None) -> bool:
        """Called by the guarded optimizer on every rank: False on all ranks if any rank saw a
        non-finite loss this step or holds a non-finite gradient in `grads`. `grads_finite`:
        the engine's verdict, already the same on every rank (fsdp2: its global gradient norm
        is finite); then `grads` are not checked again and nothing is exchanged (the loss flag
        `observe` gets is global)."""
        if grads_finite is not None:
            self._refused = self._bad_loss or not grads_finite
            return not self._refused
        local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]   # fsdp2 shards
        finite = bool(torch.stack([torch.isfinite(g).all() for g in local]).all()) \
            if local else True                              # one device sync, not one per tensor
        self._refused = self.comm.any(self._bad_loss or not finite, self.device)
        return not self._refused

    def close(self, engine) -> bool:
        """After the boundary's engine.step(): True if the update was skipped (by us or by
        DeepSpeed's own overflow check); resets for the next step."""
        skipped = self._refused or not engine.was_step_applied()
        self._bad_loss = self._refused = False
        return skipped


class Guarded:
    """Mixin for the client optimizer: its step (called by every rank, by ZeRO on the fp32
    partitions) runs only if `gate` allows it."""
    gate: SkipGate
    param_groups: list[dict]                   # the optimizer's, after this class in the MRO

    @torch.no_grad()
    def step(self, *args, grads_finite: bool | None = None, **kwargs):
        """`grads_finite`: see SkipGate.allows (DeepSpeed calls step() without it)."""
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not self.gate.allows(grads, grads_finite):
            return None
        return super().step(*args, **kwargs)  # type: ignore[misc]  # a mixin: the optimizer has step


class GuardedAdamW(Guarded, torch.optim.AdamW):
    pass


def build_optimizer(model: torch.nn.Module, t: TrainConfig, gate: SkipGate,
                    offload: bool) -> torch.optim.Optimizer:
    """AdamW over `model` (weight decay on >= 2-D weights only), guarded by `gate`. torch's
    (fused on CUDA; over DTensors under train.backend=fsdp2); DeepSpeed's CPU Adam when
    DeepSpeed offloads optimizer states next to a GPU; fsdp2's offload steps on the host."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps)
    cuda = gate.device.type == "cuda"
    if offload and cuda and t.backend == "deepspeed":
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        cls = type("GuardedCPUAdam", (Guarded, DeepSpeedCPUAdam), {})
        opt = cls(groups, adamw_mode=True, **kw)
    else:
        opt = GuardedAdamW(groups, fused=cuda and not offload, **kw)
    opt.gate = gate
    return opt
