"""2 ranks over gloo: global / val references (plain and Adam-aware) and the filter policy equal
the single-process computation on the concatenated global batch."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.comm import Comm, free_port
from pipeline.lai import (FilterPolicy, LAIScorer, LayerInputCapture, lai_values, loss_scores,
                          random_scores)
from pipeline.lai import FilterSettings, ScoreSettings
from pipeline.lai.kernels.grads import shift_labels
from pipeline.lai.selection.normalize import normalize
from support.lai import batch, random_factors, tiny_model

pytestmark = pytest.mark.slow

SPLIT = [3, 2]                 # unequal local batches exercise the padded gather
CASES = [(p, m, s, a) for p in ("token_pair", "aligned", "pooled") for m in ("exact", "sketch")
         for s in (False, True) for a in (False, True) if not (s and a)]   # a: Adam-aware


def global_batch():
    return batch(sum(SPLIT), 10, 128, seed=11), batch(4, 8, 128, seed=12)


def worker(rank, port, out_dir):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        model = tiny_model("gpt2")
        ids, val = global_batch()
        lo = sum(SPLIT[:rank])
        ids = ids[lo:lo + SPLIT[rank]]
        val = val[2 * rank:2 * rank + 2]
        with LayerInputCapture(model) as cap:
            logits = model(input_ids=ids).logits
        targets = shift_labels(ids)
        out = {}
        for case in CASES:
            pairing, method, include_self, adam = case
            kw = dict(pairing=pairing, method=method, layers="linear", include_self=include_self,
                      sketch_dim=4096 if method == "sketch" else None,
                      precondition="adam" if adam else "none")
            for ref in ("global", "val"):
                scorer = LAIScorer(ScoreSettings(reference=ref, **kw).resolved(), 3)
                scorer.factors = random_factors(model) if adam else None
                if ref == "val":
                    scorer.set_val_reference(model, [(val, shift_labels(val))])
                out[(ref, *case)] = scorer.values(cap.inputs, logits, targets,
                                                  weights=scorer.input_weights(cap))
        values = out[("global", "token_pair", "exact", False, False)]
        out["mask"] = FilterPolicy(FilterSettings(max_exclude_frac=0.5, threshold=0.0),
                                   0).mask(values, step=0)
        out["loss"] = loss_scores(torch.arange(float(SPLIT[rank])) + 10 * rank, 0.4,
                                  Comm.resolve())
        ids = torch.arange(SPLIT[rank]) + sum(SPLIT[:rank])
        out["random"] = random_scores(ids, seed=5, rate=0.3)
        for mode in ("zscore", "rank"):
            out[mode] = normalize(values, mode, Comm.resolve())
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()         # both ranks done before either tears gloo down
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_single_process(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    model = tiny_model("gpt2")
    ids, val = global_batch()

    def joined(key):
        return torch.cat([r[key] for r in res])

    for case in CASES:
        pairing, method, include_self, adam = case
        kw = dict(pairing=pairing, method=method, include_self=include_self,
                  sketch_dim=4096 if method == "sketch" else None, seed=3,
                  preconditioner=random_factors(model) if adam else None)
        tol = 1e-9 if method == "exact" else 1e-6
        for ref, single in (("global", lai_values(model, ids, **kw)),
                            ("val", lai_values(model, ids, ref_input_ids=val, **kw))):
            got = joined((ref, *case))
            err = ((got - single).abs().max() / single.abs().max()).item()
            assert err < tol, (ref, *case, err)
    values = lai_values(model, ids)
    assert torch.equal(joined("mask"), FilterPolicy(FilterSettings(max_exclude_frac=0.5,
                                                                   threshold=0.0), 0).global_mask(values, 0))
    for mode in ("zscore", "rank"):          # normalised against the global micro-batch
        torch.testing.assert_close(joined(mode), normalize(values, mode), rtol=1e-9, atol=1e-12)
    assert not joined("mask").all()
    assert torch.equal(joined("loss"), loss_scores(torch.tensor([0.0, 1.0, 2.0, 10.0, 11.0]), 0.4))
    assert (joined("loss") <= 0).sum() == 2                  # the 2 highest of 5 (rate 0.4)
    assert torch.equal(joined("random"), random_scores(torch.arange(5), seed=5, rate=0.3))
