"""The Parquet reader: the string column `field` of each file, row by row (pos = the row within
its file; a null is an empty document). Every file is opened and checked before the first row
(cursor.total_docs is their row count); an unreadable file or a missing or non-string column is a
UserError naming the file."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from data_prep.sources.cursor import Cursor, located
from pipeline.errors import UserError


def parquet_file(path: Path, field: str) -> Any:
    """`path` opened as a pyarrow ParquetFile whose column `field` holds strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: unreadable Parquet ({str(e).splitlines()[0]})") from None
    schema = pf.schema_arrow
    if field not in schema.names:
        raise UserError(f"{path}: no text column '{field}' (columns: {', '.join(schema.names)})")
    t = schema.field(field).type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)):
        raise UserError(f"{path}: column '{field}' has type {t}, not string")
    return pf


def _values(path: Path, pf: Any, field: str) -> Iterator[str | None]:
    import pyarrow as pa
    try:
        for batch in pf.iter_batches(batch_size=1024, columns=[field]):
            yield from batch.column(0).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: unreadable Parquet ({str(e).splitlines()[0]})") from None


def _rows(unit: tuple[Path, Any], field: str) -> Iterator[tuple[int, str]]:
    path, pf = unit
    for row, value in enumerate(_values(path, pf, field)):
        yield row, value or ""


def parquet_docs(files: list[Path], field: str, cur: Cursor) -> Iterator[str]:
    """The documents of the column `field` of `files`, in order (see cursor.located)."""
    opened = [parquet_file(f, field) for f in files]
    cur.total_docs = sum(pf.metadata.num_rows for pf in opened)
    yield from located(zip(files, opened), lambda unit: _rows(unit, field), cur)
