"""On a CUDA device (skipped without one; `pytest -m cuda` selects them, benchmarks/gpu_check.sh
runs them):

- LAI values on CUDA agree with the CPU in fp32, and a bf16 model's with its fp32 copy, for every
  pairing and method; the compiled sketch kernels equal the eager ones; the compiled chunked loss
  equals the upcast cross-entropy;
- a 1-rank DeepSpeed ZeRO-2 bf16 step with LAI (NCCL): the excluded sequences contribute nothing
  (replacing their tokens leaves every gradient unchanged, while keeping them changes it);
- the loader's pinned batches (asynchronous copies) hold what the unpinned ones do;
- checkpoint save and resume on CUDA: a run stopped after N steps and extended to 2N equals the
  straight 2N-step run bit for bit (ledger values, masks, losses and final parameters).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from support import ROOT
from support.lai import synthetic_corpus, trained_tiny_model
from support.train import run_train
from pipeline.lai import FilterSettings, ScoreSettings

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
PAIRINGS = ("token_pair", "aligned", "pooled")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def trained():
    model = trained_tiny_model(steps=20)
    ids, _ = synthetic_corpus(16, 32, 256, noise_frac=0.2, seed=7)
    return model, ids


@pytest.mark.parametrize("method", ["exact", "sketch"])
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_lai_values_cuda_match_cpu_and_bf16_match_fp32(trained, pairing, method):
    from pipeline.lai import lai_values
    model, ids = trained
    kw = dict(pairing=pairing, method=method, compile=False)
    cpu = lai_values(model, ids, **kw)
    gpu = lai_values(copy.deepcopy(model).cuda(), ids.cuda(), **kw)
    bf16 = lai_values(copy.deepcopy(model).cuda().to(torch.bfloat16), ids.cuda(), **kw)
    assert gpu.device.type == "cuda" and gpu.dtype == bf16.dtype == torch.float64
    assert _rel(gpu.cpu(), cpu) < 1e-4, (gpu, cpu)
    assert _rel(bf16, gpu) < 3e-2 and torch.corrcoef(torch.stack([bf16, gpu]))[0, 1] > 0.999


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_sketch_kernels_equal_eager_on_cuda(trained, dtype):
    from pipeline.lai import lai_values
    from pipeline.lai.kernels.sketch import Kernels
    model, ids = trained
    model = copy.deepcopy(model).cuda().to(dtype)
    eager = lai_values(model, ids.cuda(), method="sketch", compile=False)
    compiled = lai_values(model, ids.cuda(), method="sketch", compile=True)
    assert Kernels._failed is None, Kernels._failed
    assert _rel(compiled, eager) < 1e-5, (compiled, eager)


def test_aligned_vocabulary_side_equals_cpu_and_holds_one_chunk_on_cuda():
    """The aligned sketch's vocabulary side (a scatter-add per chunk) on CUDA equals the CPU's,
    and its memory above the logits stays under two fp32 copies of them: the signed chunk and
    one [T, V] index (its expansion over the chunk's sequences is a view, never copied)."""
    from pipeline.lai.kernels import sketch
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 256, 4096, generator=g)
    targets = torch.randint(0, 4096, (8, 256), generator=g)
    valid = targets >= 0
    cpu = sketch.aligned_vocab(logits, targets, valid, 1 << 17, 3, torch.float32)
    logits, targets, valid = logits.cuda(), targets.cuda(), valid.cuda()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    gpu = sketch.aligned_vocab(logits, targets, valid, 1 << 17, 3, torch.float32)
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < 2 * logits.numel() * 4, extra / (logits.numel() * 4)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6 * cpu.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_chunked_loss_equals_upcast_cross_entropy_on_cuda(monkeypatch, dtype):
    """The chunked per-sequence loss (compiled kernels, the CUDA default; several chunks) equals
    F.cross_entropy on the fp32 copy: losses to fp32 rounding, gradients to one bf16 ulp; folding
    the sketch's vocabulary side (as LAI steps do) leaves them as they are and folds what the
    sketch's own compiled pass does."""
    import torch.nn.functional as F

    from pipeline.lai import per_sequence_loss

    from pipeline.lai.kernels import sketch
    monkeypatch.setitem(sketch.CHUNK_ELEMENTS, "cuda", 64 * 1000)
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(4, 96, 1000, generator=g) * 3).cuda().to(dtype)
    targets = torch.randint(0, 1000, (4, 96), generator=g).cuda()
    targets[1, :5] = -100

    def run(fn):
        x = logits.clone().requires_grad_(True)
        loss = fn(x)
        (loss * torch.arange(1, 5, device="cuda")).sum().backward()
        return loss.detach(), x.grad.float()

    def upcast(x):
        ce = F.cross_entropy(x.float().flatten(0, 1), targets.flatten(), reduction="none")
        return ce.view(4, 96).sum(1) / (targets != -100).sum(1)
    loss, grad = run(lambda x: per_sequence_loss(x, targets))
    ref_loss, ref_grad = run(upcast)
    assert sketch.Kernels._failed is None, sketch.Kernels._failed
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    tol = 2.0 ** -7 if dtype == torch.bfloat16 else 1e-5
    assert ((grad - ref_grad).abs() <= tol * ref_grad.abs() + 1e-7).all()
    request = sketch.VocabRequest(64, 3)
    folded_loss, folded_grad = run(lambda x: per_sequence_loss(x, targets, vocab=request))
    assert torch.equal(folded_grad, grad)                # the same backward kernel
    torch.testing.assert_close(folded_loss, loss, rtol=1e-6, atol=0)   # another compiled graph
    own = torch.cat([c for _, c in sketch.vocab_chunks(
        logits, targets, targets != -100, 64, 3, torch.float32, sketch.Kernels(True))])
    assert sketch.Kernels._failed is None, sketch.Kernels._failed
    torch.testing.assert_close(request.tokens, own, rtol=1e-4, atol=1e-6 * own.abs().max().item())


