"""The three pairings of two sequences, one object each: its features, its exact kernel and its
sketch (PAIRINGS[name]; the settings' `lai.score.pairing` is one of these names).

    token_pair: K(z, j) = sum_l sum_{t,t'} <a_zt, a_jt'> <g_zt, g_jt'> = <Phi_z, Phi_j>,
                Phi_j = sum_l sum_t a^(l)_{j,t} (x) g_{j,t} (the ghost gradient inner product with
                every layer's output gradient replaced by the logit gradient)
    aligned:    (sum_l sum_t <a_zt, a_jt>) * (sum_t <g_zt, g_jt>)   (the paper's code)
    pooled:     (sum_l <abar_z, abar_j>) * <gbar_z, gbar_j>

Exact: `features` -> Features, then `ref_totals` (sum of K(z, j) over a reference) and
`self_kernel` (K(j, j)). Sketch: `sketch` -> a summed-reference sketch [B, k1 * k2] (token_pair:
the reference enters as one all-reduced sum) or Features of sketches (aligned, pooled: gathered,
the product kernel on them); `split` gives the (input side, vocabulary side) bucket counts of a
sketch size, `default_sketch_dim` the measured default (docs/FIDELITY.md: the smallest size with
Pearson >= 0.95 against exact).
Adam-aware scoring passes `weights` (precondition.InputWeights): every pairing is then the same
kernel on the weighted features (inputs by sqrt(c), logit gradients by sqrt(r_head)).
"""
from __future__ import annotations

import math

import torch

from .exact import product_self, product_totals, token_pair_self, token_pair_totals
from .features import Features, pooled_features, token_features
from .grads import compute_dtype
from .precondition import InputWeights
from .sketch import Kernels, aligned_vocab, input_side, pooled_vocab, vocab_chunks
from .units import Units, unit_mask


class Pairing:
    name: str
    default_sketch_dim: int
    # whether the sketch's vocabulary side is per token, C2(g_t) [B, T, k2] (what the loss can
    # fold: sketch.VocabRequest); aligned places the unfolded g by position instead
    per_token_vocab = True

    # -- exact ------------------------------------------------------------------------------
    def features(self, inputs: list[torch.Tensor], logits: torch.Tensor, targets: torch.Tensor,
                 weights: InputWeights | None = None) -> Features:
        return token_features(inputs, logits, targets, weights)

    def ref_totals(self, q: Features, r: Features) -> torch.Tensor:
        """sum_{z in r} K(z, j) for every sequence j of `q`; [B_q]."""
        return product_totals(q, r)

    def self_kernel(self, f: Features) -> torch.Tensor:
        """K(j, j) for every sequence of `f`; [B]."""
        return product_self(f)

    # -- sketch -----------------------------------------------------------------------------
    def split(self, sketch_dim: int) -> tuple[int, int]:
        """(k1, k2) buckets of the input and vocabulary sides of a `sketch_dim` sketch: the two
        sides sketched separately, k1 + k2 = sketch_dim (their kernel is a product of two Grams;
        a Kronecker sketch would have the variance of only min(k1, k2) buckets)."""
        check_sketch_dim(sketch_dim)
        return sketch_dim // 2, sketch_dim - sketch_dim // 2

    def sketch(self, inputs: list[torch.Tensor], logits: torch.Tensor, targets: torch.Tensor,
               valid: torch.Tensor, sketch_dim: int, seed: int, compiled: bool = False,
               weights: InputWeights | None = None, units: Units | None = None,
               vocab: torch.Tensor | None = None) -> torch.Tensor | Features:
        """This batch's sketch (inputs validated by the caller; `compiled`: sketch.Kernels;
        `units`: per unit, token_pair only; `vocab`: the vocabulary side per token, already
        folded by the loss (sketch.vocab_chunks), for pairings with `per_token_vocab`)."""
        raise NotImplementedError

    def _per_sequence(self, units: Units | None) -> None:
        if units is not None:
            raise ValueError(f"lai.unit=document: the {self.name} sketch is per sequence "
                             "(use lai.score.pairing=token_pair or lai.score.method=exact)")


