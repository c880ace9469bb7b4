"""The per-sequence loss's share of a training step: the upcast F.cross_entropy the trainer used
before issue 22 against the chunked one (pipeline/lai/kernels/xent.py), with the LAI sketch step beside
them -- its vocabulary side folded by the loss's pass over the logits (what the trainer does) and
in a pass of its own (as before) -- side by side in one process (ratios; the machine named).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.loss_cost [--rounds 5] [--doc]

Per size (GPT-2 from the config schema, random init, B x T random tokens): best-of-rounds wall
seconds, measured round-robin (benchmarks.lib.timing.time_interleaved), of one step = forward,
per-sequence loss, backward -- with the chunked loss ("plain"), with the upcast loss, and with the
default LAI sketch (layers linear, token_pair, reference local; benchmarks.lib.timing.lai_step_timings),
its vocabulary side folded by the loss or computed by the scorer's own pass.
Prints a markdown table; --doc also writes it as the loss-cost section of docs/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys

from benchmarks.lib.docs import update_section
from benchmarks.lib.machine import machine, now
from benchmarks.lib.paths import ROOT
from benchmarks.lib.tables import md_table
from benchmarks.lib.timing import lai_step_timings, time_interleaved
from pipeline.lai import ScoreSettings

# name -> (n_layer, hidden, n_head, vocab, batch, seq_len)
SIZES = {"tiny": (2, 64, 2, 512, 8, 128), "1M": (4, 128, 4, 8192, 4, 256),
         "8M": (6, 256, 4, 50257, 2, 256)}


def upcast_loss(logits, targets):
    """The former per_sequence_loss: F.cross_entropy on the [B*T, V] fp32 copy."""
    import torch.nn.functional as F
    ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100,
                         reduction="none").view(targets.shape)
    return ce.sum(1) / (targets != -100).sum(1)


def measure(name: str, rounds: int) -> list:
    import torch

    from pipeline.config import ModelConfig
    from pipeline.lai import LAIScorer, LayerInputCapture, per_sequence_loss
    from pipeline.lai.kernels.pairings import PAIRINGS
    from pipeline.lai.kernels.sketch import Kernels, VocabRequest, vocab_chunks
    from pipeline.train.model import build_model
    n_layer, hidden, n_head, vocab, b, t = SIZES[name]
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="gpt2", n_layer=n_layer, hidden=hidden, n_head=n_head),
                        vocab_size=vocab, seq_len=t)
    x = torch.randint(0, vocab, (b, t + 1))

    scorer = LAIScorer(ScoreSettings(method="sketch", reference="local").resolved())
    inp, tgt = x[:, :-1], x[:, 1:]

    def upcast():
        model.zero_grad(set_to_none=True)
        upcast_loss(model(input_ids=inp).logits, tgt).mean().backward()

    def separate():                   # the sketch step with the scorer's own vocabulary pass
        model.zero_grad(set_to_none=True)
        with LayerInputCapture(model) as cap:
            logits = model(input_ids=inp).logits
        losses = per_sequence_loss(logits, tgt)
        with torch.no_grad():
            keep = scorer.values(cap.inputs, logits, tgt) > 0
        (losses * keep).sum().div(len(losses)).backward()
    sec = lai_step_timings(model, x, {"sketch": scorer}, rounds=rounds,
                           extra={"upcast": upcast, "separate": separate})
    with torch.no_grad():
        logits = model(input_ids=inp).logits
    valid = tgt != -100

    def loss_then_own_pass():         # the loss's forward, then the sketch's vocabulary pass
        per_sequence_loss(logits, tgt)
        for _ in vocab_chunks(logits, tgt, valid, k2, 0, logits.dtype, Kernels(False)):
            pass

    def loss_folding():
        per_sequence_loss(logits, tgt, vocab=VocabRequest(k2, 0))
    k2 = PAIRINGS["token_pair"].split(scorer.s.sketch_dim)[1]
    vocab_sec = time_interleaved({"own": loss_then_own_pass, "folded": loss_folding},
                                 rounds=rounds)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return [name, f"{params:.1f}M", f"{b}x{t}, V {vocab}", sec["upcast"] * 1e3,
            sec["plain"] * 1e3, sec["plain"] / sec["upcast"], vocab_sec["own"] * 1e3,
            vocab_sec["folded"] * 1e3, sec["separate"] / sec["plain"],
            sec["sketch"] / sec["plain"], sec["sketch"] / sec["separate"]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loss_cost",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--sizes", default=",".join(SIZES))
    p.add_argument("--doc", action="store_true", help="also update docs/RESULTS.md")
    args = p.parse_args(argv)
    rows = [measure(n, args.rounds) for n in args.sizes.split(",")]
    text = "\n".join([
        "## Loss: chunked vs upcast cross-entropy (`python -m benchmarks.loss_cost`)", "",
        f"{machine()}; {now()}. One training step (forward, per-sequence loss, backward; "
        "GPT-2, fp32, best of "
        f"{args.rounds} interleaved rounds) with the upcast `F.cross_entropy` the trainer used "
        "before issue 22 and with the chunked loss it uses now (pipeline/lai/kernels/xent.py, eager on "
        "a CPU; compiled on CUDA, measured by the GPU check's profile part); the LAI sketch step "
        "(layers linear, token_pair, local reference) against the chunked step, with the "
        "sketch's vocabulary side in a pass of its own over the logits (as before) and folded "
        "by the loss's pass (what the trainer does now); and that part alone: the loss's "
        "forward then the sketch's vocabulary pass, against the loss's forward folding it "
        "(no grad, the same logits).", "",
        md_table(["size", "params", "batch", "step ms, upcast loss", "step ms, chunked loss",
                  "chunked / upcast", "loss + own vocabulary pass ms",
                  "loss folding the vocabulary side ms",
                  "sketch step / chunked, own vocabulary pass",
                  "sketch step / chunked, folded by the loss", "folded / own pass"], rows,
                 "{:.3f}")])
    print(text)
    if args.doc:
        update_section(ROOT / "docs" / "RESULTS.md", "loss-cost", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
