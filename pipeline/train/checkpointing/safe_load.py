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
"Trust boundary"). torch.distributed.checkpoint (train.backend=fsdp2) unpickles its `.metadata`
and its non-tensor items freely too: `dcp_load` reads them through an allow-list (the DCP
metadata classes) and `load`'s rules instead.
"""
from __future__ import annotations

import functools
import logging
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


# What a DCP `.metadata` file holds: torch's checkpoint metadata classes and the few types they
# carry (sizes, dtypes, layouts, paths); a dtype is any torch attribute that is a torch.dtype.
_DCP_METADATA = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "MetadataIndex", "StorageMeta", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if name in _DCP_METADATA.get(module, ()) or (
                module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name}")


def dcp_extents(folder: str | os.PathLike) -> dict[str, int]:
    """{shard file name: the bytes DCP will read from it} of the DCP checkpoint `folder`, from its
    `.metadata` read through the allow-list (pickle.UnpicklingError, OSError or EOFError when
    that cannot be read)."""
    with open(Path(folder) / ".metadata", "rb") as f:
        meta = _MetadataUnpickler(f).load()
    need: dict[str, int] = {}
    for info in (getattr(meta, "storage_data", None) or {}).values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    return need


def dcp_load(state: dict, path: str | os.PathLike, **kwargs) -> None:
    """torch.distributed.checkpoint.load(state, path) with its metadata unpickled through
    `_DCP_METADATA` and its non-tensor items through `load`'s rules (torch's own reader and
    planner unpickle both freely). A refused file is a pickle.UnpicklingError naming it, inside
    DCP's CheckpointException as any read failure is. `kwargs`: dcp.load's (no_dist, ...)."""
    import io

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Reader(FileSystemReader):
        def read_metadata(self, *args, **kw):
            meta_path = self._get_metadata_path(kw.get("rank"))
            with self.fs.create_stream(meta_path, "rb") as f:
                try:
                    meta = _MetadataUnpickler(f).load()
                except pickle.UnpicklingError as e:
                    raise pickle.UnpicklingError(f"{meta_path}: refused to load "
                                                 f"{str(e).removeprefix('GLOBAL ')}") from None
            meta.storage_meta = getattr(meta, "storage_meta", None) or StorageMeta()
            meta.storage_meta.load_id = self.load_id
            return meta

    class Planner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            with torch.serialization.safe_globals(allowed()):
                try:
                    obj = torch.load(value, weights_only=True)
                except pickle.UnpicklingError as e:
                    raise pickle.UnpicklingError(f"{path}: refused to load an item of "
                                                 f"{read_item.dest_index.fqn} ({e})") from None
            safe = io.BytesIO()        # what passed, re-serialised: the parent places it
            torch.save(obj, safe)
            safe.seek(0)
            super().load_bytes(read_item, safe)

    def not_the_metadata_fallback(record) -> bool:   # DCP's traceback on the root logger for
        return "metadata is not found" not in str(record.msg)   # what the exception says again

    root = logging.getLogger()
    root.addFilter(not_the_metadata_fallback)
    try:
        dcp.load(state, storage_reader=Reader(path), planner=Planner(), **kwargs)
    finally:
        root.removeFilter(not_the_metadata_fallback)


def check_files(folder: str | os.PathLike, *, recursive: bool = False) -> None:
    """`load` every *.pt file of `folder` (and its subfolders if `recursive`), one at a time:
    the check before a library loader that unpickles freely reads them. UserError (one line)
    on the first file that holds anything else. Costs one more read of each file."""
    files = Path(folder).rglob("*.pt") if recursive else Path(folder).glob("*.pt")
    for f in sorted(files):
        load(f, map_location="cpu")


def use_for(engine) -> None:
    """Make `engine` read checkpoint files with `load`, if it is a DeepSpeedEngine with DeepSpeed's
    default torch checkpoint engine (its other engines, and fsdp2's FSDPEngine, which reads its
    own files safely, are left alone)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    if type(getattr(engine, "checkpoint_engine", None)) is TorchCheckpointEngine:
        engine.checkpoint_engine.__class__ = _safe_engine_class()


@functools.cache
def _safe_engine_class() -> type:
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeTorchCheckpointEngine(TorchCheckpointEngine):
        """DeepSpeed's torch checkpoint engine, reading with `load`."""

        def load(self, path: str, map_location=None):
            return load(path, map_location)

    return SafeTorchCheckpointEngine