# ---------------------------------------------------------------- one DeepSpeed rank on CUDA

B, T, V = 4, 16, 128
KEEP = torch.tensor([True, False, True, False])


@pytest.fixture(scope="module")
def one_rank():
    """A 1-rank NCCL process group (DeepSpeed's), torn down after the module."""
    from pipeline.comm import free_port
    from pipeline.train import runtime
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    info = runtime.init(0)
    yield info
    runtime.shutdown()


def _step_grads(ids: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor, device):
    """Full gradients of one ZeRO-2 bf16 micro-step with LAI values computed and `keep` applied."""
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    from pipeline.comm import Comm
    from pipeline.config import Config
    from pipeline.lai import LAISettings, Selector, per_sequence_loss
    from pipeline.train.model import build_model
    from pipeline.train.optim import SkipGate, build_optimizer
    from pipeline.train.setup import ds_config
    from pipeline.train.step import masked_loss
    cfg = Config()
    cfg.train.zero_stage, cfg.train.precision, cfg.train.micro_batch = 2, "bf16", B
    cfg.train.grad_accum = 1
    cfg.train.grad_clip = 0.0
    cfg.model.family, cfg.model.n_layer, cfg.model.hidden, cfg.model.n_head = "llama", 2, 32, 2
    cfg.model.tie_word_embeddings = False
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab_size=V, seq_len=T)
    opt = build_optimizer(model, cfg.train, SkipGate(Comm.resolve(), device), offload=False)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config(cfg, 1, True))
    sel = Selector(LAISettings(filter=FilterSettings(kind="lai", max_exclude_frac=0.5),
                               score=ScoreSettings(compile=False)).resolved(), seed=0)
    ids, targets = ids.to(device), targets.to(device)
    with sel.capture(engine.module) as cap:
        logits = engine(input_ids=ids).logits
    losses = per_sequence_loss(logits, targets)
    values, _, _ = sel.select(1, cap, logits, targets, losses, torch.arange(B))
    assert values.shape == (B,) and torch.isfinite(values).all() and values.abs().max() > 0
    loss, stats = masked_loss(losses, (targets != -100).sum(1), keep.to(device), Comm.resolve())
    del cap, logits
    engine.backward(loss)
    grads = {n: safe_get_full_grad(p).float().cpu() for n, p in engine.module.named_parameters()}
    engine.destroy()
    return grads


