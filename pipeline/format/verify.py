"""Is a prepared shard still what its manifest says? Its bytes unchanged since lai-prep wrote them,
and every token id inside the vocabulary.

    check = ShardCheck(data_dir, entry, dtype, vocab_size)
    check.run(progress)        # None, or one line naming the file: sha256 of .idx and .bin against
                               # the manifest and the smallest/largest token id, in one read of each
    check.stamp()              # the manifest's checksums + both files' sizes and mtimes: a shard
                               # whose stamp is unchanged need not be read again
    scan_bin(path, dtype)      # BinScan(sha256, lo, hi) of one .bin in one read (also lai-prep import)
    out_of_vocab(reader, V)    # (document, token id) of a shard's first id outside [0, V), or None
    vocab_error(reader, V)     # bad_token(...) of that first id, for a scan that found one
    bad_token(path, doc, id, V)  # the one-line UserError every such finding raises

Used by `lai-prep verify` / merge, by the loader (the manifest's max_id when a shard opens, a range
check on every batch) and by the trainer's data.verify pass (pipeline.format.verified). Cost: hashing dominates, ~1.2 GB/s
per process here (docs/DATA_PREP.md, benchmarks/data_checks.py); the id range adds ~5%.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.errors import UserError
from pipeline.format.indexed import IndexedReader, bin_path, idx_path
from pipeline.format.manifest import ShardEntry
from pipeline.fsutil import sha256_file

CHUNK = 1 << 22      # bytes per read (a multiple of every token size)


def out_of_vocab(reader: IndexedReader, vocab_size: int) -> tuple[int, int] | None:
    """(document index, token id) of the first token of the shard outside [0, vocab_size)."""
    bad = np.flatnonzero((reader.tokens >= vocab_size) | (reader.tokens < 0))
    if not bad.size:
        return None
    pos = int(bad[0])
    seq = int(np.searchsorted(reader.starts, pos, side="right")) - 1
    doc = int(np.searchsorted(reader.document_indices, seq, side="right")) - 1
    return doc, int(reader.tokens[pos])


def vocab_error(reader: IndexedReader, vocab_size: int) -> UserError:
    """The bad_token error of a shard known to hold an id outside [0, vocab_size)."""
    found = out_of_vocab(reader, vocab_size)
    assert found is not None, reader.prefix
    return bad_token(bin_path(reader.prefix), *found, vocab_size)


def bad_token(path: str | os.PathLike, doc: int, token: int, vocab_size: int) -> UserError:
    """The error for token id `token` in document `doc` of shard file `path`."""
    what = "is negative" if token < 0 else f">= vocab size {vocab_size}"
    return UserError(f"{path}: document {doc}: token id {token} {what} (written for another "
                     "tokenizer, or changed since lai-prep wrote it; prepare the data again)")


@dataclass(frozen=True)
class ShardCheck:
    """One shard of a prepared directory against its manifest entry."""
    data_dir: Path
    entry: ShardEntry
    dtype: np.dtype
    vocab_size: int

    @property
    def prefix(self) -> Path:
        return Path(self.data_dir) / self.entry.prefix

    @property
    def nbytes(self) -> int:
        return self.entry.num_tokens * np.dtype(self.dtype).itemsize

    def stamp(self) -> dict:
        files = {name: path(self.prefix).stat() for name, path in (("idx", idx_path), ("bin", bin_path))}
        return {"idx_sha256": self.entry.idx_sha256, "bin_sha256": self.entry.bin_sha256,
                **{name: [st.st_size, st.st_mtime_ns] for name, st in files.items()}}

    def run(self, progress: Callable[[int], object] | None = None) -> str | None:
        """None if intact, else one line naming the file and what is wrong. `progress(n)` is
        called with the bytes of .bin read so far (since the last call)."""
        ipath, bpath = idx_path(self.prefix), bin_path(self.prefix)
        if sha256_file(ipath) != self.entry.idx_sha256:
            return f"{ipath}: checksum does not match the manifest (changed since lai-prep wrote it)"
        scan = scan_bin(bpath, self.dtype, progress)
        if scan.sha256 != self.entry.bin_sha256:
            return f"{bpath}: checksum does not match the manifest (its bytes changed since lai-prep wrote it)"
        if not scan.in_vocab(self.vocab_size):
            return str(vocab_error(IndexedReader(self.prefix), self.vocab_size))
        return None


@dataclass(frozen=True)
class BinScan:
    """What one read of a .bin found: its sha256, the smallest token id or 0 if none is negative,
    the largest (-1: no tokens)."""
    sha256: str
    lo: int
    hi: int

    def in_vocab(self, vocab_size: int) -> bool:
        return self.lo >= 0 and self.hi < vocab_size


def scan_bin(path: str | os.PathLike, dtype: np.dtype, progress: Callable[[int], object] | None = None
             ) -> BinScan:
    """Hash a .bin of `dtype` tokens and find its id range in one read (CHUNK bytes at a time);
    `progress(n)` after each chunk of n bytes."""
    h, lo, hi = hashlib.sha256(), 0, -1
    dtype = np.dtype(dtype)
    buf = bytearray(CHUNK)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            view = memoryview(buf)[:n]
            h.update(view)
            ids = np.frombuffer(view, dtype=dtype)
            hi = max(hi, int(ids.max()))
            if dtype.kind == "i":
                lo = min(lo, int(ids.min()))
            if progress is not None:
                progress(n)
    return BinScan(h.hexdigest(), lo, hi)
