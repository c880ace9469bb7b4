"""One prepared data directory's split as an endless stream of packed samples.

Source epoch e: the documents (EOS already appended by data prep) are shuffled with a generator
seeded by (seed, source index, e), concatenated into one token stream and cut into
n = (tokens - 1) // seq_len samples of seq_len + 1 tokens that overlap by one token (sample q is
stream[q*seq_len : q*seq_len + seq_len + 1]; the tail shorter than a sample is left out of that
epoch). The order of the n samples is shuffled too. Sample k of the endless stream is sample
k % n of epoch k // n, so an exhausted source simply wraps into its next epoch.

Memory: static per-document tables (16 bytes per document) plus the index arrays of at most
EPOCH_CACHE epochs (document order, cumulative ends, sample order); never per-sample copies.
Reading in seq_id order touches each epoch's arrays once; random access across many epochs
rebuilds an epoch's arrays (O(documents)) whenever it left the cache.
"""
from __future__ import annotations

import copy
import mmap
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.format.indexed import IndexedReader, ShardFormatError, bin_path, idx_path
from pipeline.format.manifest import MANIFEST_NAME, Manifest, ShardEntry
from pipeline.format.verify import bad_token, out_of_vocab

EPOCH_CACHE = 2   # epochs of index arrays kept per source (a batch may straddle an epoch boundary)
FAULT_AROUND = 64 << 10   # a page fault may map this much around it (Linux fault_around_bytes)


@dataclass(frozen=True)
class Piece:
    """A contiguous run of one document that is part of a sample."""
    shard: int        # index into SourceStream.shard_prefixes
    doc: int          # document index within the shard
    offset: int       # first token, relative to the document start
    length: int       # number of tokens
    start: int        # first token, relative to the shard's .bin


@dataclass(frozen=True)
class _Epoch:
    doc_order: np.ndarray      # [num_docs] source-global document ids in stream order
    doc_end: np.ndarray        # int64 [num_docs] stream position just past each of them
    sample_order: np.ndarray   # [num_samples] stream sample index of each epoch sample


def _refuse_out_of_vocab(reader: IndexedReader, entry: ShardEntry, vocab_size: int) -> None:
    """The manifest says the shard holds ids >= vocab_size: name the first such document."""
    hit = out_of_vocab(reader, vocab_size)
    if hit is None:
        raise UserError(f"{reader.prefix.parent / MANIFEST_NAME}: shard {entry.prefix}: max_id "
                        f"{entry.max_id} >= vocab size {vocab_size}, yet no such token is in it")
    raise bad_token(bin_path(reader.prefix), *hit, vocab_size)


def _index_dtype(n: int) -> np.dtype:
    return np.dtype(np.int32) if n < 2 ** 31 else np.dtype(np.int64)