class TokenPair(Pairing):
    name, default_sketch_dim = "token_pair", 1 << 18     # Pearson 0.895 at 2^16, 0.948 at 2^18

    def ref_totals(self, q: Features, r: Features) -> torch.Tensor:
        return token_pair_totals(q, r)

    def self_kernel(self, f: Features) -> torch.Tensor:
        return token_pair_self(f)

    def split(self, sketch_dim: int) -> tuple[int, int]:
        """k1 * k2 <= sketch_dim, k1 = floor(sqrt): S_j = sum_t C1(a_jt) (x) C2(g_jt)."""
        check_sketch_dim(sketch_dim)
        k1 = math.isqrt(sketch_dim)
        return k1, sketch_dim // k1

    def sketch(self, inputs, logits, targets, valid, sketch_dim, seed, compiled=False,
               weights=None, units: Units | None = None, vocab: torch.Tensor | None = None):
        """Per-sequence Kronecker sketches [B, k1 * k2] (summed over the reference); with
        `units` those of the units [P, k1 * k2] (pipeline.lai.kernels.units)."""
        k1, k2 = self.split(sketch_dim)
        kernels, dt = Kernels(compiled), compute_dtype(logits)
        cols, row = _sides(weights, dt, logits.device)
        # g = 0 at ignored positions: no mask on the input side
        ca = input_side(inputs, seed, k1, dt, None, kernels=kernels, cols=cols)   # [B, T, k1]
        chunks = vocab_chunks(logits, targets, valid, k2, seed, dt, kernels, row, vocab)
        if units is not None:
            return _unit_sketch(ca, chunks, valid, units).view(units.count, k1 * k2)
        out = ca.new_empty(logits.shape[0], k1 * k2)
        for sl, cg in chunks:
            torch.matmul(ca[sl].transpose(1, 2), cg, out=out[sl].view(-1, k1, k2))
        return out


def _unit_sketch(ca: torch.Tensor, chunks, valid: torch.Tensor, units: Units) -> torch.Tensor:
    """[P, k1, k2]: sum over each unit's positions of C1(a_t) (x) C2(g_t), with g rescaled from
    the row's 1 / N_row to the unit's 1 / N_u (ca [B, T, k1]; chunks: vocab_chunks)."""
    cg = torch.cat([part for _, part in chunks])                                    # [B, T, k2]
    scale = valid.sum(1).to(cg.dtype)[units.rows] / units.tokens.to(cg.dtype)      # [P]
    own = unit_mask(units).to(cg.dtype)                                             # [P, T]
    g = cg[units.rows] * (own * scale.unsqueeze(1)).unsqueeze(-1)                   # [P, T, k2]
    return torch.bmm(ca[units.rows].transpose(1, 2), g)


class Aligned(Pairing):
    name, default_sketch_dim = "aligned", 1 << 18        # Pearson 0.97 at 2^18
    per_token_vocab = False

    def sketch(self, inputs, logits, targets, valid, sketch_dim, seed, compiled=False,
               weights=None, units: Units | None = None, vocab: torch.Tensor | None = None):
        """Features of the two sides' sketches over (position, coordinate) [B, k1], [B, k2]."""
        self._per_sequence(units)
        assert vocab is None, "aligned folds no per-token vocabulary side"
        k1, k2 = self.split(sketch_dim)
        dt = compute_dtype(logits)
        cols, row = _sides(weights, dt, logits.device)
        ca = input_side(inputs, seed, k1, dt, valid.to(dt), cols=cols, aligned=True)
        return Features(ca, aligned_vocab(logits, targets, valid, k2, seed, dt, row))


class Pooled(Pairing):
    name, default_sketch_dim = "pooled", 1 << 12         # Pearson 0.98 already at 2^12

    def features(self, inputs, logits, targets, weights=None):
        return pooled_features(inputs, logits, targets, weights)

    def sketch(self, inputs, logits, targets, valid, sketch_dim, seed, compiled=False,
               weights=None, units: Units | None = None, vocab: torch.Tensor | None = None):
        """Features of the sketches of abar [B, k1] and gbar [B, k2]."""
        self._per_sequence(units)
        k1, k2 = self.split(sketch_dim)
        dt = compute_dtype(logits)
        mask = valid.to(dt)
        cols, row = _sides(weights, dt, logits.device)
        ca = input_side(inputs, seed, k1, dt, mask, pooled_n=mask.sum(1, keepdim=True),
                        cols=cols)
        cg = vocab.sum(1) if vocab is not None else \
            pooled_vocab(logits, targets, valid, k2, seed, dt, row)
        return Features(ca, cg)


def _sides(weights: InputWeights | None, dt: torch.dtype, device
           ) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
    """(input-side column weights, logit-side weight sqrt(r_head) [V]) of `weights`."""
    if weights is None:
        return None, None
    return weights.cols, weights.logit_side(dt, device)


def check_sketch_dim(sketch_dim) -> None:
    if not isinstance(sketch_dim, int) or isinstance(sketch_dim, bool) or sketch_dim < 4:
        raise ValueError(f"lai.score.sketch_dim: must be an int >= 4, got {sketch_dim!r}")


PAIRINGS: dict[str, Pairing] = {p.name: p for p in (TokenPair(), Aligned(), Pooled())}
