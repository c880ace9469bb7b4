"""The Megatron indexed-dataset byte format: our writer/reader against an independent
implementation from the byte layout alone (support/indexed.py), and every kind of corrupt shard."""
from __future__ import annotations

import contextlib
import errno
import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline.format.indexed import IndexedReader, IndexedWriter, ShardFormatError, token_dtype
from support.faults import tmpfs
from support.indexed import MAGIC, ref_read, ref_write


def random_sequences(n: int, high: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, high, size=int(rng.integers(0, 50))) for _ in range(n)]


@pytest.mark.parametrize("vocab", [512, 65499, 70000])
def test_writer_bytes_equal_reference_and_read_back(tmp_path, vocab):
    dtype = token_dtype(vocab)
    assert dtype == (np.uint16 if vocab < 65500 else np.int32)
    seqs = random_sequences(37, vocab, seed=vocab)
    with IndexedWriter(tmp_path / "ours", dtype) as w:
        for s in seqs:
            w.add_document(s)
    ref_write(tmp_path / "ref", seqs, dtype)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"ours{ext}").read_bytes() == (tmp_path / f"ref{ext}").read_bytes()
    rdtype, rseqs, doc = ref_read(tmp_path / "ours")
    assert rdtype == dtype and np.array_equal(doc, np.arange(len(seqs) + 1))
    r = IndexedReader(tmp_path / "ours")
    assert len(r) == r.num_docs == len(seqs) and r.num_tokens == sum(map(len, seqs))
    for s, a, b in zip(seqs, rseqs, (r[i] for i in range(len(r)))):
        assert np.array_equal(s, a) and np.array_equal(s, b)


def test_reader_accepts_megatron_multi_sequence_documents(tmp_path):
    seqs = random_sequences(10, 1000, seed=3)
    ref_write(tmp_path / "m", seqs, np.uint16, document_indices=[0, 3, 3, 7, 10])
    r = IndexedReader(tmp_path / "m")
    assert r.num_docs == 4 and list(r.document_indices) == [0, 3, 3, 7, 10]
    assert all(np.array_equal(r[i], s) for i, s in enumerate(seqs))
    assert np.array_equal(r.tokens, np.concatenate(seqs).astype(np.uint16))


def test_killed_writer_leaves_no_shard(tmp_path):
    with pytest.raises(RuntimeError):
        with IndexedWriter(tmp_path / "x", np.uint16) as w:
            w.add_document([1, 2, 3])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("how", ["finalize", "with"])
def test_finalize_on_a_full_disk_leaves_nothing(tmp_path, how):
    """3000 one-token documents: the .bin (6 kB) fits a 64 kB tmpfs, the .bin plus the .idx
    (60 kB) do not, so the index write fails inside finalize; called directly (as data_prep's
    ShardStreams does) or by the context manager, it removes every file it wrote."""
    with tmpfs(tmp_path / "full", "64k") as full:
        with pytest.raises(OSError) as e:
            w = IndexedWriter(full / "x", np.uint16)
            with (w if how == "with" else contextlib.nullcontext()):
                for i in range(3000):
                    w.add_document([i])
                if how == "finalize":
                    w.finalize()
        left = sorted(p.name for p in full.iterdir())
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(full / "x.bin"), e.value
    assert left == []


def _good(tmp_path: Path) -> Path:
    ref_write(tmp_path / "s", random_sequences(8, 300, seed=1) + [np.arange(5)], np.uint16)
    return tmp_path / "s"


def _patch(path: Path, offset: int, data: bytes) -> None:
    b = bytearray(path.read_bytes())
    b[offset:offset + len(data)] = data
    path.write_bytes(bytes(b))


CORRUPTIONS = {
    "wrong magic": (lambda p: _patch(Path(f"{p}.idx"), 0, b"NOTANIDX\x00"), "wrong magic"),
    "version": (lambda p: _patch(Path(f"{p}.idx"), 9, struct.pack("<Q", 2)), "unsupported version"),
    "dtype code": (lambda p: _patch(Path(f"{p}.idx"), 17, b"\x63"), "unknown dtype code"),
    "count too big": (lambda p: _patch(Path(f"{p}.idx"), 18, struct.pack("<Q", 10)), "does not match"),
    "truncated index": (lambda p: Path(f"{p}.idx").write_bytes(Path(f"{p}.idx").read_bytes()[:-8]), "does not match"),
    "tiny index": (lambda p: Path(f"{p}.idx").write_bytes(MAGIC), "truncated index"),
    "pointers": (lambda p: _patch(Path(f"{p}.idx"), 34 + 4 * 9 + 8, struct.pack("<q", 7)), "pointers"),
    "doc indices": (lambda p: _patch(Path(f"{p}.idx"), 34 + 12 * 9 + 8, struct.pack("<q", 99)), "document indices"),
    "bin shorter": (lambda p: Path(f"{p}.bin").write_bytes(Path(f"{p}.bin").read_bytes()[:-2]), "shorter than the index"),
    "bin longer": (lambda p: Path(f"{p}.bin").write_bytes(Path(f"{p}.bin").read_bytes() + b"\0\0"), "longer than the index"),
    "bin missing": (lambda p: Path(f"{p}.bin").unlink(), "missing shard file"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupt_shards_raise_one_line_error_naming_the_file(tmp_path, name):
    prefix = _good(tmp_path)
    IndexedReader(prefix)                                  # intact: fine
    corrupt, message = CORRUPTIONS[name]
    corrupt(prefix)
    with pytest.raises(ShardFormatError) as e:
        IndexedReader(prefix)
    msg = str(e.value)
    assert message in msg and "\n" not in msg and str(tmp_path / "s") in msg
