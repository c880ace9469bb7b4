"""The per-sequence loss's share of a training step: the upcast F.cross_entropy the trainer used
before issue 22 against the chunked one (pipeline/lai/kernels/xent.py), with the LAI sketch step beside
them, side by side in one process (ratios; the machine named).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.loss_cost [--rounds 5] [--doc]

Per size (GPT-2 from the config schema, random init, B x T random tokens): best-of-rounds wall
seconds, measured round-robin (benchmarks.lib.timing.time_interleaved), of one step = forward,
per-sequence loss, backward -- with the chunked loss ("plain"), with the upcast loss, and with the
default LAI sketch (layers linear, token_pair, reference local; benchmarks.lib.timing.lai_step_timings).
Prints a markdown table; --doc also writes it as the loss-cost section of docs/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys

from benchmarks.lib.docs import update_section
from benchmarks.lib.machine import machine, now
from benchmarks.lib.paths import ROOT
from benchmarks.lib.tables import md_table
from benchmarks.lib.timing import lai_step_timings
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
    from pipeline.lai import LAIScorer
    from pipeline.train.model import build_model
    n_layer, hidden, n_head, vocab, b, t = SIZES[name]
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="gpt2", n_layer=n_layer, hidden=hidden, n_head=n_head),
                        vocab_size=vocab, seq_len=t)
    x = torch.randint(0, vocab, (b, t + 1))

    def upcast():
        model.zero_grad(set_to_none=True)
        upcast_loss(model(input_ids=x[:, :-1]).logits, x[:, 1:]).mean().backward()
    sec = lai_step_timings(model, x, {"sketch": LAIScorer(ScoreSettings(method="sketch",
                                                                        reference="local").resolved())},
                           rounds=rounds, extra={"upcast": upcast})
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return [name, f"{params:.1f}M", f"{b}x{t}, V {vocab}", sec["upcast"] * 1e3,
            sec["plain"] * 1e3, sec["plain"] / sec["upcast"], sec["sketch"] / sec["plain"]]


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
        "(layers linear, token_pair, local reference) against the chunked step.", "",
        md_table(["size", "params", "batch", "step ms, upcast loss", "step ms, chunked loss",
                  "chunked / upcast", "sketch step / chunked step"], rows, "{:.3f}")])
    print(text)
    if args.doc:
        update_section(ROOT / "docs" / "RESULTS.md", "loss-cost", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
