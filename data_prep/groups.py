"""Groups nobody declared (`lai-prep --groups K`): every document of a source goes to one of K
groups, so that source mixing can weight (source, group) arms (CLIMB-style cluster-then-mix).

Embedding: the lowercase words (`[a-z0-9_]+`) of the document's first EMBED_CHARS characters,
unigrams and bigrams hashed (CRC-32) into DIM buckets, weighted (1 + log tf) * idf. Clustering:
spherical k-means (k-means++ seeding, Lloyd iterations, cosine) per source on a bounded sample:
the SAMPLE documents whose seeded hash of the text hash is smallest (a bottom-k sample: fixed by
(seed, texts), not by order, part or worker count), so memory does not grow with the corpus.
Assignment: argmax over the centroids of the dot product (equal to the cosine's argmax), in the
tokenizer pool, per batch. Each group is named by its top terms: the words whose share of the
group's sampled documents most exceeds their share of the whole sample.
"""
from __future__ import annotations

import hashlib
import heapq
import re
import zlib
from collections import Counter
from dataclasses import dataclass

import numpy as np

from pipeline.errors import UserError

DIM = 1 << 12          # hashed feature buckets
EMBED_CHARS = 16384    # characters of each document that are embedded
SAMPLE = 2048          # documents per source the centroids are fitted on
ITERATIONS = 50
TOP_TERMS = 3
MAX_GROUPS = 256
_WORD = re.compile(r"[a-z0-9_]+")
_CACHE_MAX = 1 << 20
_hashes: dict[str, int] = {}


def _word_hashes(words: list[str]) -> np.ndarray:
    """int64 [n]: CRC-32 of each word (cached per process, the cache bounded)."""
    if len(_hashes) > _CACHE_MAX:
        _hashes.clear()
    out = np.empty(len(words), dtype=np.int64)
    for i, w in enumerate(words):
        h = _hashes.get(w)
        if h is None:
            h = _hashes[w] = zlib.crc32(w.encode())
        out[i] = h
    return out


def words(text: str) -> list[str]:
    return _WORD.findall(text[:EMBED_CHARS].lower())


def features(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hashed n-gram counts of a batch: (doc int64 [nnz], bucket int64 [nnz], count float64
    [nnz]), sorted by (doc, bucket)."""
    keys = []
    for d, text in enumerate(texts):
        h = _word_hashes(words(text))
        grams = np.concatenate([h, (h[:-1] * 1000003 + h[1:] + 7)]) % DIM
        keys.append(grams + d * DIM)
    flat = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
    uniq, counts = np.unique(flat, return_counts=True)
    return uniq // DIM, uniq % DIM, counts.astype(np.float64)


@dataclass
class GroupModel:
    """One source's groups: idf float64 [DIM], centroids float64 [K, DIM] (unit rows, idf
    folded in), and each group's top terms."""
    idf: np.ndarray
    centroids: np.ndarray
    terms: list[list[str]]

    @property
    def k(self) -> int:
        return self.centroids.shape[0]

    def assign(self, texts: list[str]) -> np.ndarray:
        """int16 [len(texts)]: each document's group (0 for a document without words)."""
        doc, bucket, count = features(texts)
        w = 1.0 + np.log(count)
        scores = np.stack([np.bincount(doc, weights=w * c[bucket], minlength=len(texts))
                           for c in self.centroids * self.idf]) if len(texts) else np.zeros((1, 0))
        return np.argmax(scores, axis=0).astype(np.int16)

    def to_json(self) -> dict:
        return {"k": self.k, "terms": self.terms, "idf": self.idf.tolist(),
                "centroids": self.centroids.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> GroupModel:
        return cls(np.asarray(d["idf"], dtype=np.float64),
                   np.asarray(d["centroids"], dtype=np.float64), [list(t) for t in d["terms"]])


class Reservoir:
    """The SAMPLE documents with the smallest seeded key of their text hash (bottom-k)."""

    def __init__(self, seed: int, size: int = SAMPLE):
        self.key, self.size = b"lai-groups:%d" % seed, size
        self._heap: list[tuple[int, int, str]] = []      # (-key, text hash, text prefix)

    def offer(self, text: str, h: int) -> None:
        key = int.from_bytes(hashlib.blake2b(h.to_bytes(8, "little"), digest_size=8,
                                             key=self.key).digest(), "little")
        item = (-key, h, text[:EMBED_CHARS])
        if len(self._heap) < self.size:
            heapq.heappush(self._heap, item)
        elif -key > self._heap[0][0]:
            heapq.heapreplace(self._heap, item)

    def texts(self) -> list[str]:
        return [t for _, _, t in sorted(self._heap, reverse=True)]   # by key, ascending


def _unit_rows(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means on unit rows x [n, D]: (centroids [k, D] unit rows, labels [n])."""
    picked = [x[rng.integers(len(x))]]
    for _ in range(1, k):                               # k-means++ on the cosine distance
        d = np.clip(1.0 - np.max(x @ np.stack(picked).T, axis=1), 0.0, None)
        picked.append(x[rng.choice(len(x), p=d / d.sum())] if d.sum() > 0 else x[rng.integers(len(x))])
    c = np.stack(picked)
    labels = np.full(len(x), -1)
    for _ in range(ITERATIONS):
        sim = x @ c.T
        new = np.argmax(sim, axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for g in range(k):
            members = x[labels == g]
            c[g] = members.sum(axis=0) if len(members) else x[np.argmin(sim.max(axis=1))]
        c = _unit_rows(c)
    return c, labels


def _top_terms(texts: list[str], labels: np.ndarray, k: int) -> list[list[str]]:
    """Per group, the TOP_TERMS words whose document share in the group most exceeds their
    document share in the sample (ties by the word)."""
    docs = [set(w for w in words(t) if len(w) > 2 and not w.isdigit()) for t in texts]
    total = Counter(w for d in docs for w in d)
    out = []
    for g in range(k):
        mine = [d for d, lab in zip(docs, labels) if lab == g]
        inside = Counter(w for d in mine for w in d)
        n = max(len(mine), 1)
        lift = sorted(inside, key=lambda w: (-(inside[w] / n - total[w] / len(docs)), w))
        out.append(lift[:TOP_TERMS])
    return out


def fit_groups(texts: list[str], k: int, seed: int) -> GroupModel:
    """The groups of a source from its sampled texts (deterministic for (texts, k, seed))."""
    doc, bucket, count = features(texts)
    df = np.bincount(bucket, minlength=DIM)
    idf = np.log((1.0 + len(texts)) / (1.0 + df)) + 1.0
    x = np.zeros((len(texts), DIM))
    x[doc, bucket] = (1.0 + np.log(count)) * idf[bucket]
    x = _unit_rows(x)
    k_eff = min(k, len(texts))
    c, labels = (_kmeans(x, k_eff, np.random.default_rng([seed, k])) if k_eff
                 else (np.zeros((0, DIM)), np.zeros(0, dtype=np.int64)))
    if k_eff < k:                                       # fewer documents than groups: empty rest
        c = np.concatenate([c, np.zeros((k - k_eff, DIM))])
    return GroupModel(idf, c, _top_terms(texts, labels, k))


def check_groups(k: int) -> None:
    if not 0 <= k <= MAX_GROUPS:
        raise UserError(f"--groups: must be in [0, {MAX_GROUPS}] (0: none), got {k}")

