"""The corruption operators: act on token arrays and (for line shuffling) on text through the
corpus's own tokenizer, so the same operator corrupts a whole document (benchmarks.corrupt) or
a packed training sequence (benchmarks.fidelity)."""
from __future__ import annotations

import numpy as np

CORRUPTIONS = ("duplicate", "repeat", "shuffle", "garbage")
CORRUPTION_DOC = {
    "duplicate": "the document is replaced by one fixed boilerplate text (256 tokens of a real "
                 "document) tiled to its length: mass duplication, memorised fast, lowest loss",
    "repeat": "the document is replaced by a short span of itself (1-4 tokens) tiled to its length: "
              "degenerate repetition, low loss once learned",
    "shuffle": "the document's lines in random order: every line is real code, the order is not; "
               "per-token loss close to clean text",
    "garbage": "uniformly random token ids: trivially high loss",
}


class Corruptor:
    """Applies one corruption type to a 1-D token array; output has the same length.

    tokenizer: the corpus's pipeline.format.tokenizer.Tokenizer (needed by "shuffle" only); special ids
    (< num_special) are never produced by "garbage"; boilerplate: the token array "duplicate"
    copies (documents start at its beginning; `offset` = None picks a random window, as a
    packed sequence would see it). All randomness comes from the rng passed in.
    """

    def __init__(self, vocab_size: int, tokenizer=None, num_special: int = 4, boilerplate=None):
        self.vocab_size = vocab_size
        self.tokenizer = tokenizer
        self.num_special = num_special
        self.boilerplate = None if boilerplate is None else np.asarray(boilerplate, dtype=np.int64)

    def __call__(self, kind: str, tokens: np.ndarray, rng: np.random.Generator,
                 offset: int | None = 0) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64)
        n = len(tokens)
        if n == 0:
            return tokens.copy()
        if kind == "duplicate":
            if self.boilerplate is None or len(self.boilerplate) == 0:
                raise ValueError("the 'duplicate' corruption needs a boilerplate token array")
            b = self.boilerplate
            start = int(rng.integers(0, len(b))) if offset is None else offset
            return np.resize(np.roll(b, -start), n).astype(np.int64)
        if kind == "garbage":
            return rng.integers(self.num_special, self.vocab_size, size=n, dtype=np.int64)
        if kind == "repeat":
            period = int(rng.integers(1, 5))
            start = int(rng.integers(0, max(1, n - period)))
            span = tokens[start:start + period]
            return np.resize(span, n).astype(np.int64)
        if kind == "shuffle":
            if self.tokenizer is None:
                raise ValueError("the 'shuffle' corruption needs the corpus tokenizer")
            text = self.tokenizer.decode([int(t) for t in tokens if t >= self.num_special])
            lines = text.split("\n")
            rng.shuffle(lines)
            ids = np.asarray(self.tokenizer.encode("\n".join(lines)), dtype=np.int64)
            if len(ids) == 0:
                return tokens.copy()
            # same length as the input: trim, or continue with the shuffled text again
            return np.resize(ids, n).astype(np.int64)
        raise ValueError(f"unknown corruption {kind!r} (choose from {', '.join(CORRUPTIONS)})")
