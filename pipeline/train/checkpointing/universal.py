"""Resuming ZeRO 1-3 on another number of ranks: DeepSpeed's universal checkpoint.

ZeRO 1-3 save the optimizer state (ZeRO 3 also the weights) as one partition per rank, laid out
for the number of ranks that saved it. `ensure(ckpt, rank)` converts a checkpoint once, with
DeepSpeed's own `ds_to_universal`, into CKPT/universal/: one folder per parameter holding its fp32
weights and both Adam moments, which any number of ranks loads (the engine is built with
`checkpoint.load_universal`; checkpointing.checkpoint.load(..., universal=True)). It runs before
the process group starts: rank 0 converts, the other ranks wait for the folder to appear, so a
long conversion meets no collective timeout. A later resume from the same checkpoint reuses it;
it is removed with the checkpoint. DeepSpeed's converter and universal loader unpickle freely,
so the checkpoint's files (before a conversion) and a reused universal folder first pass
pipeline.train.checkpointing.safe_load.check_files.

Two flaws of DeepSpeed's ZeRO-3 universal loader are repaired on load (`repairing`): it gives
every param group the first one's settings and one shared Adam step counter.

Cost: every partition file is read once and every parameter written once as fp32 weights plus two
moments (12 bytes per parameter) next to copies of the model-state files, on rank 0; its memory
peaks at about one partition file. Measured on a shared 2-core CPU, 29.5M parameters: 25 s and
590 MB (ZeRO 2, fp32) or 531 MB (ZeRO 3), about 1.2M parameters per second and 18-20 bytes per
parameter. ZeRO 0 keeps the full optimizer state in one file and needs no conversion.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import torch

from pipeline.errors import UserError
from pipeline.fsutil import tmp_name
from pipeline.train.checkpointing import safe_load

UNIVERSAL = "universal"        # the converted checkpoint: CKPT/universal/ (a DeepSpeed tag)


def folder(ckpt: str | Path) -> Path:
    return Path(ckpt) / UNIVERSAL


@contextlib.contextmanager
def repairing(optimizer) -> Iterator[None]:
    """Around a universal load into the client optimizer. DeepSpeed's ZeRO-3 loader gives every
    param group the first group's settings (the no-decay group got weight decay) and one `step`
    tensor to all of them (torch's AdamW then counts it up once per group and step, skewing the
    bias correction): the groups keep our settings and each state its own step."""
    saved = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    yield
    for group, settings in zip(optimizer.param_groups, saved):
        group.update(settings)
    for state in optimizer.state.values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"] = state["step"].clone()


def ensure(ckpt: str | Path, rank: int, poll_s: float = 0.5) -> str:
    """CKPT/universal/ exists when this returns (rank 0 makes it, the others wait); returns a
    note for the resume line ("" on ranks other than 0)."""
    out = folder(ckpt)
    if rank != 0:
        while not out.is_dir():
            time.sleep(poll_s)
        return ""
    if out.is_dir():
        safe_load.check_files(out, recursive=True)   # DeepSpeed's universal loader unpickles
        return f"universal checkpoint {out} reused"
    return convert(Path(ckpt))


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def convert(ckpt: Path) -> str:
    """Convert DeepSpeed checkpoint `ckpt` into ckpt/universal/ (written under a temporary name,
    renamed when complete); returns what it cost as a note."""
    from deepspeed.checkpoint import ds_to_universal

    safe_load.check_files(ckpt)                 # the converter unpickles with weights_only=False
    for stale in ckpt.glob(f".{UNIVERSAL}.tmp.*"):         # a conversion that was killed
        shutil.rmtree(stale, ignore_errors=True)
    out = folder(ckpt)
    tmp = tmp_name(out)
    workers = max(1, min(8, (os.cpu_count() or 2) // 2))
    args = SimpleNamespace(input_folder=str(ckpt), output_folder=str(tmp),
                           num_extract_workers=workers, num_merge_workers=workers,
                           keep_temp_folder=False, strict=True, inject_missing_state=True)
    t0 = time.perf_counter()
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), \
                contextlib.redirect_stderr(null):           # its prints and progress bars
            ds_to_universal.main(args)
    except Exception as e:  # noqa: BLE001 -- any failure of the converter is one user-facing line
        shutil.rmtree(tmp, ignore_errors=True)
        why = (str(e).strip().splitlines() or [""])[0]
        raise UserError(f"{ckpt}: conversion to a universal checkpoint (to resume on another "
                        f"number of ranks) failed: {type(e).__name__}: {why}") from None
    finally:
        (ckpt / "latest_universal").unlink(missing_ok=True)   # the converter's pointer file
    os.replace(tmp, out)
    return (f"ZeRO partitions converted to a universal checkpoint in "
            f"{time.perf_counter() - t0:.1f} s ({_size_mb(out):.1f} MB in {out})")
