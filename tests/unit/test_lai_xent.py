"""The chunked token cross-entropy (pipeline/lai/kernels/xent.py) equals F.cross_entropy on the upcast
logits, loss and gradient, across chunk boundaries and ignored targets, in float64, fp32 and bf16."""
import pytest
import torch
import torch.nn.functional as F

from pipeline.lai import per_sequence_loss
from pipeline.lai.kernels import sketch, xent

B, T, V = 3, 7, 50


def _reference(logits, targets):
    """The former per_sequence_loss: F.cross_entropy on the [B*T, V] upcast copy."""
    dt = torch.float64 if logits.dtype == torch.float64 else torch.float32
    ce = F.cross_entropy(logits.flatten(0, 1).to(dt), targets.flatten(), ignore_index=-100,
                         reduction="none").view(targets.shape)
    return ce.sum(1) / (targets != -100).sum(1).to(dt)


def _case(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3).to(dtype)
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[1, :3] = -100
    targets[2, -1] = -100
    weights = torch.rand(B, generator=g, dtype=torch.float64)   # a non-uniform upstream gradient
    return logits, targets, weights


def _loss_and_grad(fn, logits, targets, weights):
    x = logits.clone().requires_grad_(True)
    losses = fn(x, targets)
    (losses * weights.to(losses.dtype)).sum().backward()
    return losses.detach(), x.grad


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("chunk", [7, 1 << 24])      # rows per chunk: 3 chunks, or one
def test_chunked_loss_and_grad_equal_cross_entropy(monkeypatch, dtype, tol, chunk):
    monkeypatch.setitem(sketch.CHUNK_ELEMENTS, "cpu", chunk * V)
    logits, targets, w = _case(dtype)
    loss, grad = _loss_and_grad(per_sequence_loss, logits, targets, w)
    ref_loss, ref_grad = _loss_and_grad(_reference, logits, targets, w)
    assert loss.dtype == ref_loss.dtype and grad.dtype == dtype
    torch.testing.assert_close(loss, ref_loss, rtol=tol, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=tol, atol=tol * ref_grad.abs().max().item())
    assert grad[1, :3].abs().max() == 0 and grad[2, -1].abs().max() == 0   # ignored: no gradient


def test_bf16_logits_fp32_loss_and_bf16_grad_of_the_fp32_math(monkeypatch):
    """bf16 logits: loss in fp32 as the upcast reference (same values to fp32 rounding); the
    gradient is the fp32 gradient rounded once to bf16 (at most one bf16 ulp from it)."""
    monkeypatch.setitem(sketch.CHUNK_ELEMENTS, "cpu", 5 * V)
    logits, targets, w = _case(torch.bfloat16)
    loss, grad = _loss_and_grad(per_sequence_loss, logits, targets, w)
    ref_loss, _ = _loss_and_grad(_reference, logits, targets, w)
    _, fp32_grad = _loss_and_grad(_reference, logits.float(), targets, w)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    ulp = fp32_grad.abs() * 2.0 ** -7 + 1e-30
    assert ((grad.float() - fp32_grad).abs() <= ulp).all()


def test_chunked_forward_keeps_no_vocabulary_sized_float32_tensor():
    """Saved for backward: the logits themselves and [B*T] numbers, nothing of size B*T*V in fp32
    (the eager cross-entropy saves its [B*T, V] fp32 log-softmax)."""
    logits, targets, _ = _case(torch.bfloat16)
    x = logits.clone().requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        xent.token_cross_entropy(x, targets, compiled=False)
    big = [t for t in saved if t.numel() >= B * T * V]
    assert len(big) == 1 and big[0].dtype == torch.bfloat16, [(t.shape, t.dtype) for t in saved]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("chunk", [7, 1 << 24])      # rows per chunk: 3 chunks, or one
@pytest.mark.parametrize("weighted", [False, True])
def test_loss_with_a_vocab_request_folds_the_sketchs_vocabulary_side(monkeypatch, dtype, tol,
                                                                     chunk, weighted):
    """A VocabRequest leaves the loss and its gradient exactly as without it, and its tokens
    are what the sketch's own vocabulary pass computes (sketch.vocab_chunks: softmax - onehot
    over N_j, signed, folded; 0 at ignored targets), with Adam-aware row weights too."""
    monkeypatch.setitem(sketch.CHUNK_ELEMENTS, "cpu", chunk * V)
    logits, targets, w = _case(dtype)
    row = torch.rand(V, generator=torch.Generator().manual_seed(1), dtype=dtype) if weighted \
        else None
    request = sketch.VocabRequest(16, 3, row)
    with_request = _loss_and_grad(
        lambda x, t: per_sequence_loss(x, t, vocab=request), logits, targets, w)
    plain = _loss_and_grad(per_sequence_loss, logits, targets, w)
    assert torch.equal(with_request[0], plain[0]) and torch.equal(with_request[1], plain[1])
    valid = targets != -100
    want = torch.cat([c for _, c in sketch.vocab_chunks(logits, targets, valid, 16, 3, dtype,
                                                        sketch.Kernels(False), row)])
    assert request.tokens is not None and request.tokens.shape == (B, T, 16)
    assert not request.tokens.requires_grad
    torch.testing.assert_close(request.tokens, want, rtol=tol, atol=tol * want.abs().max().item())
    assert request.tokens[1, :3].abs().max() == 0 and request.tokens[2, -1].abs().max() == 0
