"""Shard streams and shard checks.

Documents of one (source, split) go, in order, to `<source>-<split>-<NNNNN>.bin/.idx` (partitioned
runs: `<source>-<split>-p<KKKKK>-<NNNNN>`, renamed by `lai-prep merge`); a shard is closed once it
holds at least `max_tokens` tokens, so boundaries depend only on the document stream. Each closed
shard is reported (with checksums) to a callback that records progress.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.errors import UserError
from pipeline.fsutil import sha256_file
from pipeline.format.indexed import IndexedReader, IndexedWriter, ShardFormatError, bin_path, idx_path
from pipeline.format.manifest import ShardEntry
from pipeline.format.verify import ShardCheck

SHARD_RE = re.compile(r"^[A-Za-z0-9_]+-(train|val)-(p\d{5}-)?\d{5}\.(bin|idx)$")


def shard_prefix(source: str, split: str, index: int, part: int | None = None) -> str:
    tag = "" if part is None else f"p{part:05d}-"
    return f"{source}-{split}-{tag}{index:05d}"


def shard_entry(out: Path, source: str, split: str, w: IndexedWriter) -> ShardEntry:
    """The manifest entry of the shard `w` just finalized in `out`."""
    prefix = w.prefix.name
    return ShardEntry(source=source, split=split, prefix=prefix, num_docs=w.num_docs, num_tokens=w.num_tokens,
                      bin_sha256=sha256_file(bin_path(out / prefix)), idx_sha256=sha256_file(idx_path(out / prefix)),
                      max_id=w.max_id)


def shard_intact(out: Path, entry: ShardEntry) -> bool:
    """Both files exist and match the recorded checksums."""
    b, i = bin_path(out / entry.prefix), idx_path(out / entry.prefix)
    return (b.is_file() and i.is_file() and sha256_file(i) == entry.idx_sha256
            and sha256_file(b) == entry.bin_sha256)


def verify_shard(out: Path, entry: ShardEntry, dtype: str, vocab_size: int) -> None:
    """Full check of one listed shard; UserError naming the file and the problem."""
    try:
        r = IndexedReader(out / entry.prefix)
    except ShardFormatError as e:
        raise UserError(str(e)) from None
    ipath = idx_path(out / entry.prefix)
    if r.dtype.name != dtype:
        raise UserError(f"{ipath}: dtype {r.dtype.name}, manifest says {dtype}")
    if (r.num_docs, r.num_tokens) != (entry.num_docs, entry.num_tokens):
        raise UserError(f"{ipath}: {r.num_docs} documents / {r.num_tokens} tokens, manifest says "
                        f"{entry.num_docs} / {entry.num_tokens}")
    problem = ShardCheck(out, entry, r.dtype, vocab_size).run()
    if problem:
        raise UserError(problem)


class ShardStreams:
    """Open shard writers, one per (source, split); closes a shard when it reaches `max_tokens`."""

    def __init__(self, out: Path, dtype: np.dtype, max_tokens: int,
                 on_complete: Callable[[ShardEntry], None], part: int | None = None):
        if max_tokens < 1:
            raise UserError(f"--shard-tokens: must be positive, got {max_tokens}")
        self.out, self.dtype, self.max_tokens, self.part = out, np.dtype(dtype), max_tokens, part
        self.on_complete = on_complete
        self._next: dict[tuple[str, str], int] = {}
        self._open: dict[tuple[str, str], IndexedWriter] = {}

    def start(self, source: str, split: str, next_index: int) -> None:
        self._next[(source, split)] = next_index

    def add(self, source: str, split: str, tokens: np.ndarray) -> None:
        key = (source, split)
        w = self._open.get(key)
        if w is None:
            w = self._open[key] = IndexedWriter(self.out / shard_prefix(source, split, self._next[key], self.part),
                                                self.dtype)
        w.add_document(tokens)
        if w.num_tokens >= self.max_tokens:
            self._close(key)

    def _close(self, key: tuple[str, str]) -> None:
        w = self._open.pop(key)
        w.finalize()
        self._next[key] += 1
        self.on_complete(shard_entry(self.out, key[0], key[1], w))

    def finish(self, source: str) -> None:
        """Close the open shards of `source` (train before val)."""
        for split in ("train", "val"):
            if (source, split) in self._open:
                self._close((source, split))

    def discard(self) -> None:
        """Drop unfinished shards (their temporary files); used on errors."""
        for w in self._open.values():
            w.discard()
        self._open.clear()
