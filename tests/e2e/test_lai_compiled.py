"""The torch.compile path of the sketch kernels (inductor compiles C++ on CPU: slow) against the
eager kernels (the sketch itself: unit/test_lai_sketch.py)."""
import pytest
import torch

from pipeline.lai import lai_values


@pytest.mark.slow
def test_compiled_kernels_equal_eager(trained_tiny):
    """The torch.compile path (the GPU default) computes what the eager kernels do; here with
    inductor's CPU backend."""
    from pipeline.lai.kernels.sketch import Kernels
    model, ids = trained_tiny
    eager = lai_values(model, ids[:8], method="sketch", compile=False)
    compiled = lai_values(model, ids[:8], method="sketch", compile=True)
    assert Kernels._failed is None, Kernels._failed
    assert torch.allclose(compiled, eager, rtol=1e-5, atol=1e-9), (compiled, eager)


def _sharing(inputs):
    """For each input, the index of the first input that is the same object."""
    return [next(i for i, y in enumerate(inputs) if y is x) for x in inputs]


@pytest.mark.slow
def test_compiled_blocks_capture_what_eager_blocks_do():
    """model.compile (each block's forward through inductor) with the default layer set: the
    capture hooks are traced into the compiled blocks, also when the first capture comes after
    compiled forwards (as after LAI's warmup steps), so the layer inputs, their sharing (one
    object for the q/k/v projections' input) and the LAI values equal the eager model's; no
    recompile after the first captured step."""
    from torch._dynamo.utils import counters

    from pipeline.config import ModelConfig
    from pipeline.lai import LayerInputCapture
    from pipeline.train.model import build_model
    models = []
    for compiled in (False, True):
        torch.manual_seed(0)
        models.append(build_model(ModelConfig(family="llama", n_layer=2, hidden=64, n_head=2,
                                              compile=compiled), vocab_size=256, seq_len=32))
    eager, comp = models
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))

    def captured(model):
        with LayerInputCapture(model) as cap:
            logits = model(input_ids=ids).logits
        model(input_ids=ids).logits.sum().backward()           # a training step's graphs too
        return logits, cap

    ref_logits, ref = captured(eager)
    comp(input_ids=ids).logits.sum().backward()                # uncaptured steps first
    graphs = []
    for _ in range(3):
        logits, cap = captured(comp)
        graphs.append(counters["stats"]["unique_graphs"])
        assert torch.allclose(logits, ref_logits, atol=1e-5)
        assert len(cap.inputs) == len(ref.inputs) == 15           # 2 x (q k v o gate up down) + head
        assert _sharing(cap.inputs) == _sharing(ref.inputs) == [0, 0, 0, 3, 4, 4, 6, 7, 7, 7, 10, 11, 11, 13, 14]
        assert [type(m) for m in cap.modules] == [type(m) for m in ref.modules]
        for a, b in zip(cap.inputs, ref.inputs):
            assert torch.allclose(a, b, atol=1e-5)
    assert graphs[0] == graphs[1] == graphs[2], graphs
    for method in ("sketch", "exact"):
        want = lai_values(eager, ids, method=method)
        got = lai_values(comp, ids, method=method)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6 * want.abs().max()), (method, got, want)


@pytest.mark.slow
def test_trainer_with_compiled_blocks_keeps_the_eager_run_ledger(animals_data, tmp_path):
    """A real run with model.compile=true and LAI on the default layer set (filtering from step
    3, after two uncaptured warmup steps; a sketch whose vocabulary side the loss folds): its
    ledger (losses, values, keep decisions) equals the eager run's."""
    import numpy as np

    from support.train import ledger, train
    args = ["train.zero_stage=0", "train.eval_every=0", "train.steps=4", "run.save_every=0",
            "lai.warmup_steps=2", "log.histogram_every=0", "lai.score.sketch_dim=1024"]
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["model.compile=true"])):
        train(animals_data, tmp_path / name, *args, *extra, ranks=1)
        runs[name] = ledger(tmp_path / name)
    eager, comp = runs["eager"], runs["compiled"]
    assert len(eager) == len(comp) == 16 and (eager["kept"] == comp["kept"]).all()
    assert not eager["kept"][eager["step"] > 2].all()           # the filter dropped some
    for field in ("loss", "value"):
        np.testing.assert_allclose(comp[field], eager[field], rtol=1e-4,
                                   atol=1e-6 * np.abs(eager[field]).max())


@pytest.mark.slow
def test_compiled_blocks_with_activation_checkpointing_compile_and_train_alike():
    """model.compile with model.activation_checkpointing: the blocks really compile (a graph, no
    graph break: transformers' checkpoint is traced, its forward side effects, LAI's capture
    included, are not replayed in the recompute) and their gradients and captured inputs equal
    the eager checkpointed model's."""
    from torch._dynamo.utils import counters

    from pipeline.config import ModelConfig
    from pipeline.lai import LayerInputCapture
    from pipeline.train.model import build_model
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    out = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = build_model(ModelConfig(family="llama", n_layer=2, hidden=64, n_head=2,
                                        compile=compiled, activation_checkpointing=True),
                            vocab_size=256, seq_len=32)
        graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
        with LayerInputCapture(model) as cap:                   # as the trainer: forward
            loss = model(input_ids=ids).logits.square().mean()
        loss.backward()
        out[compiled] = cap.inputs, [p.grad for p in model.parameters()]
        if compiled:
            assert counters["stats"]["unique_graphs"] > graphs
            assert sum(counters["graph_break"].values()) == breaks, dict(counters["graph_break"])
    (eager_in, eager_grads), (comp_in, comp_grads) = out[False], out[True]
    assert len(comp_in) == len(eager_in) == 15
    for a, b in zip(comp_in, eager_in):
        assert torch.allclose(a, b, atol=1e-5)
    for a, b in zip(comp_grads, eager_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * b.abs().max())


@pytest.mark.slow
def test_compiled_loss_folding_the_vocabulary_side_equals_eager():
    """The loss's kernels through torch.compile (fullgraph; the CUDA default) with a
    VocabRequest compile (no fallback to eager) and give the eager loss, gradient and folded
    tokens (the chunking around them: unit/test_lai_xent.py)."""
    from pipeline.lai.kernels import xent
    from pipeline.lai.kernels.sketch import Kernels, VocabRequest
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 16, 40, generator=g) * 3
    targets = torch.randint(0, 40, (3, 16), generator=g)
    targets[0, :4] = -100
    out = {}
    for compiled in (False, True):
        x = logits.clone().requires_grad_(True)
        request = VocabRequest(8, 1)
        ce = xent.token_cross_entropy(x, targets, compiled=compiled, vocab=request)
        ce.sum().backward()
        out[compiled] = ce.detach(), x.grad, request.tokens
    assert Kernels._failed is None, Kernels._failed
    for a, b in zip(out[True], out[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
