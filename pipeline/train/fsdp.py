"""train.backend=fsdp2: torch's fully_shard per transformer block behind the engine interface
the trainer drives (pipeline.train.engine), with torch.distributed.checkpoint (DCP) checkpoints.

    engine = FSDPEngine(shard(model, t, device), optimizer, t)   # optimizer over the DTensors
    engine(input_ids=...).logits; engine.backward(loss); engine.step()   # as DeepSpeed's engine

The ZeRO settings that have an FSDP2 meaning (the others are refused when the config loads,
pipeline.config.validate):
  zero_stage 3        -> fully_shard(reshard_after_forward=True): parameters gathered per block
                         for forward, freed, gathered again for backward;
  zero_stage 2        -> reshard_after_forward=False: gathered once per forward, kept until
                         backward (more memory, one all-gather less);
  offload_params=cpu  -> CPUOffloadPolicy: parameters, gradients and the optimizer step on the
                         host (FSDP2 has no optimizer-only offload);
  precision=bf16      -> MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32): fp32 sharded
                         parameters and optimizer states, bf16 compute, fp32 gradient reduction.
Gradients are reduce-scattered (averaged over ranks) at every backward, as ZeRO 2/3 do; the loss
is divided by grad_accum as DeepSpeed divides it; the update at the accumulation boundary clips
by the global gradient norm (train.grad_clip) and calls the guarded optimizer (pipeline.train.
optim: it skips on every rank together). Works with NCCL and with gloo (all-gather and
reduce-scatter both exist there).

Checkpoint I/O (the DeepSpeed engine's two calls, same contract, pipeline.train.checkpointing.checkpoint):
CKPT/dcp/ holds the model and optimizer state as DCP shards (any number of ranks loads them:
resuming on another world size needs no conversion), CKPT/client.pt the trainer's global state
(written by rank 0, read with pipeline.train.checkpointing.safe_load; DCP's metadata and non-tensor items
through safe_load.dcp_load's allow-list). A shard DCP cannot read is one line
naming CKPT/dcp (checkpoint.load's UserError; lai-export's too).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import cast

import torch
import torch.distributed as dist
from torch import nn

from pipeline.config import TrainConfig
from pipeline.errors import UserError
from pipeline.fsutil import atomic_write
from pipeline.lai.kernels.capture import decoder_blocks
from pipeline.train.optim import Guarded

DCP_DIR = "dcp"
CLIENT_FILE = "client.pt"


def shard_kwargs(t: TrainConfig, device: torch.device) -> dict:
    """fully_shard's arguments for train settings `t` (see the module doc)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy
    kw = dict(mesh=init_device_mesh(device.type, (dist.get_world_size(),)),
              reshard_after_forward=t.zero_stage == 3,
              offload_policy=(CPUOffloadPolicy(pin_memory=device.type == "cuda")
                              if t.offload_params == "cpu" else OffloadPolicy()))
    if t.precision == "bf16":
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                               reduce_dtype=torch.float32)
    return kw


def describe(t: TrainConfig) -> str:
    """The engine in a few words, for the start line and --dry-run."""
    offload = ", CPUOffloadPolicy" if t.offload_params == "cpu" else ""
    mp = ", MixedPrecisionPolicy(bf16 compute, fp32 reduce)" if t.precision == "bf16" else ""
    return (f"FSDP2 fully_shard per block (from ZeRO {t.zero_stage}: reshard_after_forward="
            f"{t.zero_stage == 3}{offload}{mp})")


def shard(model: nn.Module, t: TrainConfig, device: torch.device) -> nn.Module:
    """`model` (fp32, on the host, identical on every rank) sharded in place: each transformer
    block its own FSDP unit, the rest (embeddings, final norm, LM head: tied weights stay one
    parameter) the root's, kept gathered from its forward to its backward. Collective. (Its
    deprecation warnings: pipeline.train.quiet.)"""
    from torch.distributed.fsdp import fully_shard     # here: DeepSpeed runs never import it
    if device.type == "cuda" and t.offload_params != "cpu":
        model.to(device)
    kw = shard_kwargs(t, device)
    for block in decoder_blocks(model) or ():
        fully_shard(block, **kw)
    # the root's backward comes right after its forward: resharding it in between only costs
    return fully_shard(model, **{**kw, "reshard_after_forward": False})


