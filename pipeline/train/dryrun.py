"""`lai-train --dry-run` and `lai-train --check`: what lai-train checks before it starts, with no
rank, process group or DeepSpeed engine started (one process, CPU, seconds).

Both validate the config (for --world ranks), refuse a run directory another run holds, open
the data (manifests, shards against the manifest, the val split when eval or the val reference
needs it), plan the resume (a breaking change is refused) and check model.init_from against the
data; a problem is one line, exit 2.
`--check` (what launch/train.sh runs before deepspeed spawns the ranks) prints nothing more;
`--dry-run` then prints the resolved config, the DeepSpeed JSON (fsdp2: its sharding), the parameter count, tokens per
step, the epochs over the data (with the warnings the run would print), a memory estimate, and
the resume point.
"""
from __future__ import annotations

import json

import torch

from pipeline.config import Config, save_yaml
from pipeline.train.checkpointing import lineage, resume, universal
from pipeline.train.hf import init_from
from pipeline.train.fsdp import describe
from pipeline.train.checkpointing.lock import RunLock, in_use
from pipeline.train.model import hf_config
from pipeline.train.flops import model_flops_per_token
from pipeline.train.runplan import data_plan, memory_estimate, reference_note, time_estimate
from pipeline.train.runtime import DistInfo
from pipeline.train.engine import ds_config
from pipeline.train.setup import open_data


def _meta_model(cfg: Config, data):
    """The run's model with meta-device (empty) tensors: its shape without its memory."""
    import transformers
    tok = data.train.tokenizer
    config = (init_from.pretrained_config(cfg.model.init_from) if cfg.model.init_from else
              hf_config(cfg.model, vocab_size=tok.vocab_size, seq_len=cfg.data.seq_len,
                        bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id))
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


def dry_run(cfg: Config, world: int, *, quiet: bool = False) -> int:
    """Check everything (UserError on the first problem); unless `quiet`, print the plan.
    `cfg` is validated for `world` ranks."""
    holder = RunLock(cfg.run.out_dir).holder()
    if holder:
        raise in_use(cfg.run.out_dir, holder)
    data = open_data(cfg, DistInfo(0, world, 0, torch.device("cpu")))
    point = resume.plan(cfg, world, warn=not quiet)   # the run prints the warnings (train.sh)
    origin = lineage.plan(cfg, world) if point is None else None
    if point is not None and point.universal:
        point.conversion = (f"reuses {universal.folder(point.path)}"
                            if universal.folder(point.path).is_dir() else
                            "its ZeRO partitions will first be converted to a universal "
                            "checkpoint (once, on rank 0)")
    init_note = (init_from.check(cfg.model.init_from, data.train.tokenizer,
                                 data.train.tokenizer_path, cfg.data.seq_len,
                                 cfg.data.sources[0].path) if cfg.model.init_from else "")
    if quiet:
        return 0
    model = _meta_model(cfg, data)
    n_params = sum(p.numel() for p in model.parameters())
    t = cfg.train
    plan = data_plan(cfg, data.train, data.val, world)
    print("# resolved config (RUN/config.yaml)\n" + save_yaml(cfg))
    if t.backend == "fsdp2":
        print(f"# engine: {describe(t)}\n")
    else:
        print("# DeepSpeed config (RUN/ds_config.json)\n"
              + json.dumps(ds_config(cfg, world, torch.cuda.is_available()), indent=2) + "\n")
    lines = [f"model: {n_params / 1e6:.2f}M parameters ({type(model.config).__name__}"
             f"{'; ' + init_note if init_note else ''})",
             f"batch: global {t.global_batch} = micro {t.micro_batch} x accumulation "
             f"{t.grad_accum} x {world} rank(s); {t.global_batch * cfg.data.seq_len:,} tokens "
             "per step",
             *plan.lines, *([reference_note(cfg)] if cfg.lai.enabled else []),
             memory_estimate(cfg, n_params, model.config, world),
             time_estimate(cfg, model_flops_per_token(model, cfg.data.seq_len), world),
             point.note().replace("resumed from", "would resume from") if point else
             f"fresh start in {cfg.run.out_dir}"
             + (f", {origin.note().replace('continued from', 'continuing from')}" if origin else ""),
             *plan.warnings,
             "dry run: nothing was started"]
    print("\n".join(lines), flush=True)
    return 0
