"""Training (`lai-train`, `python -m pipeline.train`), in the order a run goes through it:

    cli.py         the command: config -> validation -> resume check -> process group -> Trainer
    resume.py      which checkpoint to continue, and whether this config may (one place)
    runtime.py     process group, device, timing, stop signals
    setup.py       data, model + guarded optimizer + DeepSpeed engine, run files (DeepSpeed JSON)
    model.py       HF causal LMs from the config;  flops.py  model FLOPs, MFU
    trainer.py     the Trainer: setup, then a loop of train_step and log / eval / save / stop
    step.py        one optimizer step, top to bottom (micro-steps, masked loss, the update)
    optim.py       LR schedule, client AdamW, the SkipGate
    state.py       TrainState: every stateful component, registered by name
    checkpoint.py  saving / restoring a TrainState;  export.py  RUN/final (HF model + tokenizer)
    log.py         what is reported while training;  metrics.py  TensorBoard writer
    ledger.py      the valuation ledger (one row per trained sequence) and its reader
"""
