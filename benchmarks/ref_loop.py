"""A nanoGPT-class training loop on a run config's model, data and batch: the ceiling the
pipeline with LAI off is measured against (issue 22).

    python -m benchmarks.ref_loop CONFIG.yaml [PRESET.yaml ...] [key=value ...] --steps 20

Plain PyTorch on one device, no DeepSpeed: the config's model (build_model: the same HF
architecture and initialisation, SDPA attention) in fp32 with bf16 autocast when
train.precision=bf16, the forward and the token-mean cross-entropy compiled together with
torch.compile (the whole model), fused AdamW on CUDA (weight decay on >= 2-D weights, the config's
betas, eps and lr schedule), gradient clipping at train.grad_clip, zero_grad(set_to_none). The
loader is the trainer's (pinned batches on CUDA). --compile auto compiles on CUDA only (inductor on
a CPU takes minutes per graph; the dry mode says it skipped it). Prints one JSON line as
benchmarks.bare_loop does, with "compiled", "autocast" and "attn" (the attention implementation).
"""
from __future__ import annotations

import sys

from benchmarks.bare_loop import measure, setup


def _options(p) -> None:
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile the model and loss (auto: on CUDA only)")


def main(argv=None) -> int:
    s = setup(__doc__, argv, _options)
    import contextlib

    import torch
    import torch.nn.functional as F

    from pipeline.train import runtime
    from pipeline.train.optim import lr_at, set_lr
    if s.info.world != 1:
        raise SystemExit("error: benchmarks.ref_loop runs one process (no data parallelism)")
    t, dev = s.cfg.train, s.info.device
    cuda = dev.type == "cuda"
    model = s.model.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": t.weight_decay},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, fused=cuda)
    bf16 = t.precision == "bf16"
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else \
        contextlib.nullcontext()

    def loss_fn(x, y):
        logits = model(input_ids=x).logits
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    compiled = s.args.compile == "on" or (s.args.compile == "auto" and cuda)
    if compiled:
        loss_fn = torch.compile(loss_fn)
    else:
        print("ref_loop: torch.compile skipped (--compile "
              f"{s.args.compile} on {dev.type})", file=sys.stderr, flush=True)
    n = 0

    def step(x, y):
        nonlocal n
        n += 1
        set_lr(opt, lr_at(n, t))
        with autocast:
            loss = loss_fn(x, y)
        loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    measure(s, step, "ref", compiled=compiled, autocast=bf16,
            attn=getattr(model.config, "_attn_implementation", "?"))
    runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
