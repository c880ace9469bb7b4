"""The `datasets` reader (kind hf): `datasets.load_dataset(NAME, CONFIG, split=SPLIT)` (the Hub,
a local loading script or data folder, `data_files=`), or `datasets.load_from_disk` for a folder
written by save_to_disk (SPLIT picks the split of a DatasetDict). Yields the string column `field`
row by row (pos = the row; a null is an empty document); a dataset that fails to load or lacks
the column, or a non-string value, is a UserError naming `hf:NAME` (and the row)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from data_prep.sources.cursor import Cursor, located
from data_prep.sources.spec import SourceSpec
from pipeline.errors import UserError

BATCH = 1000


def is_saved_dataset(path: str) -> bool:
    """A folder written by datasets' save_to_disk (a Dataset or a DatasetDict)."""
    p = Path(path)
    return p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file())


def _load_hf(spec: SourceSpec) -> Any:
    import datasets
    if is_saved_dataset(spec.path):
        ds = datasets.load_from_disk(spec.path)
        if isinstance(ds, datasets.DatasetDict):
            if spec.split not in ds:
                raise UserError(f"hf:{spec.path}: no split '{spec.split}' in this saved "
                                f"DatasetDict (splits: {', '.join(ds)}); use hf:{spec.path}:SPLIT")
            ds = ds[spec.split]
        return ds.to_iterable_dataset() if spec.streaming else ds
    kwargs: dict[str, Any] = {"split": spec.split, "streaming": spec.streaming}
    if spec.data_files:
        kwargs["data_files"] = spec.data_files
    return datasets.load_dataset(spec.path, spec.config, **kwargs)


def _dataset(spec: SourceSpec, where: str) -> Any:
    """The loaded dataset, its failures turned into one-line UserErrors."""
    try:
        return _load_hf(spec)
    except UserError:
        raise
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ValueError...)
        msg = (str(e).splitlines() or [""])[0]
        raise UserError(f"{where}: cannot load dataset ({type(e).__name__}: {msg})") from None


def _rows(ds: Any, field: str, where: str) -> Iterator[tuple[int, str]]:
    for i, batch in enumerate(ds.iter(batch_size=BATCH)):
        if field not in batch:
            raise UserError(f"{where}: missing text field '{field}' (columns: {', '.join(batch)})")
        for j, value in enumerate(batch[field], i * BATCH):
            if value is not None and not isinstance(value, str):
                raise UserError(f"{where}: row {j}: text field '{field}' is "
                                f"{type(value).__name__}, not a string")
            yield j, value or ""


def hf_docs(spec: SourceSpec, cur: Cursor) -> Iterator[str]:
    """The documents of the dataset's column `spec.field`, in order (see cursor.located)."""
    where = f"hf:{spec.path}"
    ds = _dataset(spec, where)
    columns = ds.column_names
    if columns is not None and spec.field not in columns:
        raise UserError(f"{where}: missing text field '{spec.field}' (columns: {', '.join(columns)})")
    cur.total_docs = len(ds) if hasattr(ds, "__len__") else None
    yield from located([ds], lambda d: _rows(d, spec.field, where), cur)
