"""The engine interface: what the trainer asks of a backend (train.backend), and nothing more.

    engine, optimizer = build(cfg, info, model, make_optimizer)   # DeepSpeed's, or FSDPEngine

Both backends implement these calls with DeepSpeed's names and meaning (DeepSpeed's engine
natively; pipeline.train.fsdp.FSDPEngine over torch's fully_shard):
  engine.module                              the model (hooks, LAI capture, HF config)
  engine.optimizer                           the optimizer it drives
  engine(input_ids=...)                      forward
  engine.backward(loss)                      backward of loss / grad_accum, gradients averaged
                                             over the ranks
  engine.is_gradient_accumulation_boundary() whether the next step() applies the update
  engine.step()                              end of a micro-step; at the boundary: clip, the
                                             guarded optimizer step, gradients cleared
  engine.get_global_grad_norm()              the last boundary's gradient norm (or None)
  engine.was_step_applied()                  False if the engine itself skipped the update
  engine.train() / engine.eval()
  engine.save_checkpoint(dir, tag, client_state, save_latest)    collective
  engine.load_checkpoint(dir, tag, ...) -> (path, client_state)  collective
  engine.destroy()                           before the process group goes
Sharding, precision, the optimizer's placement, gradient clipping and checkpoint files are the
backend's; data, LAI, mixing, the ledger, metrics and the train state are the trainer's. The
DeepSpeed backend's JSON is derived from the config here (`ds_config`).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from pipeline.config import Config
from pipeline.config.validate import ZERO_COMM, zero_comm
from pipeline.train.runtime import DistInfo


def is_fsdp(engine) -> bool:
    from pipeline.train.fsdp import FSDPEngine
    return isinstance(engine, FSDPEngine)


def build(cfg: Config, info: DistInfo, model: torch.nn.Module,
          make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer], *,
          load_universal: bool = False) -> tuple[Any, torch.optim.Optimizer]:
    """(the engine of `cfg.train.backend` over `model`, the client optimizer it drives).
    `model`: fp32, on the host, the same on every rank; `make_optimizer(module)` builds the
    optimizer over the parameters the engine trains (the sharded ones under fsdp2).
    Collective."""
    t = cfg.train
    if t.backend == "fsdp2":
        from pipeline.train.fsdp import FSDPEngine, shard
        module = shard(model, t, info.device)
        optimizer = make_optimizer(module)
        return FSDPEngine(module, optimizer, t), optimizer
    import deepspeed

    optimizer = make_optimizer(model)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer,
        config=ds_config(cfg, info.world, info.device.type == "cuda",
                         load_universal=load_universal))
    return engine, optimizer


def ds_config(cfg: Config, world: int, cuda: bool, *, load_universal: bool = False
              ) -> dict[str, Any]:
    """The DeepSpeed JSON. No optimizer/scheduler sections: the client AdamW is built by the
    trainer and the LR schedule (ours) sets its lr every step."""
    t = cfg.train
    zero: dict[str, Any] = {"stage": t.zero_stage}
    if t.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": t.offload_optimizer, "pin_memory": cuda}
    if t.offload_params != "none":
        zero["offload_param"] = {"device": t.offload_params, "pin_memory": cuda}
    zero.update({ZERO_COMM[k]: v for k, v in zero_comm(t).items()})   # unset: DeepSpeed's
    extra = {"checkpoint": {"load_universal": True}} if load_universal else {}
    return {
        **extra,
        "train_micro_batch_size_per_gpu": t.micro_batch,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.micro_batch * t.grad_accum * world,
        "gradient_clipping": t.grad_clip,
        "bf16": {"enabled": t.precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        # the client optimizer is AdamW plus our skip gate (a subclass, which DeepSpeed calls
        # "untested"); on CPU it may also run on offloaded states (no DeepSpeed CPU Adam build)
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": cuda,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
