"""RankLoader: this rank's slice of each global micro-batch, resumable from its state.

Global micro-batch k holds G = micro_batch * world samples; rank r gets the r-th contiguous slice
of micro_batch of them. With a static blend they are seq_ids [k*G, (k+1)*G) and the only state is
`samples_consumed` (global), so resume is O(1). With a dataset built with mixing=True the sources
of each global micro-batch follow the weights current at it (`set_weights`; mixture.py), and the
state adds the mixture's (weights, carried credit, samples drawn per source). Either way every
rank computes the same global order, and resuming with another world size (same G) continues it.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from pipeline.data.dataset import PackedDataset
from pipeline.data.mixture import DynamicMixture
from pipeline.errors import UserError


class RankLoader:
    def __init__(self, dataset: PackedDataset, micro_batch: int, rank: int, world: int,
                 samples_consumed: int = 0, pin_memory: bool = False, segments: bool = False):
        if micro_batch < 1 or world < 1 or not 0 <= rank < world:
            raise UserError(f"RankLoader: need micro_batch >= 1 and 0 <= rank < world, "
                            f"got micro_batch={micro_batch}, rank={rank}, world={world}")
        if samples_consumed < 0:
            raise UserError(f"RankLoader: samples_consumed must be >= 0, got {samples_consumed}")
        self.dataset, self.micro_batch, self.rank, self.world = dataset, micro_batch, rank, world
        self.samples_consumed = int(samples_consumed)
        self.pin_memory = pin_memory      # page-locked batches: asynchronous copies to a GPU
        self.segments = segments          # batches carry each target's document run
        self.mixture = DynamicMixture(dataset.weights) if dataset.mixing else None
        if self.mixture is not None and samples_consumed:
            raise UserError("RankLoader: a dynamic mixture resumes from its state "
                            "(load_state_dict), not from a sample count")

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.world

    def set_weights(self, weights) -> None:
        """The sources' weights from the next global micro-batch on (mixing=True datasets)."""
        if self.mixture is None:
            raise ValueError("set_weights: the dataset has a static blend (mixing=False)")
        self.mixture.set_weights(weights)

    def _draw(self, n: int, mine: slice = slice(None)) -> np.ndarray:
        """int64: the `mine` part of the next n samples of the global order (not yet counted in
        samples_consumed; a mixture's draw is taken)."""
        if self.mixture is None:
            r = range(self.samples_consumed, self.samples_consumed + n)[mine]
            return np.arange(r.start, r.stop, dtype=np.int64)
        src, k = self.mixture.next_batch(n)
        return self.dataset.seq_ids(src[mine], k[mine])

    def next_batch(self) -> dict[str, torch.Tensor]:
        """{"input_ids", "targets": int64 [micro_batch, seq_len], "seq_ids": int64 [micro_batch]},
        and with `segments` "segments": int64 [micro_batch, seq_len], the document run of each
        target within its sample (PackedDataset.target_runs)."""
        first = self.rank * self.micro_batch
        batch = self.load(self._draw(self.global_batch, slice(first, first + self.micro_batch)))
        self.samples_consumed += self.global_batch
        return batch

    def next_pool(self, n: int) -> np.ndarray:
        """int64 [n]: the next n samples of the global order (all ranks' the same; lai.select
        draws a step's candidates with it), consumed."""
        ids = self._draw(n)
        self.samples_consumed += n
        return ids

    def load(self, seq_ids: np.ndarray) -> dict[str, torch.Tensor]:
        """The batch of samples `seq_ids` (int64 [n]), as next_batch returns it."""
        x = np.empty((len(seq_ids), self.dataset.seq_len + 1), dtype=np.int64)
        for row, i in zip(x, seq_ids):
            self.dataset.sample(int(i), out=row)
        self.dataset.check_tokens(x, seq_ids)          # ids outside the vocabulary: one line
        ids, targets = (torch.from_numpy(np.ascontiguousarray(a)) for a in (x[:, :-1], x[:, 1:]))
        out = {"input_ids": ids, "targets": targets}
        if self.segments:
            out["segments"] = torch.from_numpy(
                np.stack([self.dataset.target_runs(int(i)) for i in seq_ids]).astype(np.int64))
        if self.pin_memory:
            out = {k: v.pin_memory() for k, v in out.items()}
        return {**out, "seq_ids": torch.from_numpy(np.asarray(seq_ids, dtype=np.int64))}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        d = {"samples_consumed": self.samples_consumed, "fingerprint": self.dataset.fingerprint}
        if self.mixture is not None:
            d["mixture"] = self.mixture.state_dict()
        return d

    def load_state_dict(self, d: dict) -> None:
        """Resume at d["samples_consumed"] (and the saved mixture); the data, weights, seq_len,
        seed and mixing mode must be the ones the state was saved with (micro_batch and world
        may differ)."""
        if d.get("fingerprint") != self.dataset.fingerprint:
            raise UserError("loader state: saved for different data, weights, seq_len, seed or "
                            f"lai.mixing (fingerprint {str(d.get('fingerprint'))[:12]} != "
                            f"{self.dataset.fingerprint[:12]})")
        consumed = int(d["samples_consumed"])
        if consumed < 0:
            raise UserError(f"loader state: samples_consumed must be >= 0, got {consumed}")
        if self.mixture is not None:
            self.mixture.load_state_dict(d["mixture"])
        self.samples_consumed = consumed
