"""Memory across epochs: a document whose sequences were valued harmful is down-weighted (and,
weighted strongly enough, skipped) when it comes round again, in the next epoch or as part of
another packed sequence.

Per document d of the training data, an exponential moving average m_d of the normalised scores
(lai.filter.normalize) of the sequences it was trained in; per sequence j, the prior

    p_j = sum_d tokens_jd * m_d / sum_d tokens_jd     over j's documents seen before (0 if none)

and the score the filter policy sees

    score_j = n_j + lai.memory.weight * p_j           n_j: j's normalised value this step

after which every document of j records the observation: m_d <- n_j the first time, then
m_d <- decay * m_d + (1 - decay) * n_j (lai.memory.decay). Observations start after
lai.warmup_steps (earlier values come from a barely trained model). Every rank scores the whole
global micro-batch with the same table, so the table is global state: identical on every rank,
saved once in the checkpoint (4 bytes per document of the training data).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from pipeline.errors import need

DocKeys = list[tuple[int, int, int]]   # one sequence's documents: (source, document, tokens)


class Span(Protocol):
    """A run of one document's tokens in a sequence (pipeline.data.DocSpan)."""
    @property
    def source(self) -> str: ...                   # its lai-prep source name

    @property
    def num_tokens(self) -> int: ...


class Documents(Protocol):
    """Where sequences come from: the training data's documents (pipeline.data.PackedDataset).
    lai.memory.weight reads num_docs and document_keys; lai.filter.kind=oracle reads
    prepared_sources and locate."""

    @property
    def num_docs(self) -> list[int]: ...          # documents per source

    def document_keys(self, seq_id: int) -> DocKeys: ...

    @property
    def prepared_sources(self) -> list[str]: ...  # the lai-prep source names in the data

    def locate(self, seq_id: int) -> Sequence[Span]: ...   # the sequence's document runs, in order


@dataclass
class MemorySettings:
    """lai.memory: memory across epochs (read by the Selector and DocumentMemory)."""
    weight: float | None = None        # > 0: the score adds this times the document's
                                       # remembered score; None: 1.0 for lai.filter.kind=lai with
                                       # a normalised value where the training documents are
                                       # known (the trainer) and lai.unit=sequence, else 0
    decay: float = 0.5                 # weight of the older observations per new one

    def check(self) -> None:
        """ValueError `lai.memory.<field>: ...` naming the first bad field."""
        w = self.weight
        need(w is None or (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0),
             "lai.memory.weight", f"must be a finite number >= 0, got {w!r}")
        need(0 <= self.decay < 1, "lai.memory.decay", f"must be in [0, 1), got {self.decay}")


class DocumentMemory:
    def __init__(self, num_docs: list[int], s: MemorySettings):
        s.check()
        self.decay = s.decay
        self.table = [torch.full((n,), float("nan"), dtype=torch.float32) for n in num_docs]

    def prior(self, keys: list[DocKeys]) -> torch.Tensor:
        """float64 [len(keys)]: each sequence's token-weighted mean memory (0: nothing seen)."""
        out = torch.zeros(len(keys), dtype=torch.float64)
        for i, docs in enumerate(keys):
            num = den = 0.0
            for source, doc, tokens in docs:
                m = float(self.table[source][doc])
                if m == m:                          # seen before (not NaN)
                    num, den = num + tokens * m, den + tokens
            out[i] = num / den if den else 0.0
        return out

    def observe(self, keys: list[DocKeys], scores: torch.Tensor) -> None:
        """Record each sequence's normalised score for its documents (non-finite: skipped)."""
        for docs, score in zip(keys, scores.tolist()):
            if score != score or abs(score) == float("inf"):
                continue
            for source, doc, _ in docs:
                t = self.table[source]
                old = float(t[doc])
                t[doc] = score if old != old else self.decay * old + (1 - self.decay) * score

    def state_dict(self) -> dict:
        return {"decay": self.decay, "table": [t.clone() for t in self.table]}

    def load_state_dict(self, d: dict) -> None:
        sizes = [t.numel() for t in d["table"]]
        if sizes != [t.numel() for t in self.table]:
            raise ValueError(f"lai memory: the checkpoint's documents per source {sizes} differ "
                             f"from this data's {[t.numel() for t in self.table]}")
        self.table = [t.clone().to(torch.float32) for t in d["table"]]
