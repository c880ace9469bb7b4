"""lai.unit=document: values, losses and sketches of the document segments of packed rows,
against brute-force autograd (pipeline.lai.kernels.units)."""
from __future__ import annotations

import torch

from pipeline.lai import LAIScorer
from pipeline.lai import ScoreSettings
from pipeline.lai.kernels.capture import LayerInputCapture
from pipeline.lai.kernels.grads import shift_labels
from pipeline.lai.kernels.units import unit_losses, unit_targets, units_of
from pipeline.lai.kernels.xent import token_cross_entropy
from support.lai import batch, tiny_model


def _segments(b: int, t: int, seed: int = 3) -> torch.Tensor:
    """Random document runs per row: non-decreasing span indices, some rows one document."""
    g = torch.Generator().manual_seed(seed)
    steps = (torch.rand(b, t, generator=g) < 0.15).long()
    steps[0] = 0                                    # row 0: a single document
    return steps.cumsum(1) + (torch.arange(b) % 2).unsqueeze(1)   # odd rows start at run 1


def test_units_number_rows_then_segments_and_skip_ignored_targets():
    seg = torch.tensor([[0, 0, 1, 1, 2], [1, 1, 1, 3, 3]])
    tgt = torch.tensor([[5, 6, -100, -100, 7], [1, 2, 3, 4, -100]])
    u = units_of(seg, tgt)
    assert u.rows.tolist() == [0, 0, 1, 1] and u.segment.tolist() == [0, 2, 1, 3]
    assert u.tokens.tolist() == [2, 1, 3, 1]
    assert u.index.tolist() == [[0, 0, -1, -1, 1], [2, 2, 2, 3, -1]]
    assert unit_targets(u, tgt).tolist()[1] == [-100, -100, -100, -100, 7]


def test_unit_losses_are_the_mean_over_each_units_tokens_and_differentiable():
    logits = torch.randn(3, 12, 17, dtype=torch.float64, requires_grad=True)
    tgt = torch.randint(0, 17, (3, 12))
    tgt[1, 4:6] = -100
    u = units_of(_segments(3, 12), tgt)
    got = unit_losses(token_cross_entropy(logits, tgt), u)
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt, reduction="none")
    for k in range(u.count):
        mask = u.index == k
        assert torch.allclose(got[k], ce[mask].mean())
    got.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[1, 4:6].abs().sum() == 0


def _head_grads(model, ids, targets):
    """Per-row gradients of the LM head weight of the mean loss over each row's targets."""
    rows = []
    head = model.get_output_embeddings().weight
    for j in range(ids.shape[0]):
        logits = model(input_ids=ids[j:j + 1]).logits
        ce = token_cross_entropy(logits, targets[j:j + 1])
        loss = ce.sum() / (targets[j] != -100).sum()
        rows.append(torch.autograd.grad(loss, head)[0].flatten())
    return torch.stack(rows)


def test_exact_unit_values_equal_the_head_gradient_inner_products():
    """layers=head, token_pair: value(u) = mean over the other units z of <grad_W l_z,
    grad_W l_u>, l_u the mean loss over unit u's tokens alone (the row's other targets
    ignored) -- exact, by autograd on the LM head."""
    model = tiny_model(tie_word_embeddings=False)
    ids = batch(4, 16, 128)
    targets = shift_labels(ids)
    u = units_of(_segments(*targets.shape), targets)
    scorer = LAIScorer(ScoreSettings(pairing="token_pair", method="exact", layers="head",
                                     reference="local").resolved())
    with LayerInputCapture(model, "head") as cap:
        logits = model(input_ids=ids).logits
    got = scorer.values(cap.inputs, logits, targets, units=u)
    g = _head_grads(model, ids[u.rows], unit_targets(u, targets))
    k = g @ g.T
    want = (k.sum(1) - k.diagonal()) / (u.count - 1)
    assert u.count > ids.shape[0] and torch.allclose(got, want, rtol=1e-8, atol=1e-14)


def test_unit_sketch_tracks_the_exact_unit_values():
    """The token_pair sketch of units (per-token sketches rescaled to 1 / N_u and summed over
    each unit) is the exact unit kernel's unbiased estimate: at 2^18 it ranks the same."""
    model = tiny_model(dtype=torch.float32)
    ids = batch(6, 24, 128)
    targets = shift_labels(ids)
    u = units_of(_segments(*targets.shape), targets)
    with LayerInputCapture(model, "linear") as cap:
        logits = model(input_ids=ids).logits
    kw = dict(pairing="token_pair", layers="linear", reference="local")
    exact = LAIScorer(ScoreSettings(method="exact", **kw).resolved()).values(
        cap.inputs, logits, targets, units=u)
    sketch = LAIScorer(ScoreSettings(method="sketch", sketch_dim=1 << 18, **kw).resolved()).values(
        cap.inputs, logits, targets, units=u)
    r = torch.corrcoef(torch.stack([exact, sketch]))[0, 1]
    assert r > 0.95, (r, exact, sketch)
    one = units_of(torch.zeros_like(targets), targets)          # one unit per row = the rows
    rows = LAIScorer(ScoreSettings(method="sketch", sketch_dim=1 << 12, **kw).resolved())
    assert torch.allclose(rows.values(cap.inputs, logits, targets, units=one),
                          rows.values(cap.inputs, logits, targets), rtol=1e-5, atol=1e-12)


def test_document_units_refuse_what_values_whole_sequences():
    import pytest

    from pipeline.lai import FilterSettings, LAISettings, MemorySettings
    cases = [({"score": ScoreSettings(pairing="aligned")}, "the aligned sketch is per sequence"),
             ({"filter": FilterSettings(kind="lai"), "memory": MemorySettings(weight=1.0)},
              "the memory remembers sequences"),
             ({"filter": FilterSettings(kind="full_gradient"), "enabled": False},
              "full_gradient scores whole sequences")]
    for fields, msg in cases:
        with pytest.raises(ValueError, match=f"^lai.unit: document: .*{msg}"):
            LAISettings(unit="document", **fields).resolved()
    assert LAISettings(unit="document", score=ScoreSettings(pairing="aligned",
                                                            method="exact")).resolved()
    assert LAISettings(unit="document").resolved(has_documents=True).memory.weight == 0.0


def test_document_values_from_the_loss_folded_vocabulary_side_equal_the_scorers_own():
    """lai.unit=document with the vocabulary side the loss folded (per_unit_loss with the
    scorer's VocabRequest, as the trainer runs it): the same values as the scorer's own pass."""
    from pipeline.lai.kernels.grads import per_unit_loss
    model, ids = tiny_model("llama"), batch(3, 12, 128)
    tgt = shift_labels(ids)
    units = units_of(_segments(3, 12), tgt)
    scorer = LAIScorer(ScoreSettings(reference="local", method="sketch",
                                     sketch_dim=1024).resolved(), 5)
    with LayerInputCapture(model) as cap:
        logits = model(input_ids=ids).logits
    request = scorer.vocab_request(None, logits)
    per_unit_loss(logits, tgt, units, vocab=request)
    own = scorer.values(cap.inputs, logits, tgt, units=units)
    folded = scorer.values(cap.inputs, logits, tgt, units=units, vocab=request.tokens)
    assert torch.allclose(folded, own, rtol=1e-5, atol=1e-7 * own.abs().max()), (folded, own)
