"""Parallel tokenization: a process pool with one tokenizer per worker and batched encoding.

`encode_stream` takes batches of documents and yields their token arrays in submission order,
whatever the worker count, so the output is deterministic. At most `2 * workers + 2` batches are in
flight, so memory stays bounded for corpora of any size. With one worker it encodes in-process.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from data_prep.groups import GroupModel
from pipeline.format.tokenizer import Tokenizer, load_tokenizer


@dataclass
class EncodedBatch:
    """The documents of one batch, each followed by EOS, back to back in `tokens`."""
    tokens: np.ndarray     # [sum(lengths)] token dtype
    lengths: np.ndarray    # [num_docs] int64, EOS included
    groups: np.ndarray | None = None   # [num_docs] int16 with lai-prep --groups

    def documents(self) -> Iterator[np.ndarray]:
        start = 0
        for n in self.lengths.tolist():
            yield self.tokens[start:start + n]
            start += n


def encode_documents(tok: Tokenizer, texts: list[str], dtype: np.dtype) -> EncodedBatch:
    """Encode texts and append EOS to each. Raises OverflowError if an id does not fit `dtype`
    (cannot happen for a dtype chosen by prep.choose_dtype)."""
    arrays = [np.array(ids, dtype=dtype) for ids in tok.encode_batch(texts)]   # C-speed list -> array
    lengths = np.fromiter((a.size + 1 for a in arrays), dtype=np.int64, count=len(arrays))
    ends = np.cumsum(lengths)
    flat = np.empty(int(ends[-1]) if len(ends) else 0, dtype=dtype)
    start = 0
    for a, end in zip(arrays, ends.tolist()):
        flat[start:end - 1] = a
        start = end
    flat[ends - 1] = tok.eos_id
    return EncodedBatch(flat, lengths)


_WORKER: dict[str, Any] = {}


def _init_worker(kind: str, path: str, dtype: str, groups: GroupModel | None = None) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    _WORKER["tok"] = load_tokenizer(kind, path)
    _WORKER["dtype"] = np.dtype(dtype)
    _WORKER["groups"] = groups


def _encode_in_worker(texts: list[str]) -> EncodedBatch:
    enc = encode_documents(_WORKER["tok"], texts, _WORKER["dtype"])
    if _WORKER["groups"] is not None:
        enc.groups = _WORKER["groups"].assign(texts)
    return enc


def encode_stream(batches: Iterable[tuple[Any, list[str]]], *, kind: str, path: str | os.PathLike,
                  dtype: np.dtype, workers: int, groups: GroupModel | None = None
                  ) -> Iterator[tuple[Any, EncodedBatch]]:
    """Encode (meta, texts) batches; yields (meta, EncodedBatch) in input order (with each
    document's group when `groups` is given)."""
    init = (kind, str(path), np.dtype(dtype).str, groups)
    if workers <= 1:
        _init_worker(*init)
        for meta, texts in batches:
            yield meta, _encode_in_worker(texts)
        return
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=init) as pool:
        pending: deque = deque()
        for meta, texts in batches:
            pending.append((meta, pool.apply_async(_encode_in_worker, (texts,))))
            if len(pending) >= 2 * workers + 2:
                meta0, res = pending.popleft()
                yield meta0, res.get()
        while pending:
            meta0, res = pending.popleft()
            yield meta0, res.get()


def batched(items: Iterable[Any], size_of, max_items: int = 256, max_size: int = 1 << 18) -> Iterator[list[Any]]:
    """Group items into lists of at most `max_items` items or about `max_size` total size."""
    batch: list[Any] = []
    size = 0
    for item in items:
        batch.append(item)
        size += size_of(item)
        if len(batch) >= max_items or size >= max_size:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
