"""Selector: the values and keep mask of every micro-batch, as the run's LAI settings say.

    sel = Selector(settings, seed, comm, val_batches=lambda: [(input_ids, targets), ...],
                   moments=reader,                   # precondition=adam: the optimizer's moments
                   global_batch=G)                   # sequences per optimizer step
    sel.refresh(step, model)                         # Adam factors / val reference when due
    with sel.capture(model) as cap:
        logits = model(input_ids=input_ids).logits
    values, keep, value_norm = sel.select(step, cap, logits, targets, losses, seq_ids,
                                          input_ids=input_ids, model=model)

values: the LAI values when lai.enabled, else the filter's scores (NaN for filter=none); they are
what the ledger records, with value_norm, their z-score within the global micro-batch (the value
that means the same at every step: pipeline.lai.selection.normalize). keep: FilterPolicy(threshold, warmup,
cap) on the scores of the filter `lai.filter.kind` (pipeline.lai.selection.baselines) -- for kind=lai the
values normalised as lai.filter.normalize says -- the same global decision on every rank. The cap is a
budget per optimizer step of `global_batch` sequences, spent over its global micro-batches in
order (pipeline.lai.selection.policy); without `global_batch` every `select` is a whole step.
lai.score.precondition=adam: `refresh` re-reads Adam's second moments through `moments` (a
precondition.Moments reader: the trainer's works under ZeRO 0-3) every lai.score.precondition_every
steps, and at every step until the first optimizer step has made some; a val reference is
recomputed with the new factors.
"""
from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from typing import Callable, NamedTuple

import torch
from torch import nn

from pipeline.comm import Comm

from .baselines import FILTERS, FilterInput
from ..kernels.capture import LayerInputCapture
from .memory import DocumentMemory, Documents
from .normalize import normalize
from .policy import FilterPolicy
from ..kernels.precondition import AdamPreconditioner, Moments
from ..kernels.sketch import VocabRequest
from .scorer import LAIScorer
from .settings import LAISettings
from ..kernels.units import Units

Batches = Callable[[], list[tuple[torch.Tensor, torch.Tensor]]]


class Selection(NamedTuple):
    values: torch.Tensor              # float64 [B] (see the module doc)
    keep: torch.Tensor                # bool [B]
    value_norm: torch.Tensor          # float64 [B]: z-score of values in the global micro-batch


