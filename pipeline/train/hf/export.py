"""HF exports: RUN/final at the end of training, and any checkpoint through `lai-export`
(pipeline.train.hf.export_checkpoint). Both write one kind of folder (`save_hf_folder`): the model
in HF format with use_cache on (config.json and generation_config.json, so `generate()` uses the
KV cache), plus the data's tokenizer with its max length set to the model's context, so that
AutoModelForCausalLM / AutoTokenizer.from_pretrained(folder) load it ready to generate."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch

from pipeline.comm import Comm
from pipeline.format.manifest import TokenizerEntry
from pipeline.format.tokenizer import load_tokenizer
from pipeline.fsutil import tmp_name
from pipeline.train.engine import is_fsdp


def export_final(engine, run_dir: Path, tokenizer_path: Path, tokenizer: TokenizerEntry,
                 main: bool, *, zero3: bool) -> Path:
    """RUN/final: save_pretrained (ZeRO-3 parameters gathered one at a time; fsdp2's all
    gathered to rank 0's host) + the data's tokenizer (`tokenizer` = the manifest's entry, at
    `tokenizer_path`). Collective; rank 0 (`main`) writes."""
    module = engine.module
    state = engine.full_state_dict(main) if is_fsdp(engine) \
        else _deepspeed_state(module, main, zero3)
    final = run_dir / "final"
    if main:
        save_hf_folder(module, state, final, tokenizer_path, tokenizer)
    Comm.resolve().barrier()
    return final


def _deepspeed_state(module: torch.nn.Module, main: bool, zero3: bool) -> dict[str, torch.Tensor]:
    """Full host tensors of `module` on rank 0 ({} elsewhere), tied weights as one tensor."""
    import deepspeed
    params = dict(module.named_parameters(remove_duplicate=False))
    state: dict[str, torch.Tensor] = {}   # tied weights stay one tensor (save_pretrained stores it once)
    first_key: dict[int, str] = {}
    for key, value in module.state_dict().items():
        tensor = params.get(key, value)
        if id(tensor) in first_key:                  # the same on every rank: no collective
            if main:
                state[key] = state[first_key[id(tensor)]]
            continue
        first_key[id(tensor)] = key
        if zero3 and key in params:
            with deepspeed.zero.GatheredParameters([tensor]):
                if main:
                    state[key] = tensor.detach().cpu().clone()
        elif main:
            state[key] = value.detach().cpu().clone()
    return state


def context_length(config) -> int | None:
    """The longest sequence the model takes (max positions), if its config says."""
    for key in ("max_position_embeddings", "n_positions"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None


def save_hf_folder(model: torch.nn.Module, state: dict[str, torch.Tensor], out: Path,
                   tokenizer_path: Path | None, tokenizer: TokenizerEntry | None) -> Path:
    """`out` as a save_pretrained folder of `model` holding `state` (full tensors), set up for
    generation, with the tokenizer (None: none is exported). Written under a temporary name and
    renamed when complete (a folder already at `out` is replaced)."""
    for stale in out.parent.glob(f".{out.name}.tmp.*"):   # of an export that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = tmp_name(out)
    model.config.use_cache = True
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.use_cache = True
    model.save_pretrained(tmp, state_dict=state)
    if tokenizer is not None:
        assert tokenizer_path is not None                   # they come together
        _export_tokenizer(tokenizer_path, tokenizer, tmp, context_length(model.config))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def _export_tokenizer(src: Path, entry: TokenizerEntry, dst: Path, max_length: int | None) -> None:
    """The data's tokenizer next to the model, as an HF tokenizer (a sentencepiece model is
    converted to one that encodes exactly like it; if none does, only tokenizer.model is
    exported, with a warning)."""
    try:
        load_tokenizer(entry.kind, src).save_hf(dst, max_length=max_length)
    except Exception as e:  # the model is still usable; say clearly what is missing
        print(f"warning: tokenizer {src} not exported as an HF tokenizer: {e}",
              file=sys.stderr, flush=True)
