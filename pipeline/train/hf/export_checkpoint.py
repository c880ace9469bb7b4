"""`lai-export RUN/checkpoints/step_N OUT`: any complete checkpoint as a save_pretrained folder
(model + tokenizer, as RUN/final), on one CPU process, no process group.

Weights: ZeRO 1-3 from the fp32 master partitions of every rank (DeepSpeed's zero_to_fp32
merge, after every file passed the safe loader), ZeRO 0 from the saved module (safe loader),
fsdp2 from its DCP shards (read into the model). A damaged checkpoint
(pipeline.train.checkpointing.checkpoint.damage) is refused in one line, as resume does. The
architecture comes from the checkpoint's marker
(the model's HF config, recorded at every save), and the tokenizer from the run's data
directory (a warning and no tokenizer if that has moved). The model is built on the meta device
and takes the merged tensors as they are, so host memory holds one copy of the weights.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pipeline.errors import UserError, cli_main
from pipeline.train.checkpointing import checkpoint, safe_load


def merged_state_dict(ckpt: Path, train: dict, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full fp32 tensors of every parameter (and saved buffer) of checkpoint `ckpt`, saved with
    train settings `train` (its config's train section); `model` (on the meta device) holds them
    for fsdp2's DCP shards, which are read into it."""
    if train.get("backend", "deepspeed") == "fsdp2":
        from pipeline.train.fsdp import load_full_model
        return load_full_model(ckpt, model)
    zero_stage = int(train["zero_stage"])
    if zero_stage == 0:
        files = sorted(ckpt.glob("mp_rank_*_model_states.pt"))
        if not files:
            raise UserError(f"{ckpt}: no DeepSpeed model states (mp_rank_00_model_states.pt)")
        module = safe_load.load(files[0], map_location="cpu")["module"]
        return {k: v.float() if v.is_floating_point() else v for k, v in module.items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    safe_load.check_files(ckpt)               # zero_to_fp32 unpickles with weights_only=False
    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)


def _model(meta: dict, where: Path) -> torch.nn.Module:
    """The run's model, with meta-device (empty) tensors."""
    import transformers
    cfg = meta.get("hf_config")
    if cfg is None:
        raise UserError(f"{where}: the checkpoint does not record its model config (saved by an "
                        "older lai-train); export it by resuming the run instead")
    config = transformers.AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


def _tokenizer(meta: dict):
    """(path, TokenizerEntry) of the run's data, or (None, None) with a warning."""
    from pipeline.format.manifest import load_manifest
    source = meta["config"]["data"]["sources"][0]["path"]
    try:
        entry = load_manifest(source).tokenizer
    except UserError as e:
        print(f"warning: no tokenizer exported ({e})", file=sys.stderr, flush=True)
        return None, None
    return Path(source) / entry.path, entry


def export(ckpt: str | Path, out: str | Path) -> Path:
    """Write checkpoint `ckpt` as a save_pretrained folder at `out` (which must not exist yet,
    or be empty)."""
    from pipeline.train.hf.export import save_hf_folder
    ckpt, out = Path(ckpt), Path(out)
    meta = checkpoint.read_meta(ckpt)
    why = checkpoint.damage(ckpt)
    if why is not None:
        raise UserError(f"{ckpt}: {why}; export another (e.g. an earlier) checkpoint")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists; choose a new output folder")
    model = _model(meta, ckpt / checkpoint.MARKER)
    state = merged_state_dict(ckpt, meta["config"]["train"], model)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {k for k in missing if k.endswith("lm_head.weight")} \
        if getattr(model.config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise UserError(f"{ckpt}: the weights do not fit the recorded model (missing "
                        f"{sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
    model.tie_weights()
    tok_path, entry = _tokenizer(meta)
    if out.is_dir():
        out.rmdir()
    save_hf_folder(model, model.state_dict(), out, tok_path, entry)
    return out


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lai-export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a complete checkpoint directory, e.g. runs/x/checkpoints/step_00001000")
    p.add_argument("out", metavar="OUT", help="the save_pretrained folder to write (new)")
    args = p.parse_args(argv)
    out = export(args.checkpoint, args.out)
    step = checkpoint.read_meta(args.checkpoint)["step"]
    print(f"lai-export: step {step} of {args.checkpoint} -> {out} (AutoModelForCausalLM."
          f"from_pretrained(\"{out}\"))", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
