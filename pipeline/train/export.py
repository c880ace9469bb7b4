"""The final export (RUN/final): the model in HF format plus its tokenizer, so that
AutoModelForCausalLM / AutoTokenizer.from_pretrained(RUN/final) load it."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from pipeline.comm import Comm
from pipeline.format.manifest import TokenizerEntry
from pipeline.format.tokenizer import load_tokenizer


def export_final(engine, run_dir: Path, tokenizer_path: Path, tokenizer: TokenizerEntry,
                 main: bool, *, zero3: bool) -> Path:
    """RUN/final: save_pretrained (ZeRO-3 parameters gathered one at a time) + the data's
    tokenizer (`tokenizer` = the manifest's entry, at `tokenizer_path`). Collective; rank 0
    (`main`) writes, into a temporary directory renamed when complete."""
    import deepspeed
    module = engine.module
    params = dict(module.named_parameters(remove_duplicate=False))
    state = {}
    for key, value in module.state_dict().items():
        if zero3 and key in params:
            with deepspeed.zero.GatheredParameters([params[key]]):
                if main:
                    state[key] = params[key].detach().cpu().clone()
        elif main:
            state[key] = value.detach().cpu().clone()
    final = run_dir / "final"
    if main:
        tmp = run_dir / ".final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        module.save_pretrained(tmp, state_dict=state)
        _export_tokenizer(tokenizer_path, tokenizer, tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    Comm.resolve().barrier()
    return final


def _export_tokenizer(src: Path, entry: TokenizerEntry, dst: Path) -> None:
    """The data's tokenizer next to the model, as an HF tokenizer (a sentencepiece model is
    converted to one that encodes exactly like it; if none does, only tokenizer.model is
    exported, with a warning)."""
    try:
        load_tokenizer(entry.kind, src).save_hf(dst)
    except Exception as e:  # the model is still usable; say clearly what is missing
        print(f"warning: tokenizer {src} not exported as an HF tokenizer: {e}",
              file=sys.stderr, flush=True)
