"""The Megatron indexed-dataset byte format (`.idx` + `.bin`), reader and writer side by side.

Byte-compatible with `megatron.core.datasets.indexed_dataset.IndexedDataset` (megatron-core 0.16)
and GPT-NeoX shards. `PREFIX.bin` holds the raw tokens of every sequence back to back. `PREFIX.idx`:

    offset  field
    0       magic            b"MMIDIDX\\x00\\x00"          9 bytes
    9       version          u64 little-endian = 1
    17      dtype code       u8  (uint16 = 8, int32 = 4, ...; see DTYPE_CODES)
    18      sequence count   u64 N
    26      document count   u64 D  (= number of documents + 1)
    34      lengths          int32[N]  tokens per sequence
    ...     pointers         int64[N]  byte offset of each sequence in .bin
    ...     document indices int64[D]  0, then the end sequence index of each document

We write one sequence per document (document indices = 0..N). The reader accepts Megatron's
multi-sequence documents too.
"""
from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.fsutil import tmp_name

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_BYTES = len(MAGIC) + 8 + 1 + 8 + 8
DTYPE_CODES: dict[int, type] = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64,
    6: np.float64, 7: np.float32, 8: np.uint16,
}
CODE_OF = {np.dtype(v): k for k, v in DTYPE_CODES.items()}
TOKEN_DTYPES = (np.dtype(np.uint16), np.dtype(np.int32))


class ShardFormatError(UserError, ValueError):
    """A shard on disk is not a valid indexed dataset; the message names the file and the problem
    (a UserError: CLIs report it in one line and exit 2)."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The token dtype Megatron picks for a vocabulary: uint16 below 65500 ids, else int32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def idx_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}.idx")


def bin_path(prefix: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(prefix)}.bin")


class IndexedWriter:
    """Write one shard. Documents are appended with `add_document`; `finalize` writes the index.

    Both files are written under temporary names and renamed only in `finalize` (.bin first, .idx
    last), so a killed writer leaves nothing that looks like a shard, and a failing `finalize`
    removes what it wrote. Use as a context manager (or call `finalize`, and `discard` on errors):
    an exception inside the block discards the temporaries.
    """

    def __init__(self, prefix: str | os.PathLike, dtype: np.dtype | type):
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF:
            raise ValueError(f"unsupported token dtype {self.dtype}")
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self._bin_tmp = tmp_name(bin_path(self.prefix))
        self._idx_tmp = tmp_name(idx_path(self.prefix))
        self._bin = open(self._bin_tmp, "wb")
        self._lengths: list[int] = []
        self.num_tokens = 0
        self.max_id: int | None = None          # the largest token id written (None: none yet)

    def add_document(self, tokens) -> None:
        """Append one document (1-D integer array-like) as one sequence."""
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ValueError(f"a document must be 1-D, got shape {arr.shape}")
        if arr.size and self.dtype.kind in "ui":
            info = np.iinfo(self.dtype)
            lo, hi = int(arr.min()), int(arr.max())
            if lo < info.min or hi > info.max:
                raise ValueError(f"token ids [{lo}, {hi}] do not fit {self.dtype} in {self.prefix}")
            self.max_id = hi if self.max_id is None else max(self.max_id, hi)
        self._bin.write(arr.astype(self.dtype, copy=False).tobytes(order="C"))
        self._lengths.append(int(arr.size))
        self.num_tokens += int(arr.size)

    @property
    def num_docs(self) -> int:
        return len(self._lengths)

    def finalize(self) -> None:
        """Write the index and rename both files into place (.bin first, .idx last). If anything
        fails (a full disk), nothing of the shard is left: the temporaries and a .bin already
        renamed are removed, and an OSError without a file name names the shard."""
        try:
            self._write_index()
            os.replace(self._bin_tmp, bin_path(self.prefix))
            try:
                os.replace(self._idx_tmp, idx_path(self.prefix))
            except BaseException:
                bin_path(self.prefix).unlink(missing_ok=True)
                raise
        except BaseException as e:
            self._abandon(e)
            raise

    def _write_index(self) -> None:
        lengths = np.asarray(self._lengths, dtype=np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths) > 1:
            np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        doc_idx = np.arange(len(lengths) + 1, dtype=np.int64)
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        with open(self._idx_tmp, "wb") as f:
            f.write(MAGIC)
            f.write(struct.pack("<Q", VERSION))
            f.write(struct.pack("<B", CODE_OF[self.dtype]))
            f.write(struct.pack("<Q", len(lengths)))
            f.write(struct.pack("<Q", len(doc_idx)))
            f.write(lengths.tobytes(order="C"))
            f.write(pointers.tobytes(order="C"))
            f.write(doc_idx.tobytes(order="C"))
            f.flush()
            os.fsync(f.fileno())

    def discard(self) -> None:
        if not self._bin.closed:
            with contextlib.suppress(OSError):        # a full disk fails the close's flush too
                self._bin.close()
        for p in (self._bin_tmp, self._idx_tmp):
            p.unlink(missing_ok=True)

    def _abandon(self, exc: BaseException) -> None:
        """Discard after `exc`; an OSError without a file name (a full disk) gets the shard's."""
        self.discard()
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(bin_path(self.prefix))

    def __enter__(self) -> "IndexedWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self._abandon(exc)


