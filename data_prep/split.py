"""Deterministic document-level train/val split.

A document goes to "val" when a keyed 64-bit BLAKE2b hash of its UTF-8 bytes falls below
`val_fraction * 2**64`. The decision depends only on (text, seed, val_fraction): not on the
document's position, the source order, the worker count or the partition, and exact duplicates
always land on the same side (no train/val leakage through duplicates).
"""
from __future__ import annotations

import hashlib

from pipeline.errors import UserError

SPLITS = ("train", "val")


class DocSplitter:
    def __init__(self, val_fraction: float, seed: int = 0):
        if not 0.0 <= val_fraction < 1.0:
            raise UserError(f"--val-fraction: must be in [0, 1), got {val_fraction}")
        self.val_fraction = val_fraction
        self.seed = seed
        self._threshold = int(val_fraction * 2**64)
        self._key = b"lai-split:%d" % seed

    def split_of(self, data: bytes) -> str:
        """"train" or "val" for a document given as its UTF-8 bytes."""
        if not self._threshold:
            return "train"
        h = hashlib.blake2b(data, digest_size=8, key=self._key).digest()
        return "val" if int.from_bytes(h, "little") < self._threshold else "train"

    def to_json(self) -> dict:
        return {"val_fraction": self.val_fraction, "seed": self.seed, "rule": "blake2b-64(text, key=seed) < fraction"}
