"""Adam's second moments for Adam-aware LAI scoring (lai.score.precondition=adam), read where the
optimizer keeps them, under ZeRO 0-3, and reduced to what LAI needs: per scored weight, the row
and column sums of P = 1/(sqrt(v_hat)+eps) (pipeline.lai.kernels.precondition fits r c^T from them).

    read = MomentReader(engine, optimizer, comm, device)   # a pipeline.lai.kernels.precondition.Moments
    sums = read([(name, weight), ...])   # {name: (row sums, column sums)}, the same on every rank

What each rank reads: its own part of exp_avg_sq of every scored weight --
  ZeRO 0 (torch's AdamW on the full parameters, or in bf16 on DeepSpeed's fp32 master copy of
      each): the whole tensor, which every rank holds; rank 0 contributes it, the others nothing;
  ZeRO 1 / 2 and the bf16 optimizer: the fragment of the weight in this rank's flat fp32
      partition (param._hp_mapping: the optimizer-state view and where it starts in the
      flattened weight; relinked to the optimizer state after a checkpoint load);
  ZeRO 3: the weight's partition (deepspeed.utils.safe_get_local_optimizer_state): elements
      [rank * n, rank * n + n) of the flattened weight, n the padded partition size;
  fsdp2: the local rows of the DTensor exp_avg_sq (fully_shard shards dim 0), which start at
      the shard's global row offset.
Each rank turns its part into P and its partial row and column sums in one pass
(pipeline.lai.kernels.precondition.fragment_sums), then one all-reduce of sum_l (o_l + d_l + 1) float64
numbers gives every rank the totals (the + 1 counts the elements: a layout this reader does not
understand fails loudly instead of scoring with wrong weights). v itself is never gathered.

Cost per refresh (every lai.score.precondition_every steps): reading this rank's share of
exp_avg_sq of the scored weights, ~4 P_scored / world bytes, once; that all-reduce (Llama-7B,
layers=linear: ~2.5M numbers, 20 MB; layers=head: V + d + 1); one all-reduce of the step count.
Before the first optimizer step the optimizer holds no moments (or, at ZeRO 0 in bf16, the
zeros of DeepSpeed's initialising step): the reader returns None and LAI scores without
preconditioning until a refresh finds them. The bias correction uses the optimizer's own step
count, the one its update divides by.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from pipeline.comm import Comm
from pipeline.lai.kernels.precondition import adam_hyper, bias_correction2, fragment_sums, inverse_root

KEY = "exp_avg_sq"


def _full_shape(param: torch.nn.Parameter) -> tuple[int, int]:
    shape = tuple(getattr(param, "ds_shape", param.shape))        # ZeRO 3 holds a placeholder
    if len(shape) != 2:
        raise ValueError(f"lai.score.precondition=adam: a scored weight of shape {shape} is not a "
                         "matrix")
    return shape


class MomentReader:
    """A Moments reader (pipeline.lai.kernels.precondition) over an engine's optimizer state (DeepSpeed
    or FSDPEngine, pipeline.train.engine).
    `optimizer`: the client Adam/AdamW the engine drives (its state holds exp_avg_sq and the step
    count, keyed by the parameters at ZeRO 0, by the flat fp32 partitions otherwise)."""

    def __init__(self, engine, optimizer: torch.optim.Optimizer, comm: Comm,
                 device: torch.device):
        self.engine, self.optimizer, self.comm, self.device = engine, optimizer, comm, device
        self._masters: dict[int, torch.Tensor] | None = None

    def _master(self, param) -> torch.Tensor:
        """The tensor the optimizer's state is keyed by for a replicated `param`: itself, or
        its fp32 master copy (DeepSpeed's unfused low-precision wrapper at ZeRO 0)."""
        if self._masters is None:
            ds = self.engine.optimizer
            low, high = getattr(ds, "fp16_groups", []), getattr(ds, "fp32_groups", [])
            self._masters = {id(lp): hp for lg, hg in zip(low, high)
                             if isinstance(hg, (list, tuple)) for lp, hp in zip(lg, hg)}
        return self._masters.get(id(param), param)

    def _local_part(self, param) -> tuple[torch.Tensor | None, int]:
        """(this rank's values of exp_avg_sq of `param`, flattened; their start in the
        flattened weight), (None, 0) when this rank holds none of it."""
        if hasattr(param, "ds_id"):                                   # ZeRO 3
            from deepspeed.utils import safe_get_local_optimizer_state
            part = safe_get_local_optimizer_state(param, KEY).flatten()
            start = dist.get_rank(group=param.ds_process_group) * part.numel()
            return part[:max(0, min(part.numel(), param.ds_numel - start))], start
        if isinstance(param, DTensor):                                # fsdp2: a row shard
            v = self.optimizer.state.get(param, {}).get(KEY)
            if v is None:
                raise ValueError("lai.score.precondition=adam: a scored weight has no Adam state")
            _, offset = compute_local_shape_and_global_offset(v.shape, v.device_mesh, v.placements)
            return v.to_local().flatten(), offset[0] * v.shape[1]
        if hasattr(param, "_hp_mapping"):                             # ZeRO 1/2, bf16 optimizer
            m = param._hp_mapping
            if m is None:
                return None, 0
            return m.get_hp_fragment(KEY).flatten(), m.lp_fragment_address.start
        if self.comm.rank:                                            # replicated: rank 0 counts
            return None, 0
        v = self.optimizer.state.get(self._master(param), {}).get(KEY)
        if v is None:
            raise ValueError("lai.score.precondition=adam: a scored weight has no Adam state")
        return v.flatten(), 0

    def _link(self) -> None:
        """ZeRO 1/2 and the bf16 optimizer link each weight to its optimizer-state fragment at
        their first step; after a checkpoint load the links wait for the next step, so make them
        now (a no-op once linked)."""
        link = getattr(self.engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
        if link is not None:
            link()

    def __call__(self, weights: list[tuple[str, torch.nn.Parameter]]
                 ) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
        t, beta2, eps = adam_hyper(self.optimizer)
        t = int(self.comm.all_reduce(torch.tensor([float(t)], device=self.device), "max"))
        if t == 0:
            return None
        self._link()
        bc2 = bias_correction2(t, beta2)
        shapes, parts, total_v = [], [], 0.0
        for name, w in weights:
            rows, cols = _full_shape(w)
            shapes.append((name, rows, cols))
            v, start = self._local_part(w)
            if v is None or v.numel() == 0:
                row = torch.zeros(rows, dtype=torch.float64)
                col = torch.zeros(cols, dtype=torch.float64)
                n = 0
            else:
                row, col = fragment_sums(inverse_root(v, bc2, eps), start, rows, cols)
                n, total_v = v.numel(), total_v + float(v.sum())
            parts += [row.to(self.device), col.to(self.device),
                      torch.tensor([float(n)], dtype=torch.float64, device=self.device)]
        parts.append(torch.tensor([total_v], dtype=torch.float64, device=self.device))
        flat = self.comm.all_reduce(torch.cat(parts))
        if flat[-1] == 0:                   # an initialising step's zeros: no moments yet
            return None
        out, i = {}, 0
        for name, rows, cols in shapes:
            row, col = flat[i:i + rows], flat[i + rows:i + rows + cols]
            n = int(flat[i + rows + cols])
            if n != rows * cols:
                raise RuntimeError(f"lai.score.precondition=adam: the ranks hold {n} of the "
                                   f"{rows * cols} optimizer-state entries of {name} (a ZeRO "
                                   "layout this reader does not know)")
            out[name] = (row, col)
            i += rows + cols + 1
        return out
