"""lai-prep's test documents and runners (no tests here): deterministic small documents with
indentation, tabs and non-ASCII, lai-prep in-process or as a real subprocess, a reader of what it
wrote, and a real HF tokenizer. The sentencepiece model trained on them is tests/conftest.py's
`spm_model` fixture."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

from data_prep.__main__ import main
from pipeline.format.indexed import IndexedReader
from pipeline.format.manifest import load_manifest
from support import ROOT

VOCAB = 400
WORDS = ("the of and to in is for def return class import self value data token model train loss grad "
         "shard index naïve café 中文 🙂 Ωmega x1 42").split()


def make_docs(n: int, seed: int = 0) -> list[str]:
    """Deterministic small documents: indentation, tabs, trailing spaces, non-ASCII, newlines."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        lines = [" " * rng.choice([0, 0, 4, 8]) + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
                 + rng.choice(["", ":", "\t# note", "  "]) for _ in range(rng.randint(1, 6))]
        docs.append("\n".join(lines) + rng.choice(["", "\n"]))
    return docs


def write_text_dir(path: Path, docs: list[str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(docs):
        (path / f"doc{i:04d}.txt").write_text(d, encoding="utf-8")
    return path


def prep(*args) -> int:
    """Run `lai-prep` in-process (the cli_main-wrapped entry point)."""
    return main([str(a) for a in args])


def prep_cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python -m data_prep` as a real subprocess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "data_prep", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def read_docs(out: Path) -> dict[tuple[str, str], list[np.ndarray]]:
    """All documents of a prepared directory per (source, split), in shard order."""
    m = load_manifest(out)
    docs: dict[tuple[str, str], list[np.ndarray]] = {}
    for e in m.shards:
        r = IndexedReader(out / e.prefix)
        docs.setdefault((e.source, e.split), []).extend(np.array(r[i]) for i in range(len(r)))
    return docs


def dir_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def hf_tokenizer(path: Path, n_words: int) -> Path:
    """A real HF tokenizer (tokenizers WordLevel, whitespace split) with n_words + 2 ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<pad>": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    for i in range(n_words - len(WORDS)):
        vocab[f"w{i}"] = len(vocab)
    t = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=t, eos_token="</s>", pad_token="<pad>").save_pretrained(path)
    return path
