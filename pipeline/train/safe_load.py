"""Loading checkpoint files without running code from them.

    state = safe_load.load(path)          # torch.load(weights_only=True) + ALLOWED
    safe_load.use_for(engine)             # DeepSpeed's own checkpoint loads go through `load` too

A file may hold tensors, plain containers and numbers, and the few other types our checkpoints
really hold (`allowed()`): numpy arrays (the numpy RNG state in rank-XXXXX.pt) and three DeepSpeed
classes in ZeRO optimizer states (its loss scaler, ZeRO stage enum, fragment addresses). Anything
else, such as a pickled callable from a file someone crafted, is refused with one line before
any of it runs. DeepSpeed's engine reads every file of a regular checkpoint through its
checkpoint engine; `use_for` gives the engine ours. DeepSpeed's universal-checkpoint conversion
and loader and its zero_to_fp32 merge call torch.load(weights_only=False) themselves: before the
project lets them read a folder, `check_files` loads every file of it with `load` (README,
"Trust boundary").
"""
from __future__ import annotations

import functools
import os
import pickle
import re
from pathlib import Path

import torch

from pipeline.errors import UserError


@functools.cache
def allowed() -> list:
    """The non-tensor types checkpoints of lai-train hold (imported on first use)."""
    import numpy as np
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]       # numpy's array unpickler
    return [reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"),   # numpy 1 name
            np.ndarray, np.dtype, *{type(np.dtype(c)) for c in "?bBhHiIlLqQefdFD"},
            LossScaler, ZeroStageEnum, fragment_address]


def load(path: str | os.PathLike, map_location=None):
    """torch.load(path) with weights_only=True and `allowed()`; UserError (one line) if the file
    holds anything else."""
    try:
        with torch.serialization.safe_globals(allowed()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", str(e))
        what = (found.group(1) or found.group(2)) if found else "what it holds"
        raise UserError(f"{path}: refused to load {what}, which no lai-train checkpoint holds "
                        "(a file from elsewhere, or tampered with; see README, Trust boundary)"
                        ) from None


def check_files(folder: str | os.PathLike, *, recursive: bool = False) -> None:
    """`load` every *.pt file of `folder` (and its subfolders if `recursive`), one at a time:
    the check before a library loader that unpickles freely reads them. UserError (one line)
    on the first file that holds anything else. Costs one more read of each file."""
    files = Path(folder).rglob("*.pt") if recursive else Path(folder).glob("*.pt")
    for f in sorted(files):
        load(f, map_location="cpu")


def use_for(engine) -> None:
    """Make `engine` (a DeepSpeedEngine) read checkpoint files with `load`, if it uses DeepSpeed's
    default torch checkpoint engine (its other engines are left alone)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    if type(engine.checkpoint_engine) is TorchCheckpointEngine:
        engine.checkpoint_engine.__class__ = _safe_engine_class()


@functools.cache
def _safe_engine_class() -> type:
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeTorchCheckpointEngine(TorchCheckpointEngine):
        """DeepSpeed's torch checkpoint engine, reading with `load`."""

        def load(self, path: str, map_location=None):
            return load(path, map_location)

    return SafeTorchCheckpointEngine
