"""An independent implementation of the Megatron indexed-dataset layout
(megatron.core.datasets.indexed_dataset, v1), written from the byte layout alone (struct + numpy,
no project imports): the reference our writer and reader are checked against."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}


def ref_write(prefix: Path, sequences: list[np.ndarray], dtype, document_indices=None) -> None:
    """Write a shard like Megatron's IndexedDatasetBuilder: sequences back to back in .bin; the
    .idx header, int32 lengths, int64 byte pointers, int64 document indices."""
    dtype = np.dtype(dtype)
    lengths = np.array([len(s) for s in sequences], dtype=np.int32)
    pointers = np.concatenate([[0], np.cumsum(lengths.astype(np.int64) * dtype.itemsize)[:-1]]).astype(np.int64)
    if document_indices is None:
        document_indices = np.arange(len(sequences) + 1)
    doc = np.asarray(document_indices, dtype=np.int64)
    with open(f"{prefix}.bin", "wb") as f:
        for s in sequences:
            f.write(np.asarray(s, dtype=dtype).tobytes())
    with open(f"{prefix}.idx", "wb") as f:
        f.write(MAGIC + struct.pack("<Q", 1) + struct.pack("<B", CODES[dtype]))
        f.write(struct.pack("<Q", len(sequences)) + struct.pack("<Q", len(doc)))
        f.write(lengths.tobytes() + pointers[: len(sequences)].tobytes() + doc.tobytes())


def ref_read(prefix: Path) -> tuple[np.dtype, list[np.ndarray], np.ndarray]:
    """Parse a shard from the byte layout: (dtype, sequences, document indices)."""
    idx = Path(f"{prefix}.idx").read_bytes()
    assert idx[:9] == MAGIC
    version, code, n, d = struct.unpack_from("<QBQQ", idx, 9)
    assert version == 1
    dtype = {8: np.dtype(np.uint16), 4: np.dtype(np.int32)}[code]
    off = 9 + 8 + 1 + 8 + 8
    lengths = np.frombuffer(idx, np.int32, n, off)
    pointers = np.frombuffer(idx, np.int64, n, off + 4 * n)
    doc = np.frombuffer(idx, np.int64, d, off + 12 * n)
    assert off + 12 * n + 8 * d == len(idx)
    data = Path(f"{prefix}.bin").read_bytes()
    seqs = [np.frombuffer(data, dtype, int(ln), int(p)) for ln, p in zip(lengths, pointers)]
    return dtype, seqs, doc
