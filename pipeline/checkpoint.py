"""Checkpoints (DeepSpeed engine state + our state, complete only when every rank has written)
and the final export in HF format (RUN/final).

Layout of RUN/checkpoints/step_XXXXXXXX/ (XXXXXXXX = optimizer steps done):
    DeepSpeed's files (model/optimizer states, ZeRO partitions; client state = global train state)
    rank-XXXXX.pt      this rank's state: RNG states, ledger and LAI state, ... (torch.save)
    complete.json      written last, by rank 0, after a barrier: {"step", "world", "config",
                       "config_hash"}; its presence = the checkpoint is complete and resumable

`latest(run_dir)` is the complete checkpoint with the most steps; incomplete ones (a run killed
while saving) are ignored and removed by the next successful save.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import dist
from pipeline.errors import UserError
from pipeline.fsutil import atomic_write, atomic_write_json

MARKER = "complete.json"
_TAG = re.compile(r"step_(\d{8})")


def root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def tag(step: int) -> str:
    return f"step_{step:08d}"


def _all(run_dir) -> list[tuple[int, Path, bool]]:
    """(step, path, complete) of every checkpoint directory, by step."""
    r = root(run_dir)
    if not r.is_dir():
        return []
    out = []
    for p in r.iterdir():
        m = _TAG.fullmatch(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p, (p / MARKER).is_file()))
    return sorted(out)


def latest(run_dir: str | Path) -> Path | None:
    """The complete checkpoint with the most steps, or None."""
    done = [p for _, p, ok in _all(run_dir) if ok]
    return done[-1] if done else None


def read_meta(path: str | Path) -> dict[str, Any]:
    """The marker of a checkpoint directory; UserError if it is not a complete checkpoint."""
    p = Path(path)
    if not (p / MARKER).is_file():
        raise UserError(f"{p}: not a complete checkpoint (no {MARKER}; the run was killed while "
                        f"saving it, or this is not a checkpoint directory)")
    try:
        return json.loads((p / MARKER).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{p / MARKER}: unreadable checkpoint marker: {e}") from None


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engine, run_dir: str | Path, step: int, *, client_state: dict, rank_state: dict,
         meta: dict, rank: int, keep: int) -> Path:
    """Collective: every rank writes its part, then rank 0 marks the checkpoint complete and
    removes all but the newest `keep` complete ones (and stale incomplete ones)."""
    path = root(run_dir) / tag(step)
    engine.save_checkpoint(str(root(run_dir)), tag=tag(step), client_state=client_state,
                           save_latest=False)
    with atomic_write(path / f"rank-{rank:05d}.pt") as f:
        torch.save(rank_state, f)
    dist.barrier()                                # every rank's files are on disk
    if rank == 0:
        atomic_write_json(path / MARKER, {"step": step, **meta})
        _prune(run_dir, keep, newest=step)
    dist.barrier()
    return path


def _prune(run_dir, keep: int, newest: int) -> None:
    entries = _all(run_dir)
    complete = [p for _, p, ok in entries if ok]
    doomed = complete[:-keep] + [p for s, p, ok in entries if not ok and s < newest]
    for p in doomed:
        (p / MARKER).unlink(missing_ok=True)   # incomplete first: never half-deleted "complete"
        shutil.rmtree(p, ignore_errors=True)


def load(engine, path: str | Path, rank: int) -> tuple[dict, dict]:
    """Restore the engine from checkpoint `path`; returns (client_state, this rank's state)."""
    p = Path(path)
    load_path, client_state = engine.load_checkpoint(str(p.parent), tag=p.name,
                                                     load_optimizer_states=True,
                                                     load_lr_scheduler_states=False)
    if load_path is None:
        raise UserError(f"{p}: DeepSpeed could not load this checkpoint")
    rank_file = p / f"rank-{rank:05d}.pt"
    if not rank_file.is_file():
        raise UserError(f"{rank_file}: missing (saved with a different number of ranks?)")
    return client_state, torch.load(rank_file, weights_only=False)


# ---------------------------------------------------------------- final export (HF format)

def export_final(engine, run_dir: Path, tokenizer_path: Path, tokenizer, main: bool, *,
                 zero3: bool) -> Path:
    """RUN/final: save_pretrained (ZeRO-3 parameters gathered one at a time) + the tokenizer
    (`tokenizer` = the manifest's TokenizerEntry), so that AutoModelForCausalLM /
    AutoTokenizer.from_pretrained(RUN/final) load it. Collective; rank 0 (`main`) writes."""
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
    dist.barrier()
    return final


def _export_tokenizer(src: Path, tok, dst: Path) -> None:
    """The data's tokenizer next to the model: an HF tokenizer dir is re-saved; a sentencepiece
    model is copied and converted to an HF tokenizer that encodes exactly like it (checked on
    probe strings; if no conversion is exact, only tokenizer.model is exported, with a warning)."""
    import transformers
    try:
        if tok.kind == "hf":
            transformers.AutoTokenizer.from_pretrained(src).save_pretrained(dst)
            return
        shutil.copy(src, dst / "tokenizer.model")
        _hf_from_sentencepiece(src, tok, dst).save_pretrained(dst)
    except Exception as e:  # the model is still usable; say clearly what is missing
        print(f"warning: tokenizer {src} not exported as an HF tokenizer: {e}",
              file=sys.stderr, flush=True)


def _hf_from_sentencepiece(src: Path, tok, dst: Path):
    """An HF fast tokenizer equivalent to sentencepiece model `src`: transformers' Llama
    tokenizer (dummy prefix as the model has it), else its generic proto converter."""
    import sentencepiece as spm
    import transformers
    from transformers.convert_slow_tokenizer import SpmConverter

    sp = spm.SentencePieceProcessor(model_file=str(src))
    special = {name: sp.id_to_piece(i) for name, i in (("bos_token", tok.bos_id),
               ("eos_token", tok.eos_id), ("pad_token", tok.pad_id)) if i >= 0}
    probes = ["def f(x):\n    return x  # Hello, W\u00f6rld! 123", " two  spaces\ttab", "a"]

    def llama():
        return transformers.LlamaTokenizer.from_pretrained(
            dst, add_prefix_space=sp.id_to_piece(sp.encode("a")[0]).startswith("\u2581"),
            **special)

    def generic():
        class Slow:
            vocab_file = str(src)
        return transformers.PreTrainedTokenizerFast(
            tokenizer_object=SpmConverter(Slow()).converted(), **special)

    errors = []
    for build in (llama, generic):
        try:
            hf = build()
        except Exception as e:
            errors.append(f"{build.__name__}: {e}")
            continue
        if all(hf(p, add_special_tokens=False).input_ids == sp.encode(p) for p in probes):
            return hf
        errors.append(f"{build.__name__}: encodes differently")
    raise ValueError("; ".join(errors))
