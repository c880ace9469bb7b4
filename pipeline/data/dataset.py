"""PackedDataset: weighted mix of prepared data directories as one global, rank-agnostic sequence
of packed samples, addressed by a global sequence id.

    seq_id --blend--> (source s, k-th sample of s) --source epoch k // n_s--> document runs

The order is fully determined by (seed, data manifests, weights, seq_len): per source and source
epoch a seeded document shuffle and sample shuffle (see source.py), and a deterministic blend whose
source proportions match the weights over any window (see blend.py).

With `mixing=True` the weights change during training (lai.mixing), so no fixed blend exists:
the loader allocates each global micro-batch's slots to sources from the current weights
(mixture.py), and a seq_id names its sample directly, seq_id = k * S + s (the k-th sample of
source s of S), so it still maps back to its documents without the weights' history.
With `groups=True` too (lai.mixing.groups) the mixture's sources are (prepared source, group) arms
(groups.py): `streams`, `weights` and `source_names` are the arms'.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.blend import blend_schedule
from pipeline.data.groups import group_arms
from pipeline.data.source import SourceStream
from pipeline.errors import UserError
from pipeline.format.indexed import bin_path
from pipeline.format.manifest import MANIFEST_NAME, load_manifest
from pipeline.format.verify import bad_token

RELEASE_EVERY_BYTES = 256 << 20


@dataclass(frozen=True)
class DocSpan:
    """A sample covers tokens [token_offset, token_offset + num_tokens) of document `doc` (index
    within shard `shard`, the shard's prefix name in its data directory) of source `source`."""
    source: str
    shard: str
    doc: int
    token_offset: int
    num_tokens: int


def _check_sources(sources) -> list[tuple[Path, float]]:
    if not sources:
        raise UserError("data.sources: no data sources given")
    out = []
    for i, item in enumerate(sources):
        try:
            path, weight = item
            weight = float(weight)
        except (TypeError, ValueError):
            raise UserError(f"data.sources[{i}]: expected (data_dir, weight), got {item!r}") from None
        if not (math.isfinite(weight) and weight > 0):
            raise UserError(f"data.sources[{i}]: weight must be a positive number, got {weight}")
        out.append((Path(path), weight))
    return out


class PackedDataset:
    """Samples of seq_len + 1 tokens from the `split` shards of weighted prepared data directories.

    samples_per_epoch = the sum over sources of the samples in one pass over each source; epoch =
    seq_id // samples_per_epoch. With weights proportional to source sizes an epoch sees each
    source about once; otherwise sources wrap into their next epoch at their own pace.
    `mixing`: the weights are only the initial ones of a dynamic mixture (see the module doc).
    `release_every_bytes`: once reads may have made this many bytes of the mapped shards resident,
    those pages are dropped from the resident set, so host memory stays flat over long runs.
    Not thread-safe (per-epoch index caches): use one instance per thread.
    """

    def __init__(self, sources: Sequence[tuple[str | Path, float]], seq_len: int, *,
                 split: str = "train", seed: int = 0, mixing: bool = False, groups: bool = False):
        if split not in ("train", "val"):
            raise UserError(f"split: expected 'train' or 'val', got {split!r}")
        if not isinstance(seq_len, int) or seq_len < 1:
            raise UserError(f"data.seq_len: must be a positive integer, got {seq_len!r}")
        if not isinstance(seed, int) or seed < 0:
            raise UserError(f"seed: must be a non-negative integer, got {seed!r}")
        checked = _check_sources(sources)
        manifests = [load_manifest(d) for d, _ in checked]
        tok0 = manifests[0].tokenizer
        for (d, _), m in zip(checked[1:], manifests[1:]):
            if m.tokenizer.sha256 != tok0.sha256:
                first = checked[0][0]
                use = f"{'spm' if tok0.kind == 'sentencepiece' else 'hf'}:{first / tok0.path}"
                raise UserError(
                    f"{d / MANIFEST_NAME}: tokenizer sha256 {m.tokenizer.sha256[:12]} differs from "
                    f"{first / MANIFEST_NAME} ({tok0.sha256[:12]}); all sources must share one "
                    f"tokenizer: prepare {d} again with lai-prep --tokenizer {use} ...")
        if groups and not mixing:
            raise ValueError("PackedDataset: groups=True needs mixing=True")
        self.seq_len, self.split, self.seed, self.mixing = seq_len, split, seed, mixing
        self.groups = groups
        self.weights = [w for _, w in checked]
        self.streams = [SourceStream(d, m, split, seq_len, seed, i)
                        for i, ((d, _), m) in enumerate(zip(checked, manifests))]
        self._shard_index: dict[tuple[str, str], tuple[int, int]] = {}   # (source, shard) -> stream, shard
        for i, st in enumerate(self.streams):
            for j, key in enumerate(zip(st.shard_sources, st.shard_prefixes)):
                if key in self._shard_index:
                    other = self.streams[self._shard_index[key][0]].data_dir
                    raise UserError(f"{st.data_dir}: shard {key[1]} of source '{key[0]}' is also in {other}; "
                                    "give the sources distinct names (lai-prep --source NAME=KIND...)")
                self._shard_index[key] = (i, j)
        # one name per weighted source (a directory may hold several prepared sources)
        self.source_names = ["+".join(dict.fromkeys(st.shard_sources)) for st in self.streams]
        if groups:
            self._split_into_arms(manifests)
        self._blend = blend_schedule(self.weights)
        self.samples_per_epoch = sum(st.num_samples for st in self.streams)
        self.tokenizer = tok0                     # the sources' shared TokenizerEntry
        self.tokenizer_path = checked[0][0] / tok0.path
        self.fingerprint = self._fingerprint(manifests)
        self.release_every_bytes = RELEASE_EVERY_BYTES
        self._bytes_since_release = 0

    def _split_into_arms(self, manifests) -> None:
        """Replace the directories' streams by their (source, group) arms (groups.py)."""
        arms: list[tuple[SourceStream, float, str]] = []
        first: dict[int, int] = {}
        for st, w, m in zip(self.streams, self.weights, manifests):
            first[st.index] = len(arms)
            arms += group_arms(st, m, w, len(arms))
        self._shard_index = {key: (first[i], j) for key, (i, j) in self._shard_index.items()}
        self._owners = set(first.values())      # the arm that document_keys names a directory by
        self.streams = [a for a, _, _ in arms]
        self.weights = [w for _, w, _ in arms]
        self.source_names = [n for _, _, n in arms]

    def _fingerprint(self, manifests) -> str:
        """Hash of everything that determines the sample order (not of paths: data may move)."""
        ident = {"seq_len": self.seq_len, "split": self.split, "seed": self.seed,
                 "blend": self._blend.quota.tolist(), **({"mixing": True} if self.mixing else {}),
                 **({"groups": [m.groups for m in manifests]} if self.groups else {}),
                 "data": [[m.tokenizer.sha256, [(s.prefix, s.num_tokens, s.bin_sha256)
                                                 for s in m.shards_of(self.split)]] for m in manifests]}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    def _pieces(self, seq_id: int):
        if not isinstance(seq_id, (int, np.integer)) or seq_id < 0:
            raise IndexError(f"seq_id must be a non-negative integer, got {seq_id!r}")
        if self.mixing:
            k, s = divmod(int(seq_id), len(self.streams))
        else:
            s, k = self._blend.assign(int(seq_id))
        return self.streams[s], self.streams[s].pieces(k)

    def seq_ids(self, source: np.ndarray, k: np.ndarray) -> np.ndarray:
        """int64 seq_ids of the k-th samples of sources `source` (mixing=True only)."""
        if not self.mixing:
            raise ValueError("seq_ids(source, k): only for a dataset with mixing=True")
        return np.asarray(k, dtype=np.int64) * len(self.streams) + np.asarray(source, np.int64)

    def source_of(self, seq_ids) -> np.ndarray:
        """int64 index into `source_names` of each seq_id's source."""
        ids = np.asarray(seq_ids, dtype=np.int64)
        if self.mixing:
            return ids % len(self.streams)
        return self._blend.source[ids % self._blend.period].astype(np.int64)

    def sample(self, seq_id: int, out: np.ndarray | None = None) -> np.ndarray:
        """The tokens of global sample `seq_id`: int64 [seq_len + 1] (written into `out` if given)."""
        stream, pieces = self._pieces(seq_id)
        if out is None:
            out = np.empty(self.seq_len + 1, dtype=np.int64)
        self._bytes_since_release += stream.read(pieces, out)
        if self._bytes_since_release >= self.release_every_bytes:
            for st in self.streams:
                st.release_pages()
            self._bytes_since_release = 0
        return out

    def check_tokens(self, samples: np.ndarray, seq_ids: np.ndarray) -> None:
        """The loader's guard on every batch, before it reaches a model: a UserError naming the
        shard file and document if a token of `samples` (int64 [n, seq_len + 1], global ids
        `seq_ids`) is outside [0, vocab_size). Costs a min and a max over the batch."""
        if not samples.size or (samples.min() >= 0 and samples.max() < self.vocab_size):
            return
        row, col = (int(i[0]) for i in np.nonzero((samples < 0) | (samples >= self.vocab_size)))
        seq_id = int(seq_ids[row])
        for span in self.locate(seq_id):
            if col < span.num_tokens:
                path = bin_path(self.data_dir(span.source, span.shard) / span.shard)
                raise bad_token(path, span.doc, int(samples[row, col]), self.vocab_size)
            col -= span.num_tokens

    def locate(self, seq_id: int) -> list[DocSpan]:
        """Which document runs global sample `seq_id` is made of, in order (exact: their tokens
        concatenated are `sample(seq_id)`)."""
        stream, pieces = self._pieces(seq_id)
        return [DocSpan(stream.shard_sources[p.shard], stream.shard_prefixes[p.shard], p.doc,
                        p.offset, p.length) for p in pieces]

    def target_runs(self, seq_id: int) -> np.ndarray:
        """int64 [seq_len]: for each target position t of sample `seq_id` (its token t + 1), the
        index into `locate(seq_id)` of the document run holding it (lai.unit=document)."""
        ends = np.cumsum([span.num_tokens for span in self.locate(seq_id)])
        return np.searchsorted(ends, np.arange(1, self.seq_len + 1), side="right")

    @property
    def prepared_sources(self) -> list[str]:
        """The names of the lai-prep sources (--source NAME=...) in the data, in order (one
        directory may hold several; `source_names` names the weighted directories)."""
        return list(dict.fromkeys(n for st in self.streams for n in st.shard_sources))

    @property
    def num_docs(self) -> list[int]:
        """Documents of each source (this split), in source order (groups: a directory's documents
        on its first arm, which document_keys names them by, 0 on its other arms)."""
        return [st.num_docs if not self.groups or i in self._owners else 0
                for i, st in enumerate(self.streams)]

    def document_keys(self, seq_id: int) -> list[tuple[int, int, int]]:
        """(source index, document index within the source, tokens) of each document run of
        sample `seq_id`: a document's identity across epochs (pipeline.lai.selection.memory)."""
        out = []
        for span in self.locate(seq_id):
            i, j = self._shard_index[(span.source, span.shard)]
            out.append((i, int(self.streams[i].shard_first_doc[j]) + span.doc, span.num_tokens))
        return out

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id

    def document_tokens(self, source: str, shard: str, doc: int) -> np.ndarray:
        """All tokens of document `doc` of `shard` (a read-only view of the mapped shard; a
        Megatron document may span several stored sequences)."""
        i, j = self._shard_index[(source, shard)]
        reader = self.streams[i].readers[j]
        first, end = (int(k) for k in reader.document_indices[doc:doc + 2])
        start = int(reader.starts[first])
        stop = int(reader.starts[end]) if end < len(reader) else reader.num_tokens
        return reader.tokens[start:stop]

    def span_tokens(self, span: DocSpan) -> np.ndarray:
        """The tokens a DocSpan refers to (a read-only view of the mapped shard)."""
        tokens = self.document_tokens(span.source, span.shard, span.doc)
        return tokens[span.token_offset: span.token_offset + span.num_tokens]

    def data_dir(self, source: str, shard: str) -> Path:
        """The prepared directory holding `shard` of `source` (for reading documents back)."""
        return self.streams[self._shard_index[(source, shard)][0]].data_dir

    def summary(self) -> str:
        tokens = sum(st.num_tokens for st in self.streams)
        docs = sum(st.num_docs for st in self.streams)
        return (f"{len(self.streams)} source(s), {self.split}: {docs:,} documents, {tokens:,} tokens, "
                f"{self.samples_per_epoch:,} samples/epoch of {self.seq_len}+1 tokens")
