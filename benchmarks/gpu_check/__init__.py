"""The prepared GPU check: CUDA tests, LAI overhead at GPT-2-small scale, sketch-vs-exact agreement.

    benchmarks/gpu_check.sh                              # on a GPU machine: one command, < 8 min
    .venv/bin/python -m benchmarks.gpu_check --dry      # the same parts at tiny sizes, on CPU

Parts, in order; each is timed, a failing part is recorded and the next one still runs:
1. env: device, driver, torch / CUDA / DeepSpeed / transformers versions;
2. tests: `pytest -m cuda` (tests/test_cuda.py: LAI on CUDA, a ZeRO-2 bf16 step with LAI, resume);
3. data: the stdlib corpus through the real `lai-prep`, GPT-2's vocabulary size (50257);
4. overhead: GPT-2 small (124M parameters, seq 1024, bf16, SDPA attention) through the real
   trainer (`pipeline.train.main`, 1 rank, DeepSpeed ZeRO 1) in this process: LAI off / sketch at
   the largest micro-batch that fits (measured), the same two under train.backend=fsdp2 (ZeRO 2
   layout: the fsdp2 rows, compared with the deepspeed ones), and off / sketch / exact at
   micro-batch 8 (exact
   gathers per-token features: B T (D + V) floats); a bare DeepSpeed loop (engine forward,
   token-mean cross-entropy, backward, step) on the same model, data and batch. Per run: tokens/s
   (the trainer's phase timers and wall clock between log lines), MFU against the card's bf16
   dense peak, peak memory, and LAI's share of the step;
5. profile: where the sketch's time goes (forward with / without capture, input side, vocabulary
   side, outer product, an fp32 softmax as the floor; the vocabulary side under torch.compile);
6. fidelity: on the model the sketch run trained, LAI values (token_pair, the batch as reference)
   of the sketch at several sizes and of a bf16 copy against exact fp32: Pearson per batch.
Writes OUT/gpu_check.json, OUT/gpu_check.md (the section for docs/RESULTS.md) and OUT/*.log;
`--doc` also replaces the gpu section of docs/RESULTS.md.

Layout: shared.py (sizes, trainer modes, the run config, logging), env.py (parts 1-3),
overhead.py (4), lai_profile.py (5), sketch_fidelity.py (6), report.py (the section and the
files), __main__.py (the command: every part in order).
"""