class SourceStream:
    """Packed samples of the `split` shards of one prepared directory (see the module docstring)."""

    def __init__(self, data_dir: Path, manifest: Manifest, split: str, seq_len: int, seed: int,
                 index: int):
        self.data_dir, self.seq_len, self.seed, self.index = data_dir, seq_len, seed, index
        entries = manifest.shards_of(split)
        if not entries:
            raise UserError(f"{data_dir / MANIFEST_NAME}: no '{split}' shards")
        self.shard_prefixes = [e.prefix for e in entries]
        self.shard_sources = [e.source for e in entries]
        self.readers: list[IndexedReader] = []
        starts, lengths, first = [], [], [0]
        for e in entries:
            try:
                r = IndexedReader(data_dir / e.prefix)
            except ShardFormatError as err:
                raise UserError(str(err)) from None
            if (r.num_docs, r.num_tokens) != (e.num_docs, e.num_tokens):
                raise UserError(f"{idx_path(r.prefix)}: {r.num_docs} documents / {r.num_tokens} tokens, "
                                f"but the manifest says {e.num_docs} / {e.num_tokens}")
            if e.max_id is not None and e.max_id >= manifest.tokenizer.vocab_size:
                _refuse_out_of_vocab(r, e, manifest.tokenizer.vocab_size)
            seq_end = np.zeros(len(r) + 1, dtype=np.int64)
            np.cumsum(r.lengths, out=seq_end[1:])
            doc_start = seq_end[r.document_indices]            # documents may span sequences
            starts.append(doc_start[:-1])
            lengths.append(np.diff(doc_start))
            first.append(first[-1] + r.num_docs)
            self.readers.append(r)
        self._doc_start = np.concatenate(starts)   # int64 [num_docs] first token in its shard
        self._doc_len = np.concatenate(lengths)    # int64 [num_docs]
        self.shard_first_doc = np.asarray(first, dtype=np.int64)  # source-wide doc index
        self.num_docs = len(self._doc_len)
        self.num_tokens = int(self._doc_len.sum())
        self.num_samples = (self.num_tokens - 1) // seq_len if self.num_tokens else 0
        if self.num_samples < 1:
            raise UserError(f"{data_dir}: the '{split}' split has {self.num_tokens} tokens, "
                            f"fewer than one sample of seq_len + 1 = {seq_len + 1}")
        self._epochs: OrderedDict[int, _Epoch] = OrderedDict()
        self.members: np.ndarray | None = None     # see subset

    def subset(self, members: np.ndarray, index: int) -> SourceStream:
        """The same stream over only the documents `members` (sorted source-wide ids, e.g. one
        group's), seeded by `index`; shares this stream's readers and tables. Document ids
        (Piece.doc, num_docs) stay those of the whole source."""
        sub = copy.copy(self)
        sub.index, sub.members, sub._epochs = index, members, OrderedDict()
        sub.num_tokens = int(self._doc_len[members].sum())
        sub.num_samples = max((sub.num_tokens - 1) // self.seq_len, 0)
        return sub

    def _epoch(self, e: int) -> _Epoch:
        ep = self._epochs.get(e)
        if ep is None:
            rng = np.random.default_rng([self.seed, self.index, e])
            if self.members is None:
                doc_order = rng.permutation(self.num_docs).astype(_index_dtype(self.num_docs))
            else:
                doc_order = self.members[rng.permutation(len(self.members))]
            sample_order = rng.permutation(self.num_samples).astype(_index_dtype(self.num_samples))
            ep = _Epoch(doc_order, np.cumsum(self._doc_len[doc_order]), sample_order)
            self._epochs[e] = ep
            while len(self._epochs) > EPOCH_CACHE:
                self._epochs.popitem(last=False)
        else:
            self._epochs.move_to_end(e)
        return ep

    def pieces(self, k: int) -> list[Piece]:
        """The document runs that make up sample k of the endless stream, in order."""
        e, i = divmod(k, self.num_samples)
        ep = self._epoch(e)
        pos = int(ep.sample_order[i]) * self.seq_len
        need = self.seq_len + 1
        j = int(np.searchsorted(ep.doc_end, pos, side="right"))   # first document ending after pos
        out = []
        while need:
            doc, end = int(ep.doc_order[j]), int(ep.doc_end[j])
            n = min(need, end - pos)
            if n > 0:
                shard = int(np.searchsorted(self.shard_first_doc, doc, side="right")) - 1
                offset = pos - (end - int(self._doc_len[doc]))
                out.append(Piece(shard, doc - int(self.shard_first_doc[shard]), offset, n,
                                 int(self._doc_start[doc]) + offset))
            need -= n
            pos += n
            j += 1
        return out

    def read(self, pieces: list[Piece], out: np.ndarray) -> int:
        """Copy the tokens of `pieces` into `out` (int64 [seq_len + 1]); returns an upper bound
        on the bytes of mapping this made resident."""
        pos = nbytes = 0
        for p in pieces:
            tokens = self.readers[p.shard].tokens
            out[pos: pos + p.length] = tokens[p.start: p.start + p.length]
            pos += p.length
            nbytes += p.length * tokens.itemsize + FAULT_AROUND
        return nbytes

    def release_pages(self) -> None:
        """Drop the mapped shard pages from this process's resident set (they stay in the page
        cache and fault back in on the next read), so RSS does not grow with the data read."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        for r in self.readers:
            mm = getattr(r.tokens, "_mmap", None)   # np.memmap's mapping; absent for empty shards
            if mm is not None:
                mm.madvise(mmap.MADV_DONTNEED)
