"""LAI on more architectures, exact values against the explicit construction (float64):

- OPT, whose decoder flattens the hidden states to [B*T, d] rows before its MLP (fc1, fc2 see
  the batch as rows): the rows are viewed back as positions;
- GPT-J, Qwen2, Mistral: their own attention / MLP layouts, grouped-query heads;
- Mixtral, a mixture of experts: each expert sees only the tokens routed to it, so
  layers=linear falls back to layers=blocks, with a one-line warning (once per model).
"""
import pytest
import torch

from pipeline.lai import LAIScorer, LayerInputCapture, lai_values
from pipeline.lai import ScoreSettings
from pipeline.lai.kernels.grads import shift_labels
from support.lai import batch, block_kernel, explicit_kernel, loo_mean, rel_err, tiny_model

PAIRINGS = ["token_pair", "aligned", "pooled"]


@pytest.mark.parametrize("arch", ["opt", "gptj", "qwen2", "mistral"])
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_exact_equals_explicit_construction(arch, pairing):
    model = tiny_model(arch)
    ids = batch(5, 12, 128)
    labels = ids.clone()
    labels[1, :4] = -100
    k = explicit_kernel(model, ids, pairing, labels)
    for include_self in (False, True):
        v = lai_values(model, ids, labels, pairing=pairing, include_self=include_self)
        assert rel_err(v, loo_mean(k, include_self)) < 1e-9


def test_opt_mlp_rows_are_viewed_back_as_positions():
    """fc1 / fc2 read [B*T, d] rows; the scorer sees them as [B, T, d], sketches included."""
    model = tiny_model("opt")
    ids = batch(4, 10, 128)
    with LayerInputCapture(model) as cap:
        logits = model(input_ids=ids).logits
    assert {x.dim() for x in cap.inputs} == {2, 3}            # OPT really flattens
    targets = shift_labels(ids)
    exact = LAIScorer(ScoreSettings(reference="local",
                                    method="exact").resolved()).values(cap.inputs, logits, targets)
    assert rel_err(exact, lai_values(model, ids)) < 1e-12
    sketch = LAIScorer(ScoreSettings(reference="local", method="sketch",
                                     sketch_dim=1 << 16).resolved()).values(
        cap.inputs, logits, targets)
    assert torch.corrcoef(torch.stack([sketch, exact]))[0, 1] > 0.9


def test_mixture_of_experts_falls_back_to_blocks_with_one_warning(capsys):
    model = tiny_model("mixtral")
    ids = batch(4, 10, 128)
    v = lai_values(model, ids)                                 # layers=linear asked for
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: lai.score.layers=linear: ") \
        and "layers=blocks" in err[0], err
    assert rel_err(v, loo_mean(block_kernel(model, ids, [*model.model.layers, model.lm_head]))) \
        < 1e-9
    assert torch.equal(v, lai_values(model, ids, layers="blocks"))
    lai_values(model, ids)
    assert capsys.readouterr().err == ""                       # once per model
