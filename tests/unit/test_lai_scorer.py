"""LAIScorer: val reference cache, checkpoint round trip, config checks."""
import pytest
import torch

from pipeline.lai import LAIScorer, LayerInputCapture, lai_values
from pipeline.lai import ScoreSettings
from pipeline.lai.kernels.grads import shift_labels
from support.lai import batch, tiny_model


@pytest.mark.parametrize("method", ["exact", "sketch"])
@pytest.mark.parametrize("pairing", ["token_pair", "pooled"])
def test_val_reference_round_trip(tmp_path, method, pairing):
    model = tiny_model("gpt_neox")
    ids, val = batch(3, 10, 128, seed=1), batch(4, 10, 128, seed=2)
    kw = dict(pairing=pairing, method=method, layers="linear", include_self=False,
              sketch_dim=1024 if method == "sketch" else None)
    settings = ScoreSettings(reference="val", **kw).resolved()
    scorer = LAIScorer(settings, 7)
    with pytest.raises(ValueError, match="set_val_reference"):
        scorer.values([torch.zeros(3, 10, 4)], torch.zeros(3, 10, 128), shift_labels(ids))
    scorer.set_val_reference(model, [(val[:2], shift_labels(val[:2])),
                                     (val[2:], shift_labels(val[2:]))])
    torch.save(scorer.state_dict(), tmp_path / "lai.pt")
    restored = LAIScorer(settings, 7)
    restored.load_state_dict(torch.load(tmp_path / "lai.pt", weights_only=True))
    with LayerInputCapture(model) as cap:
        logits = model(input_ids=ids).logits
    v = restored.values(cap.inputs, logits, shift_labels(ids))
    assert torch.equal(v, scorer.values(cap.inputs, logits, shift_labels(ids)))
    expected = lai_values(model, ids, ref_input_ids=val, seed=7,
                          **{k: kw[k] for k in ("pairing", "method", "sketch_dim")})
    assert torch.allclose(v, expected, rtol=1e-9, atol=0)
    other = LAIScorer(settings, 8)   # a cache made with other hashes:
    assert not other.load_state_dict(scorer.state_dict())     # dropped, to be recomputed
    with pytest.raises(ValueError, match="set_val_reference"):
        other.values(cap.inputs, logits, shift_labels(ids))
    assert restored.load_state_dict(scorer.state_dict())


def test_captured_inputs_share_memory_for_shared_inputs():
    model = tiny_model("llama")
    with LayerInputCapture(model) as cap:
        model(input_ids=batch(2, 6, 128))
    q, k, v = cap.inputs[:3]                    # q/k/v projections read the same tensor
    assert q is k is v and cap.inputs[3] is not q
    assert len({id(x) for x in cap.inputs}) == 2 * 4 + 1


def test_bad_options():
    with pytest.raises(ValueError, match="reference"):
        LAIScorer(ScoreSettings(reference="batch", method="exact").resolved())
    with pytest.raises(ValueError, match="targets"):
        model = tiny_model("gpt2")
        with LayerInputCapture(model) as cap:
            logits = model(input_ids=batch(2, 6, 128)).logits
        LAIScorer(ScoreSettings(reference="local", method="exact").resolved()).values(cap.inputs,
                                                                                      logits, torch.zeros(2, 5).long())


def test_selector_recomputes_a_val_reference_cached_under_other_options():
    """Resuming with changed LAI options: a cached val reference that no longer fits is dropped
    and recomputed at the next step; one that fits is restored as it was."""
    import dataclasses

    from pipeline.lai import LAISettings, Selector
    model = tiny_model("gpt_neox")
    val = batch(4, 10, 128, seed=2)
    calls = []

    def val_batches():
        calls.append(1)
        return [(val, shift_labels(val))]
    s = LAISettings(score=ScoreSettings(reference="val", method="exact", val_refresh_every=10)
                    ).resolved(has_val=True)
    first = Selector(s, seed=0, val_batches=val_batches)
    first.refresh(1, model)
    first.refresh(5, model)                        # not due yet
    assert len(calls) == 1 and first.val_step == 1
    state = first.state_dict()
    same = Selector(s, seed=0, val_batches=val_batches)
    same.load_state_dict(state)
    same.refresh(5, model)
    assert len(calls) == 1 and same.val_step == 1
    pooled = dataclasses.replace(s, score=dataclasses.replace(s.score, pairing="pooled"))
    other = Selector(pooled, seed=0, val_batches=val_batches)
    other.load_state_dict(state)
    assert other.val_step is None
    other.refresh(5, model)
    assert len(calls) == 2 and other.val_step == 5


@pytest.mark.parametrize("pairing", ["token_pair", "pooled"])
def test_values_from_the_loss_folded_vocabulary_side_equal_the_scorers_own(pairing):
    """The trainer's path (the loss folds the sketch's vocabulary side for the scorer's
    VocabRequest, the scorer takes those tokens) gives the values of the scorer's own pass
    over the logits; exact scoring asks for nothing, nor does aligned (not per token), nor a
    sketch whose vocabulary side has more buckets than the vocabulary (it would outgrow the
    logits)."""
    from pipeline.lai import per_sequence_loss
    model, ids = tiny_model("llama"), batch(4, 10, 128)        # vocabulary 128
    targets = shift_labels(ids)
    scorer = LAIScorer(ScoreSettings(reference="local", method="sketch", pairing=pairing,
                                     sketch_dim=200).resolved(), 5)
    with LayerInputCapture(model) as cap:
        logits = model(input_ids=ids).logits
    request = scorer.vocab_request(None, logits)
    per_sequence_loss(logits, targets, vocab=request)
    own = scorer.values(cap.inputs, logits, targets)
    folded = scorer.values(cap.inputs, logits, targets, vocab=request.tokens)
    assert torch.allclose(folded, own, rtol=1e-5, atol=1e-7 * own.abs().max()), (folded, own)
    exact = LAIScorer(ScoreSettings(reference="local", method="exact").resolved())
    assert exact.vocab_request(None, logits) is None
    wide = LAIScorer(ScoreSettings(reference="local", method="sketch", pairing=pairing,
                                   sketch_dim=65536).resolved())
    assert wide.vocab_request(None, logits) is None              # more than 128 buckets
    aligned = LAIScorer(ScoreSettings(reference="local", method="sketch", pairing="aligned",
                                      sketch_dim=200).resolved())
    assert aligned.vocab_request(None, logits) is None
