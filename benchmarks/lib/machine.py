"""Where and when a measurement ran: the machine in one line, the UTC time."""
from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    return (f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch thread(s), Python {platform.python_version()}")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