class IndexedReader:
    """Memory-mapped, validated read access to one shard (ours or Megatron's/GPT-NeoX's).

    `reader[i]` is sequence i as a read-only numpy view into the mapped `.bin` (no copy).
    Validation on open: magic, version, dtype code, index size, pointers consistent with lengths,
    document indices monotone, `.bin` size equal to what the index says. Errors raise
    ShardFormatError naming the file.
    """

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = Path(prefix)
        ipath, bpath = idx_path(self.prefix), bin_path(self.prefix)
        for p in (ipath, bpath):
            if not p.is_file():
                raise ShardFormatError(f"{p}: missing shard file")
        isize = ipath.stat().st_size
        if isize < HEADER_BYTES:
            raise ShardFormatError(f"{ipath}: truncated index ({isize} bytes, header needs {HEADER_BYTES})")
        with open(ipath, "rb") as f:
            header = f.read(HEADER_BYTES)
        if header[: len(MAGIC)] != MAGIC:
            raise ShardFormatError(f"{ipath}: wrong magic {header[:len(MAGIC)]!r}, not an indexed dataset index")
        version, code, n, d = struct.unpack("<QBQQ", header[len(MAGIC):])
        if version != VERSION:
            raise ShardFormatError(f"{ipath}: unsupported version {version} (expected {VERSION})")
        if code not in DTYPE_CODES:
            raise ShardFormatError(f"{ipath}: unknown dtype code {code}")
        self.dtype = np.dtype(DTYPE_CODES[code])
        expected = HEADER_BYTES + 4 * n + 8 * n + 8 * d
        if isize != expected:
            raise ShardFormatError(
                f"{ipath}: index size {isize} bytes does not match {n} sequences and {d} document indices ({expected} bytes)")
        idx = np.memmap(ipath, dtype=np.uint8, mode="r")
        off = HEADER_BYTES
        self.lengths = np.frombuffer(idx, dtype=np.int32, count=n, offset=off)
        off += 4 * n
        self.pointers = np.frombuffer(idx, dtype=np.int64, count=n, offset=off)
        off += 8 * n
        self.document_indices = np.frombuffer(idx, dtype=np.int64, count=d, offset=off)
        if n and (self.lengths < 0).any():
            raise ShardFormatError(f"{ipath}: negative sequence length")
        want_ptr = np.zeros(n, dtype=np.int64)
        if n > 1:
            np.cumsum(self.lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=want_ptr[1:])
        if not np.array_equal(want_ptr, self.pointers):
            raise ShardFormatError(f"{ipath}: sequence pointers do not add up with the lengths")
        if d < 1 or self.document_indices[0] != 0 or self.document_indices[-1] != n or (
                np.diff(self.document_indices) < 0).any():
            raise ShardFormatError(f"{ipath}: document indices are not a monotone 0..{n} partition")
        self.num_tokens = int(self.lengths.sum(dtype=np.int64))
        bsize = bpath.stat().st_size
        if bsize != self.num_tokens * self.dtype.itemsize:
            what = "shorter" if bsize < self.num_tokens * self.dtype.itemsize else "longer"
            raise ShardFormatError(
                f"{bpath}: {bsize} bytes is {what} than the index says ({self.num_tokens} tokens x {self.dtype.itemsize} bytes)")
        self._bin = (np.memmap(bpath, dtype=self.dtype, mode="r") if bsize
                     else np.zeros(0, dtype=self.dtype))
        self.starts = self.pointers // self.dtype.itemsize   # token offset of each sequence

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def num_docs(self) -> int:
        return len(self.document_indices) - 1

    @property
    def tokens(self) -> np.ndarray:
        """All tokens of the shard, a read-only memmap view [num_tokens]."""
        return self._bin

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sequence {i} out of range for {self.prefix} ({len(self)} sequences)")
        s = int(self.starts[i])
        return self._bin[s: s + int(self.lengths[i])]
