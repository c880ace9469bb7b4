"""Mixing over groups (lai.mixing.groups): each group of each prepared source becomes an arm.

`lai-prep --groups K` records every document's group in its shard's `.docs.npy` and each group's
top terms and train tokens in the manifest (data_prep.groups). An arm is the SourceStream of one
directory restricted to the documents of one (prepared source, group); its initial weight is the
directory's weight times the arm's share of the directory's tokens in this split, and its name
the group's label, e.g. `web/g3 [casino, bonus, free]`. Groups with fewer tokens than one sample
are left out.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.source import SourceStream
from pipeline.errors import UserError
from pipeline.format.manifest import MANIFEST_NAME, Manifest, group_label
from pipeline.format.provenance import read_docs


def _doc_groups(stream: SourceStream) -> np.ndarray:
    """int16 [num_docs]: each document's group, from the shards' .docs.npy."""
    parts = []
    for prefix in stream.shard_prefixes:
        rows = read_docs(stream.data_dir / prefix)
        if rows is None or "group" not in (rows.dtype.names or ()):
            raise UserError(f"{stream.data_dir / prefix}.docs.npy: no document groups "
                            "(lai.mixing.groups needs data prepared with lai-prep --groups K)")
        parts.append(rows["group"])
    return np.concatenate(parts)


def group_arms(stream: SourceStream, manifest: Manifest, weight: float, first_index: int
               ) -> list[tuple[SourceStream, float, str]]:
    """(arm stream, initial weight, name) of each group of the directory `stream` reads."""
    missing = [s for s in dict.fromkeys(stream.shard_sources) if s not in manifest.groups]
    if missing:
        raise UserError(f"{stream.data_dir / MANIFEST_NAME}: source '{missing[0]}' has no groups "
                        "(lai.mixing.groups needs data prepared with lai-prep --groups K)")
    groups = _doc_groups(stream)
    names = list(dict.fromkeys(stream.shard_sources))
    source = np.repeat(np.array([names.index(s) for s in stream.shard_sources], dtype=np.int16),
                       np.diff(stream.shard_first_doc))        # int16 [num_docs]
    arms: list[tuple[SourceStream, str]] = []
    for i, name in enumerate(names):
        info = manifest.groups[name]
        for g in range(info["k"]):
            members = np.flatnonzero((source == i) & (groups == g))
            arm = stream.subset(members, first_index + len(arms))
            if arm.num_samples >= 1:
                arms.append((arm, group_label(name, g, info["terms"][g])))
    if not arms:
        raise UserError(f"{Path(stream.data_dir)}: no group has a sample of {stream.seq_len + 1} tokens")
    total = sum(a.num_tokens for a, _ in arms)
    return [(a, weight * a.num_tokens / total, n) for a, n in arms]