class Selector:
    """Collective: every rank calls `refresh` and `select` together. State (a checkpoint member,
    per rank): the cached val reference and the step it was computed at; the Adam factors and
    the step they were read at."""

    def __init__(self, settings: LAISettings, seed: int, comm: Comm | None = None,
                 val_batches: Batches | None = None, documents: Documents | None = None,
                 moments: Moments | None = None, global_batch: int | None = None):
        """`settings`: resolved (LAISettings.resolved; the run config's lai section is);
        `comm`: the data-parallel ranks (default: torch.distributed's default group, if any);
        `val_batches`: the val micro-batches (needed by lai.score.reference=val);
        `documents`: the training data, for lai.memory (its memory is `self.memory`) and
        lai.filter.kind=oracle;
        `moments`: reads Adam's second moments (needed by lai.score.precondition=adam);
        `global_batch`: sequences per optimizer step (None: each `select` is a whole step)."""
        if not settings.is_resolved:
            raise ValueError("Selector: needs resolved settings (LAISettings.resolved)")
        s = self.settings = settings
        self.seed, self.val_batches, self.documents = seed, val_batches, documents
        self.moments = moments
        self.memory = None
        if s.memory.weight:
            if documents is None:
                raise ValueError("lai.memory.weight: the selector needs the training documents")
            self.memory = DocumentMemory(documents.num_docs, s.memory)
        self.comm = comm or Comm.resolve()
        self.scorer = LAIScorer(s.score, seed) if s.enabled else None
        self.precond = None
        if self.scorer is not None and s.score.precondition == "adam":
            if moments is None:
                raise ValueError("lai.score.precondition=adam: the Selector needs a reader of "
                                 "the optimizer's second moments (moments=...)")
            self.precond = AdamPreconditioner(s.score.precondition_every, s.score.layers)
        if self.scorer is not None and s.score.reference == "val" and val_batches is None:
            raise ValueError("lai.score.reference=val: the Selector needs the val batches "
                             "(val_batches=...)")
        self.filter = FILTERS[s.filter.kind]
        if self.filter.check is not None:
            self.filter.check(s.filter, documents)
        own = self.filter.own_threshold          # random, loss, oracle: their scores' own cut
        self.policy = FilterPolicy(s.filter if own is None else
                                   dataclasses.replace(s.filter, threshold=own), s.warmup_steps)
        self.val_step: int | None = None
        self.global_batch = global_batch
        self._spent = (0, 0, 0)           # (step, sequences seen, excluded) of the current step

    def capture(self, model: nn.Module):
        """Context for the forward: records layer inputs when LAI is on."""
        if self.scorer is None:
            return nullcontext()
        return LayerInputCapture(model, self.scorer.s.layers)

    def vocab_request(self, cap, logits: torch.Tensor) -> VocabRequest | None:
        """For the loss of this forward (`cap` its capture): the vocabulary side of the sketch
        to fold in the same pass over the logits, then handed to `select` (None: nothing to
        sketch)."""
        if self.scorer is None:
            return None
        return self.scorer.vocab_request(self.scorer.input_weights(cap), logits)

    def refresh(self, step: int, model: nn.Module) -> None:
        """precondition=adam: new Adam factors when due. reference=val: (re)compute the cached
        val reference at the first step, then every lai.score.val_refresh_every steps and whenever the
        factors changed (forward only, in eval mode)."""
        s = self.settings.score
        if self.scorer is None:
            return
        changed = False
        if self.precond is not None:
            assert self.moments is not None            # __init__ refused adam without it
            changed = self.precond.refresh(step, model, self.moments)
            self.scorer.factors = self.precond.factors
        if s.reference != "val":
            return
        if not changed and self.val_step is not None \
                and step - self.val_step < s.val_refresh_every:
            return
        assert self.val_batches is not None            # reference=val resolves only with val data
        self.scorer.set_val_reference(model, self.val_batches(), group=self.comm)
        self.val_step = step

    @torch.no_grad()
    def select(self, step: int, cap, logits: torch.Tensor | None, targets: torch.Tensor | None,
               losses: torch.Tensor, seq_ids: torch.Tensor, *,
               input_ids: torch.Tensor | None = None, model: nn.Module | None = None,
               units: Units | None = None, vocab: VocabRequest | None = None) -> Selection:
        """Values, keep mask and normalised values for optimizer step `step` (1-based).
        `units` (lai.unit=document): everything is per unit [P] instead of per sequence [B]
        (`losses` the units' losses; `seq_ids` stay the rows'). `vocab`: vocab_request's
        request, filled by the loss."""
        values = None
        if self.scorer is not None:
            values = self.scorer.values(cap.inputs, logits, targets, group=self.comm,
                                        weights=self.scorer.input_weights(cap), units=units,
                                        vocab=None if vocab is None else vocab.tokens)
        ids, segments = (seq_ids, None) if units is None else \
            (seq_ids[units.rows.to(seq_ids.device)], units.segment)
        f = self.settings.filter
        score = self.filter.scores(FilterInput(step, ids, input_ids, targets, losses, model,
                                               values, self.comm, self.documents, segments,
                                               self.settings.score.include_self), f, self.seed)
        if self.filter.needs_lai and f.normalize != "none":
            score = normalize(score, f.normalize, self.comm)
        if self.memory is not None and step > self.settings.warmup_steps:
            score = self._remember(seq_ids, score)
        if score is None:
            keep = torch.ones_like(losses, dtype=torch.bool)
        else:
            # a non-finite score comes from non-finite logits, whose step is skipped anyway
            # (masked_loss flags it); the policy needs finite values to decide on the others
            finite = torch.nan_to_num(score, nan=0.0, posinf=0.0, neginf=0.0)
            keep = self._mask(finite, step) if units is None else \
                self.policy.decide(finite, step - 1, self.comm)[0]   # its own budget: units vary
            values = score if values is None else values
        if values is None:                # nothing scored (LAI off, filter none): no collective
            nan = torch.full_like(losses, float("nan"), dtype=torch.float64)
            return Selection(nan, keep, nan.clone())
        values = values.detach()
        return Selection(values, keep, normalize(values, "zscore", self.comm))

    def _mask(self, score: torch.Tensor, step: int) -> torch.Tensor:
        """The policy's keep mask within what is left of the step's budget
        (pipeline.lai.selection.policy; without a global batch, this call is the whole step)."""
        same_step = self.global_batch and self._spent[0] == step
        _, seen, excluded = self._spent if same_step else (step, 0, 0)
        n = score.numel() * self.comm.world             # local batches are equal-sized
        g, seen = self.global_batch or n, seen + n
        budget = self.policy.allowance(step - 1, g, seen) - excluded      # 0-based steps
        keep, _, dropped = self.policy.decide(score, step - 1, self.comm, budget)
        self._spent = (step, seen, excluded + dropped)
        return keep

    def _remember(self, seq_ids: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """score + lai.memory.weight * the documents' remembered scores, then this step's scores
        remembered; over the whole global micro-batch, so the memory is the same on every
        rank (pipeline.lai.selection.memory)."""
        assert self.documents is not None and self.memory is not None
        id_parts = self.comm.gather(seq_ids.detach().cpu())
        ids, scores = torch.cat(id_parts), torch.cat(self.comm.gather(score.detach().cpu()))
        keys = [self.documents.document_keys(int(i)) for i in ids]
        combined = scores.to(torch.float64) + self.settings.memory.weight * self.memory.prior(keys)
        self.memory.observe(keys, scores)
        offset = sum(p.numel() for p in id_parts[:self.comm.rank])
        return combined[offset:offset + seq_ids.numel()].to(score.device)

    def state_dict(self) -> dict:
        return {"scorer": self.scorer.state_dict() if self.scorer is not None else None,
                "val_step": self.val_step,
                "precond": self.precond.state_dict() if self.precond is not None else None}

    def load_state_dict(self, d: dict) -> None:
        """A val reference cached under other LAI options, and Adam factors of another layer
        set, are dropped (recomputed at the next step)."""
        restored = True
        if self.scorer is not None and d.get("scorer") is not None:
            restored = self.scorer.load_state_dict(d["scorer"])
        self.val_step = d.get("val_step") if restored else None
        if self.precond is not None:
            assert self.scorer is not None             # a preconditioner only with a scorer
            self.precond.load_state_dict(d.get("precond") or {})
            self.scorer.factors = self.precond.factors
            if self.precond.factors is None:
                self.val_step = None      # its features were weighted with the dropped factors
