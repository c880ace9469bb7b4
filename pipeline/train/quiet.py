"""Console messages of DeepSpeed and torch that this project knows to be harmless, silenced one
by one (each by its exact text; everything else they print still shows):

- "Setting accelerator to CPU. If you have GPU ...": DeepSpeed's accelerator guess on a machine
  without CUDA, once per process; the trainer runs on the CPU there anyway, so it names the CPU
  accelerator itself (DS_ACCELERATOR=cpu, unless already set).
- "You are using ZeRO with an untested optimizer": our AdamW with its skip gate is a subclass
  DeepSpeed does not know (pipeline.train.optim); the ZeRO path it takes is tested here.
- FutureWarning "`torch.distributed.all_gather_into_tensor` is deprecated" (and
  "`...reduce_scatter_tensor` is deprecated"): called inside DeepSpeed's ZeRO, fully_shard
  (train.backend=fsdp2) and our collectives; nothing for a user to change.
"""
from __future__ import annotations

import logging
import os
import warnings

import torch

UNTESTED_OPTIMIZER = "untested optimizer"
COLLECTIVE_DEPRECATED = r"`torch\.distributed\.(all_gather_into|reduce_scatter)_tensor` is deprecated"


class DropMessages(logging.Filter):
    """A logging filter that drops the records whose message contains one of `fragments`."""

    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


def silence_known_noise() -> None:
    """Install the filters of the module doc in this process (before DeepSpeed starts)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    warnings.filterwarnings("ignore", message=COLLECTIVE_DEPRECATED, category=FutureWarning)
    from deepspeed.utils import logger
    logger.addFilter(DropMessages(UNTESTED_OPTIMIZER))
