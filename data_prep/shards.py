"""Shard streams and shard checks.

Documents of one (source, split) go, in order, to `<source>-<split>-<NNNNN>.bin/.idx` (partitioned
runs: `<source>-<split>-p<KKKKK>-<NNNNN>`, renamed by `lai-prep merge`), with each document's
provenance in `<prefix>.docs.npy` (pipeline.format.provenance; written before the shard); a shard
is closed once it holds at least `max_tokens` tokens, so boundaries depend only on the document
stream. Each closed shard is reported (with checksums) to a callback that records progress.
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
from pipeline.format.provenance import DOCS, DOCS_GROUPED, docs_path, write_docs

SHARD_RE = re.compile(r"^[A-Za-z0-9_]+-(train|val)-(p\d{5}-)?\d{5}\.(bin|idx|docs\.npy)$")


def shard_prefix(source: str, split: str, index: int, part: int | None = None) -> str:
    tag = "" if part is None else f"p{part:05d}-"
    return f"{source}-{split}-{tag}{index:05d}"


def shard_entry(out: Path, source: str, split: str, w: IndexedWriter) -> ShardEntry:
    """The manifest entry of the shard `w` just finalized in `out` (with its docs file)."""
    prefix = w.prefix.name
    docs = docs_path(out / prefix)
    return ShardEntry(source=source, split=split, prefix=prefix, num_docs=w.num_docs, num_tokens=w.num_tokens,
                      bin_sha256=sha256_file(bin_path(out / prefix)), idx_sha256=sha256_file(idx_path(out / prefix)),
                      max_id=w.max_id, docs_sha256=sha256_file(docs) if docs.is_file() else "")


def _docs_intact(out: Path, entry: ShardEntry) -> bool:
    docs = docs_path(out / entry.prefix)
    return not entry.docs_sha256 or (docs.is_file() and sha256_file(docs) == entry.docs_sha256)


def shard_intact(out: Path, entry: ShardEntry) -> bool:
    """Its files exist and match the recorded checksums."""
    b, i = bin_path(out / entry.prefix), idx_path(out / entry.prefix)
    return (b.is_file() and i.is_file() and sha256_file(i) == entry.idx_sha256
            and sha256_file(b) == entry.bin_sha256 and _docs_intact(out, entry))


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
    if not _docs_intact(out, entry):
        raise UserError(f"{docs_path(out / entry.prefix)}: missing, or its checksum does not "
                        "match the manifest")


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
        self._origins: dict[tuple[str, str], list[tuple[int, ...]]] = {}

    def start(self, source: str, split: str, next_index: int) -> None:
        self._next[(source, split)] = next_index

    def add(self, source: str, split: str, tokens: np.ndarray, origin: tuple[int, ...]) -> None:
        """Append a document; `origin` = (file, pos, hash[, group]), its provenance row."""
        key = (source, split)
        w = self._open.get(key)
        if w is None:
            w = self._open[key] = IndexedWriter(self.out / shard_prefix(source, split, self._next[key], self.part),
                                                self.dtype)
            self._origins[key] = []
        w.add_document(tokens)
        self._origins[key].append(origin)
        if w.num_tokens >= self.max_tokens:
            self._close(key)

    def _close(self, key: tuple[str, str]) -> None:
        w = self._open.pop(key)
        rows = self._origins.pop(key)
        write_docs(w.prefix, np.array(rows, dtype=DOCS_GROUPED if len(rows[0]) == 4 else DOCS))
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
        self._origins.clear()
