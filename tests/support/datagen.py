"""Tiny prepared data directories for tests (same layout as `lai-prep` output, no tokenizer run).

    make_data_dir(path, docs, vocab_size=512, source="synthetic", val_docs=None, ...)

writes `<source>-<split>-NNNNN.bin/.idx` shards with pipeline.format.indexed.IndexedWriter and a manifest
with pipeline.format.manifest.Manifest. The tokenizer file is a stand-in (its bytes only set the sha256
the loader compares across sources); tests that decode text must use a real tokenizer.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from data_prep.shards import shard_entry
from pipeline.fsutil import atomic_write, sha256_file
from pipeline.format.indexed import IndexedWriter, token_dtype
from pipeline.format.manifest import Manifest, ShardEntry, TokenizerEntry

EOS = 2


def random_docs(n_docs: int, vocab_size: int = 512, *, min_len: int = 1, max_len: int = 64,
                seed: int = 0, eos_id: int = EOS) -> list[np.ndarray]:
    """`n_docs` documents of random tokens in [3, vocab_size), each ending with `eos_id`."""
    rng = np.random.default_rng(seed)
    return [np.append(rng.integers(3, vocab_size, size=int(rng.integers(min_len, max_len + 1))), eos_id)
            for _ in range(n_docs)]


def _write_shards(out: Path, source: str, split: str, docs, docs_per_shard: int, dtype) -> list[ShardEntry]:
    entries = []
    for n, first in enumerate(range(0, len(docs), docs_per_shard)):
        prefix = f"{source}-{split}-{n:05d}"
        with IndexedWriter(out / prefix, dtype) as w:
            for d in docs[first: first + docs_per_shard]:
                w.add_document(d)
        entries.append(shard_entry(out, source, split, w))
    return entries


def make_data_dir(path, docs, vocab_size: int = 512, *, source: str = "synthetic", val_docs=None,
                  docs_per_shard: int = 1000, tokenizer: str = "test-tokenizer", eos_id: int = EOS) -> Path:
    """A prepared directory at `path` holding `docs` (train) and `val_docs` (val) of one source."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "tokenizer.model") as f:
        f.write(f"stand-in tokenizer {tokenizer}\n".encode())
    dtype = token_dtype(vocab_size)
    shards = _write_shards(out, source, "train", list(docs), docs_per_shard, dtype)
    if val_docs:
        shards += _write_shards(out, source, "val", list(val_docs), docs_per_shard, dtype)
    tok = TokenizerEntry(kind="sentencepiece", path="tokenizer.model",
                         sha256=sha256_file(out / "tokenizer.model"), vocab_size=vocab_size,
                         eos_id=eos_id, bos_id=1, pad_id=0)
    Manifest(tokenizer=tok, dtype=dtype.name, split={"val_fraction": 0.0 if not val_docs else 0.1, "seed": 0},
             sources=[{"name": source, "spec": {"kind": "test"}}], shards=shards).save(out)
    return out


def two_source_dir(path: Path) -> Path:
    """One prepared directory holding two named sources ("mixa", "mixb"): its packed sequences
    straddle both."""
    from pipeline.format.manifest import load_manifest
    d = make_data_dir(path, random_docs(30, 64, min_len=5, max_len=12, seed=3), vocab_size=64,
                      source="mixa")
    m = load_manifest(d)
    more = _write_shards(d, "mixb", "train", random_docs(30, 64, min_len=5, max_len=12, seed=4),
                         1000, token_dtype(64))
    replace(m, shards=m.shards + more,
            sources=m.sources + [{"name": "mixb", "spec": {"kind": "test"}}]).save(d)
    return d