def test_zero2_bf16_step_excluded_sequences_contribute_nothing(one_rank):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(4, V, (B, T), generator=g)
    targets = torch.roll(ids, -1, 1)
    other = ids.clone()
    other[~KEEP] = torch.randint(4, V, (int((~KEEP).sum()), T), generator=g)
    other_t = torch.roll(other, -1, 1)
    base = _step_grads(ids, targets, KEEP, one_rank.device)
    swapped = _step_grads(other, other_t, KEEP, one_rank.device)
    kept_all = _step_grads(other, other_t, torch.ones(B, dtype=torch.bool), one_rank.device)
    for name, grad in base.items():
        assert grad.abs().max() > 0, name
        if "embed_tokens" in name:   # sort-based embedding backward: order of exact zeros varies
            torch.testing.assert_close(swapped[name], grad, rtol=0, atol=1e-6 * grad.abs().max())
        else:
            assert torch.equal(swapped[name], grad), \
                f"{name}: excluded rows changed the gradient by {(swapped[name] - grad).abs().max()}"
    assert any(not torch.allclose(kept_all[n], base[n]) for n in base)   # the control can fail


def test_pinned_batches_equal_unpinned(tmp_path):
    from support.datagen import make_data_dir, random_docs

    from pipeline.data import PackedDataset, RankLoader
    d = make_data_dir(tmp_path / "d", random_docs(50, V, seed=0), vocab_size=V)
    ds = PackedDataset([(d, 1.0)], T)
    a, b = RankLoader(ds, B, 0, 1).next_batch(), RankLoader(ds, B, 0, 1, pin_memory=True).next_batch()
    assert b["input_ids"].is_pinned() and b["targets"].is_pinned()
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["targets"], b["targets"])


# ---------------------------------------------------------------- checkpoint and resume

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from support.datagen import make_data_dir, random_docs
    out = tmp_path_factory.mktemp("cuda-data")
    docs = random_docs(400, V, min_len=8, max_len=80, seed=0)
    return make_data_dir(out / "prepared", docs[:360], vocab_size=V, val_docs=docs[360:])


def _train(data: Path, run: Path, steps: int) -> str:
    args = [str(ROOT / "configs" / "tiny_cpu.yaml"), f"run.out_dir={run}",
            f"data.sources=[{{path: '{data}', weight: 1.0}}]", "data.seq_len=32",
            "model.family=llama", "model.n_layer=2", "model.hidden=64", "model.n_head=2",
            "train.micro_batch=8", "train.global_batch=0", f"train.steps={steps}",
            "train.zero_stage=2", "train.precision=bf16", "train.schedule=constant",
            "train.lr=1e-2", "train.warmup_steps=2", "train.eval_every=0", "lai.warmup_steps=1",
            "lai.filter.max_exclude_frac=0.25", "lai.score.compile=false", "log.every=1", "run.save_every=0"]
    p = run_train(args, ranks=1, timeout=600)
    return p.stdout + p.stderr


def test_resume_on_cuda_equals_straight_run_bit_for_bit(data_dir, tmp_path):
    from safetensors.torch import load_file

    from pipeline.format.ledger import read_ledger
    straight, split = tmp_path / "straight", tmp_path / "split"
    out = _train(data_dir, straight, 8)
    assert "rank(s) on cuda" in out, out[-2000:]
    _train(data_dir, split, 4)
    out = _train(data_dir, split, 8)
    assert "resumed from" in out, out[-2000:]
    a, b = read_ledger(straight), read_ledger(split)
    assert a.size == b.size == 8 * 8
    for f in ("step", "seq_id", "kept", "loss", "value"):
        diff = np.abs(a[f].astype(np.float64) - b[f].astype(np.float64)).max()
        assert np.array_equal(a[f], b[f]), f"ledger column {f} differs (max {diff})"
    assert (~a["kept"]).any(), "nothing was excluded: the test cannot show masks survive resume"
    pa, pb = load_file(straight / "final" / "model.safetensors"), \
        load_file(split / "final" / "model.safetensors")
    for k in pa:
        assert torch.equal(pa[k], pb[k]), f"final parameter {k} differs"
