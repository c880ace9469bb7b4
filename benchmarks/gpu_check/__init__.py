"""The prepared GPU check: CUDA tests, GPT-2-small throughput against a reference loop, LAI's cost,
one headroom scenario at GPU size.

    benchmarks/gpu_check.sh --batch 64                   # on a GPU machine: one command, ~9 min
    .venv/bin/python -m benchmarks.gpu_check --dry      # the same parts at tiny sizes, on CPU

Parts, in order (the default leaves out 6, measured before; --parts picks); each is timed, its
results saved as it ends, a failing part is recorded and the next one still runs:
1. env: device, driver, torch / CUDA / DeepSpeed / transformers versions;
2. tests: `pytest -m cuda` (tests/e2e/test_cuda.py: LAI on CUDA, a ZeRO-2 bf16 step with LAI, resume);
3. data: the stdlib corpus through the real `lai-prep`, GPT-2's vocabulary size (50257);
4. overhead: GPT-2 small (124M parameters, seq 1024, bf16, SDPA attention) through the real trainer
   (`python -m pipeline.train`, 1 rank, DeepSpeed ZeRO 1, one process per run): LAI off, sketch,
   both again with compiled blocks (model.compile: the sketch's capture hooks traced into them),
   at the largest micro-batch that fits (measured, or --batch); the nanoGPT-class reference loop
   (benchmarks/ref_loop.py: whole-model torch.compile, SDPA, fused AdamW, bf16 autocast, no
   DeepSpeed) on the same model, data and batch; --plan adds others (a bare DeepSpeed loop,
   benchmarks/bare_loop.py: bare:big; exact at the small batch: exact:small;
   train.backend=fsdp2: off-fsdp2:big, sketch-fsdp2:big). Per run: tokens/s (the trainer's phase
   timers and wall clock between log lines), MFU against the card's bf16 dense peak, peak
   memory, LAI's share of the step (its phase timer: the sketch's vocabulary side runs in the
   loss's forward, so LAI's whole cost is the ratio sketch / off), the data phase; the ratios
   pipeline / reference (and / bare);
5. profile: where the sketch's time goes (forward with / without capture, input side, vocabulary
   side, outer product, an fp32 softmax as the floor; the vocabulary side under torch.compile;
   the input side as one compiled call over all inputs, beside one read of every input: its floor),
   the loss's forward + backward (upcast F.cross_entropy vs the chunked loss, alone and folding
   the sketch's vocabulary side as LAI steps do: time, memory) and
   the document memory's CPU lookups per micro-batch;
6. fidelity: on the model the sketch run trained, LAI values (token_pair, the batch as reference)
   of the sketch at several sizes and of a bf16 copy against exact fp32: Pearson per batch;
7. headroom: one headroom scenario at GPU size (benchmarks.headroom --size gpu, spam: none /
   oracle / lai-filter / mixing, 1 seed, 500 steps, corpus scaled to match: SIZES["gpu"];
   its runs at once on the one device). The dry mode runs it at the CPU size for a few steps.
Writes OUT/gpu_check.json, OUT/gpu_check.md (the section for docs/RESULTS.md) and OUT/*.log;
`--doc` also replaces the gpu section of docs/RESULTS.md.

Layout: shared.py (sizes, trainer modes, the run config, logging), env.py (parts 1-3),
overhead.py (4), lai_profile.py (5), sketch_fidelity.py (6), headroom_scenario.py (7), report.py
(the section and the files), __main__.py (the command: every part in order).
"""
