"""A run's checkpoints, from what they hold to which one a run continues:

    state.py       TrainState: every stateful component, registered by name
    checkpoint.py  saving / restoring a TrainState;  safe_load.py  torch.load with an allow-list
    resume.py      which checkpoint to continue, and whether this config may (one place)
    lineage.py     run.continue_from: another run's checkpoint starts this one
    universal.py   ZeRO partitions -> DeepSpeed universal checkpoint (another number of ranks)
    lock.py        one run per run directory (flock on RUN/run.lock)
"""
