"""RankLoader: this rank's slice of each global micro-batch, resumable from a sample count.

Global micro-batch k covers seq_ids [k*G, (k+1)*G) with G = micro_batch * world; rank r gets the
r-th contiguous slice of micro_batch of them. The only state is `samples_consumed` (global), so
resume is O(1), and resuming with another world size (same G) continues the same global order.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from pipeline.data.dataset import PackedDataset
from pipeline.errors import UserError


class RankLoader:
    def __init__(self, dataset: PackedDataset, micro_batch: int, rank: int, world: int,
                 samples_consumed: int = 0, pin_memory: bool = False):
        if micro_batch < 1 or world < 1 or not 0 <= rank < world:
            raise UserError(f"RankLoader: need micro_batch >= 1 and 0 <= rank < world, "
                            f"got micro_batch={micro_batch}, rank={rank}, world={world}")
        if samples_consumed < 0:
            raise UserError(f"RankLoader: samples_consumed must be >= 0, got {samples_consumed}")
        self.dataset, self.micro_batch, self.rank, self.world = dataset, micro_batch, rank, world
        self.samples_consumed = int(samples_consumed)
        self.pin_memory = pin_memory      # page-locked batches: asynchronous copies to a GPU

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.world

    def next_batch(self) -> dict[str, torch.Tensor]:
        """{"input_ids", "targets": int64 [micro_batch, seq_len], "seq_ids": int64 [micro_batch]}."""
        first = self.samples_consumed + self.rank * self.micro_batch
        seq_ids = np.arange(first, first + self.micro_batch, dtype=np.int64)
        x = np.empty((self.micro_batch, self.dataset.seq_len + 1), dtype=np.int64)
        for row, i in zip(x, seq_ids):
            self.dataset.sample(int(i), out=row)
        self.dataset.check_tokens(x, seq_ids)          # ids outside the vocabulary: one line
        self.samples_consumed += self.global_batch
        ids, targets = (torch.from_numpy(np.ascontiguousarray(a)) for a in (x[:, :-1], x[:, 1:]))
        if self.pin_memory:
            ids, targets = ids.pin_memory(), targets.pin_memory()
        return {"input_ids": ids, "targets": targets, "seq_ids": torch.from_numpy(seq_ids)}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"samples_consumed": self.samples_consumed, "fingerprint": self.dataset.fingerprint}

    def load_state_dict(self, d: dict) -> None:
        """Resume at d["samples_consumed"]; the data, weights, seq_len and seed must be the ones the
        state was saved with (micro_batch and world may differ)."""
        if d.get("fingerprint") != self.dataset.fingerprint:
            raise UserError("loader state: saved for different data, weights, seq_len or seed "
                            f"(fingerprint {str(d.get('fingerprint'))[:12]} != {self.dataset.fingerprint[:12]})")
        consumed = int(d["samples_consumed"])
        if consumed < 0:
            raise UserError(f"loader state: samples_consumed must be >= 0, got {consumed}")
        self.samples_consumed = consumed