def _full(x: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (a collective); a plain tensor as it is."""
    return x.full_tensor() if hasattr(x, "full_tensor") else x


class FSDPEngine:
    """The DeepSpeed-engine calls the trainer makes (listed in pipeline.train.engine), over a
    fully_shard'ed `module` and its (guarded) optimizer `optimizer`. Collective where DeepSpeed's
    are: backward, the boundary's step, checkpoint I/O, full_state_dict."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, t: TrainConfig):
        self.module, self.optimizer, self.t = module, optimizer, t
        self.micro_steps = 0
        self._grad_norm: float | None = None

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()

    def is_gradient_accumulation_boundary(self) -> bool:
        return (self.micro_steps + 1) % self.t.grad_accum == 0

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.t.grad_accum).backward()

    def step(self) -> None:
        """End of a micro-step; at the accumulation boundary: clip, update, clear gradients."""
        boundary = self.is_gradient_accumulation_boundary()
        self.micro_steps += 1
        if not boundary:
            return
        params = [p for p in self.module.parameters() if p.grad is not None]
        norm = _full(torch.nn.utils.get_total_norm([p.grad for p in params]))
        if self.t.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(params, self.t.grad_clip, norm)
        self._grad_norm = float(norm)
        # the global norm is finite iff every rank's gradients are: the gate needs no own check
        cast(Guarded, self.optimizer).step(grads_finite=math.isfinite(self._grad_norm))
        self.optimizer.zero_grad(set_to_none=True)

    def get_global_grad_norm(self) -> float | None:
        return self._grad_norm

    def was_step_applied(self) -> bool:
        """No overflow check of its own (that is DeepSpeed's fp16 path): the SkipGate decides."""
        return True

    def destroy(self) -> None:
        """Nothing to release before the process group goes."""

    # ------------------------------------------------------------ checkpoint I/O
    def _sharded_state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                             get_optimizer_state_dict)
        return {"model": get_model_state_dict(self.module),
                "optim": get_optimizer_state_dict(self.module, self.optimizer)}

    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict,
                        save_latest: bool = False) -> None:
        """save_dir/tag/dcp/ (every rank its shards) and save_dir/tag/client.pt (rank 0)."""
        import torch.distributed.checkpoint as dcp
        path = Path(save_dir) / tag
        dcp.save(self._sharded_state(), checkpoint_id=path / DCP_DIR)
        if dist.get_rank() == 0:
            with atomic_write(path / CLIENT_FILE) as f:
                torch.save(client_state, f)

    def load_checkpoint(self, load_dir: str, tag: str, **_) -> tuple[str, dict]:
        """Model and optimizer from load_dir/tag/dcp/ (resharded to this world size); returns
        (path, the client state save_checkpoint was given)."""
        from torch.distributed.checkpoint.api import CheckpointException
        from torch.distributed.checkpoint.state_dict import (set_model_state_dict,
                                                             set_optimizer_state_dict)

        from pipeline.train.checkpointing import safe_load
        path = Path(load_dir) / tag
        state = self._sharded_state()
        try:
            safe_load.dcp_load(state, path / DCP_DIR)
        except CheckpointException as e:    # a BaseException: as the error the caller reports
            raise RuntimeError(f"{path / DCP_DIR}: {_first_failure(e)}") from None
        set_model_state_dict(self.module, state["model"])
        set_optimizer_state_dict(self.module, self.optimizer, state["optim"])
        return str(path), safe_load.load(path / CLIENT_FILE)

    def full_state_dict(self, main: bool) -> dict[str, torch.Tensor]:
        """Every parameter and buffer as a full host tensor on rank 0 (`main`; {} elsewhere),
        tied weights as one tensor. Collective."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        full = get_model_state_dict(self.module, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        if not main:
            return {}
        first: dict[int, str] = {}
        for name, p in self.module.named_parameters(remove_duplicate=False):
            key = first.setdefault(id(p), name)
            full[name] = full[key]
        return full


def _first_failure(e) -> str:
    """One line of a DCP CheckpointException: the first rank's failure."""
    failures = getattr(e, "failures", {}) or {}
    first = next(iter(failures.values()), e)
    first = first[0] if isinstance(first, tuple) else first     # (exception, its traceback)
    return (str(first).strip().splitlines() or [type(first).__name__])[0]


def load_full_model(ckpt: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The model weights of an fsdp2 checkpoint `ckpt`, read into `model` (built on the meta
    device; materialised on the host here) on one process without a process group."""
    from torch.distributed.checkpoint.api import CheckpointException

    from pipeline.train.checkpointing import safe_load
    model.to_empty(device="cpu")
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():           # "no process group: loading in one process"
        warnings.simplefilter("ignore", UserWarning)
        try:
            safe_load.dcp_load(state, ckpt / DCP_DIR, no_dist=True)
        except CheckpointException as e:
            raise UserError(f"{ckpt / DCP_DIR}: cannot be read ({_first_failure(e)})") from None
    return state["model"]
