"""Training (`lai-train`, `python -m pipeline.train`), in the order a run goes through it:

    cli.py         the command: config -> validation -> resume check -> process group -> Trainer
    dryrun.py      --dry-run / --check: the checks and the printed plan, no rank started
    runplan.py     the data summary, warnings, memory and time estimates of the plan
    resume.py      which checkpoint to continue, and whether this config may (one place)
    lineage.py     run.continue_from: another run's checkpoint starts this one
    universal.py   ZeRO partitions -> DeepSpeed universal checkpoint (another number of ranks)
    lock.py        one run per run directory (flock on RUN/run.lock)
    runtime.py     process group, device, timing, stop signals
    launcher.py    torchrun for train.backend=fsdp2, passing exit 75 on
    setup.py       data, model + guarded optimizer + engine, run files (the DeepSpeed JSON)
    engine.py      the engine interface and build() per train.backend;  fsdp.py  FSDPEngine
    model.py       HF causal LMs from the config;  flops.py  model FLOPs, MFU
    init_from.py   model.init_from: a save_pretrained folder, checked against the data
    trainer.py     the Trainer: setup, then a loop of train_step and log / eval / save / stop
    step.py        one optimizer step, top to bottom (micro-steps, masked loss, the update)
    pool.py        lai.select.kind=oversample: the candidate pool, scored forward-only
    optim.py       LR schedule, client AdamW, the SkipGate
    moments.py     Adam's second moments for lai.score.precondition=adam (ZeRO 0-3, fsdp2)
    state.py       TrainState: every stateful component, registered by name
    checkpoint.py  saving / restoring a TrainState;  safe_load.py  torch.load with an allow-list
    export.py      RUN/final (HF model + tokenizer);  export_checkpoint.py  lai-export
    log.py         what is reported while training;  metrics.py  TensorBoard writer
    sinks.py       RUN/metrics.jsonl and W&B;  quiet.py  known-harmless console messages
    ledger.py      the valuation ledger (one row per trained sequence) and its reader
    faults.py      test-only fault injection
"""
