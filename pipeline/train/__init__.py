"""Training (`lai-train`, `python -m pipeline.train`), in the order a run goes through it:

    cli.py         the command: config -> validation -> resume check -> process group -> Trainer
    dryrun.py      --dry-run / --check: the checks and the printed plan, no rank started
    runplan.py     the data summary, warnings, memory and time estimates of the plan
    checkpointing/ state, checkpoint, safe_load, resume, lineage, universal, lock: a run's
                   checkpoints, from what they hold to which one a run continues
    runtime.py     process group, device, timing, stop signals
    launcher.py    torchrun for train.backend=fsdp2, passing exit 75 on
    setup.py       data, model + guarded optimizer + engine, run files (the DeepSpeed JSON)
    engine.py      the engine interface and build() per train.backend;  fsdp.py  FSDPEngine
    model.py       HF causal LMs from the config;  flops.py  model FLOPs, MFU
    hf/            init_from, export, export_checkpoint: HF folders in (model.init_from) and
                   out (RUN/final, lai-export)
    trainer.py     the Trainer: setup, then a loop of train_step and log / eval / save / stop
    step.py        one optimizer step, top to bottom (micro-steps, masked loss, the update)
    pool.py        lai.select.kind=oversample: the candidate pool, scored forward-only
    optim.py       LR schedule, client AdamW, the SkipGate
    moments.py     Adam's second moments for lai.score.precondition=adam (ZeRO 0-3, fsdp2)
    log.py         what is reported while training;  metrics.py  TensorBoard writer
    sinks.py       RUN/metrics.jsonl and W&B;  quiet.py  known-harmless console messages
    faults.py      test-only fault injection
"""
