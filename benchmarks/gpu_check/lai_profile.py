"""Part 5: where the sketch's time goes."""
from __future__ import annotations

import time

import numpy as np

from benchmarks.gpu_check.shared import log, run_config, teardown
from pipeline.lai import ScoreSettings


def _timed(fn, reps: int = 5, host: bool = False) -> float:
    """Median seconds of fn() over `reps` runs after 2 warm-ups (CUDA events on a GPU, unless
    `host`: fn is CPU work, timed by the wall clock)."""
    import torch
    cuda = torch.cuda.is_available() and not host
    times = []
    for i in range(reps + 2):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        fn()
        if cuda:
            end.record()
            end.synchronize()
            dt = start.elapsed_time(end) / 1e3
        else:
            dt = time.perf_counter() - t0
        if i >= 2:
            times.append(dt)
    return float(np.median(times))


def loss_costs(logits, targets, k2: int) -> dict[str, float]:
    """Forward + backward of the per-sequence loss on `logits`: the upcast F.cross_entropy the
    trainer used before issue 22 against the chunked one (pipeline/lai/kernels/xent.py), alone
    and folding the sketch's vocabulary side (k2 buckets) as the trainer's LAI steps do:
    seconds and peak memory above the logits (GiB)."""
    import torch
    import torch.nn.functional as F

    from pipeline.lai import per_sequence_loss
    from pipeline.lai.kernels.sketch import VocabRequest

    def upcast(x):
        return F.cross_entropy(x.flatten(0, 1).float(), targets.flatten(), reduction="none")

    def folding(x):
        return per_sequence_loss(x, targets, vocab=VocabRequest(k2, 0))

    out = {}
    for name, fn in (("upcast", upcast), ("chunked", lambda x: per_sequence_loss(x, targets)),
                     ("chunked_folding", folding)):
        x = logits.detach().requires_grad_(True)

        def run():
            fn(x).sum().backward()
            x.grad = None
        out[f"loss_{name}"] = _timed(run)
        if logits.is_cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            run()
            out[f"loss_{name}_peak_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30
    return out


def document_keys_seconds(args, size, b: int) -> float:
    """CPU seconds to look up the documents of `b` training sequences (what lai.memory.weight's
    document memory does per micro-step, after the GPU has synchronised)."""
    from pipeline.data import PackedDataset
    data = PackedDataset([(args.work / f"stdlib-v{size['vocab']}", 1.0)], size["seq_len"],
                         split="train", seed=0)
    return _timed(lambda: [data.document_keys(i) for i in range(b)], host=True)


def _model(args, size, dev: str):
    """The check's model, bf16 on CUDA (fp32 elsewhere), in eval mode."""
    import torch

    from pipeline.config import load_config
    from pipeline.train.model import build_model
    argv = run_config(args, size, 1, 1)
    model = build_model(load_config(argv[0], argv[1:]).model, vocab_size=size["vocab"],
                        seq_len=size["seq_len"])
    return model.to(dev).to(torch.bfloat16 if dev == "cuda" else torch.float32).eval()


def _compiled_vocab_side(vocab) -> dict:
    """The vocabulary side through torch.compile: compile seconds and time, or why it failed."""
    import torch

    from pipeline.lai.kernels import sketch as S
    try:
        compiled = torch.compile(S.vocab_side, dynamic=False)
        t0 = time.perf_counter()
        vocab(compiled)
        out = {"compile_seconds": time.perf_counter() - t0}
        return {**out, "vocab_side_compiled": _timed(lambda: vocab(compiled))}
    except Exception as e:   # measured, not assumed: record why it did not work
        return {"compile_error": f"{type(e).__name__}: {str(e)[:200]}"}


def _layer_sum(xs, ss, rotations, k: int):
    """sum_l C1_l(x_l) over every captured input in one function (compiled: one call for the
    whole input side, the running sum never written between layers); [B, T, k]."""
    from pipeline.lai.kernels.sketch import fold
    out = fold(xs[0] * ss[0], k).index_select(-1, rotations[0])
    for x, s, r in zip(xs[1:], ss[1:], rotations[1:]):
        out = out + fold(x * s, k).index_select(-1, r)
    return out


def _grouped_input_side(inputs, k1: int, expected) -> dict:
    """The input side as one compiled call over all inputs, against input_side's one compiled
    call per input (what the trainer runs; its running sum [B, T, k1] is read and written once
    per input): time, compile seconds, and the floor of reading every input once; or why
    compiling failed. Checked against input_side's result (`expected`)."""
    import torch

    from pipeline.lai.kernels import sketch as S
    from pipeline.lai.kernels.capture import scaled, unique_inputs
    xs, ss, rs = [], [], []
    for layer, (x, w) in enumerate(unique_inputs(inputs)):
        xs.append(x.detach())
        ss.append(scaled(S.signs(x.shape[-1], 0, layer, x.device, torch.float32), w))
        rs.append(S._rotation(k1, 0, layer, x.device))
    out = {"inputs_read": _timed(lambda: [x.sum() for x in xs])}
    try:
        grouped = torch.compile(_layer_sum, fullgraph=True)
        t0 = time.perf_counter()
        got = grouped(xs, ss, rs, k1)
        out["grouped_compile_seconds"] = time.perf_counter() - t0
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())
        out["input_side_grouped"] = _timed(lambda: grouped(xs, ss, rs, k1))
    except Exception as e:   # measured, not assumed: record why it did not work
        out["grouped_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return out


def _shown(key: str, v) -> str:
    if key.endswith("_gib"):
        return f"{key} {v:.2f} GiB"
    if key.endswith("compile_seconds"):
        return f"{key} {v:.1f} s"
    return f"{key} {v * 1e3:.2f} ms" if isinstance(v, float) else f"{key} {v}"


def profile_part(args, size, res) -> None:
    """Where the sketch's time goes, on the GPT-2-small model in bf16 at the overhead part's
    large micro-batch: forward (no grad) with and without capture, the whole `values` call and
    its pieces (input side, vocabulary side, outer product; the kernels as `values` runs them:
    compiled on CUDA) and a plain fp32 softmax of the logits (the memory-bound floor of the
    vocabulary side); the vocabulary side through torch.compile apart; the input side as one
    compiled call over all inputs, beside one read of every input (its floor); the loss's forward +
    backward, upcast against chunked, and chunked folding the vocabulary side, which the
    trainer's LAI steps run instead of the separate vocabulary pass (loss_costs); the document
    memory's CPU lookups."""
    import torch

    from pipeline.lai import LAIScorer, LayerInputCapture
    from pipeline.lai.kernels import sketch as S
    from pipeline.lai.kernels.pairings import PAIRINGS
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    b = res.get("overhead", {}).get("batch", size["max_batch"])
    model = _model(args, size, dev)
    x = torch.randint(0, size["vocab"], (b, size["seq_len"] + 1), device=dev)
    ids, tgt = x[:, :-1], x[:, 1:]
    scorer = LAIScorer(ScoreSettings(method="sketch", reference="local").resolved())
    k1, k2 = PAIRINGS["token_pair"].split(scorer.s.sketch_dim)
    valid = torch.ones_like(tgt, dtype=torch.bool)
    kernels = S.Kernels(dev == "cuda")
    with torch.no_grad():
        with LayerInputCapture(model) as cap:
            logits = model(input_ids=ids).logits
        inputs = cap.inputs
        ca = S.input_side(inputs, 0, k1, torch.float32, None, kernels=kernels)
        step = S.chunk_size(b, size["seq_len"], size["vocab"], logits.device)

        def vocab(fn=S.vocab_side):
            return [fn(logits[s:s + step], tgt[s:s + step], valid[s:s + step], k2, 0,
                       torch.float32) for s in range(0, b, step)]
        cg = torch.cat(vocab())

        def fwd_capture():
            with LayerInputCapture(model):
                model(input_ids=ids)
        t = {"forward": _timed(lambda: model(input_ids=ids)), "forward_capture": _timed(fwd_capture),
             "values": _timed(lambda: scorer.values(inputs, logits, tgt)),
             "input_side": _timed(lambda: S.input_side(inputs, 0, k1, torch.float32, None,
                                                       kernels=kernels)),
             "vocab_side": _timed(vocab),
             "outer_product": _timed(lambda: ca.transpose(1, 2) @ cg),
             "softmax_fp32": _timed(lambda: [torch.softmax(logits[s:s + step], -1,
                                                           dtype=torch.float32)
                                             for s in range(0, b, step)])}
        t.update(_compiled_vocab_side(vocab))
        t.update(_grouped_input_side(inputs, k1, ca))
    inputs = cap = ca = cg = None   # frees them (a `del` reads as undefined names in the lambdas above)
    teardown()
    t.update(loss_costs(logits, tgt, k2))
    t["document_keys_cpu"] = document_keys_seconds(args, size, b)
    res["lai_profile"] = {"batch": b, "chunk": step, "k1": k1, "k2": k2,
                          "attn": getattr(model.config, "_attn_implementation", "?"), **t}
    log("profile: " + ", ".join(_shown(k, v) for k, v in t.items()))
    model = logits = None           # frees them, as above
    teardown()
