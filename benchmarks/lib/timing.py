"""Timing side by side: best-of-rounds wall seconds measured round-robin, and one training step
with and without LAI."""
from __future__ import annotations

import time
from typing import Callable


def time_interleaved(fns: dict[str, Callable[[], object]], rounds: int = 5, warmup: int = 1
                     ) -> dict[str, float]:
    """Best-of-`rounds` wall seconds of each fn, measured round-robin (one call of each per round)
    so that load from other processes hits all of them alike; min is the least noisy estimate of
    the undisturbed time on a shared machine. CUDA work is synchronised around each call."""
    import torch
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def lai_step_timings(model, x, scorers: dict, rounds: int = 5,
                     extra: dict | None = None) -> dict[str, float]:
    """Best-of-`rounds` seconds of one training step on x (int64 [B, T+1]) without LAI ("plain":
    forward, per-sequence loss, backward) and with each scorer (forward under LayerInputCapture
    of the scorer's layer set, the loss folding the sketch's vocabulary side, LAI values --
    with its Adam factors, if any -- masked backward: what pipeline.train does), measured
    round-robin. `extra` adds other callables to the same rounds."""
    import torch
    from pipeline.lai import LayerInputCapture, per_sequence_loss
    inp, tgt = x[:, :-1], x[:, 1:]
    model.train()

    def plain():
        model.zero_grad(set_to_none=True)
        per_sequence_loss(model(input_ids=inp).logits, tgt).mean().backward()

    def with_lai(scorer):
        def step():
            model.zero_grad(set_to_none=True)
            with LayerInputCapture(model, layers=scorer.s.layers) as cap:
                logits = model(input_ids=inp).logits
            weights = scorer.input_weights(cap)
            vocab = scorer.vocab_request(weights, logits)
            losses = per_sequence_loss(logits, tgt, vocab=vocab)
            with torch.no_grad():
                keep = scorer.values(cap.inputs, logits, tgt, weights=weights,
                                     vocab=None if vocab is None else vocab.tokens) > 0
            (losses * keep).sum().div(len(losses)).backward()
        return step

    fns = {"plain": plain, **{k: with_lai(s) for k, s in scorers.items()}, **(extra or {})}
    out = time_interleaved(fns, rounds=rounds)
    model.zero_grad(set_to_none=True)
    return out
