"""Document readers. A source is a named, deterministic stream of documents (`str`).

    spec.py      the `--source` grammar and `--sources FILE` lists -> SourceSpec (and their errors)
    discover.py  which files a source reads (a file, a directory, a glob, the stdlib), in order
    cursor.py    ReadStats, Cursor and `located`: the one read loop every reader runs in
    files.py     opening and decoding byte files (gzip by name, UTF-8 with counted replacements)
    text.py      text / stdlib: a document per file, line or blank-line-separated paragraph
    records.py   jsonl / json: the text field of JSON records
    parquet.py   parquet: a string column
    hf.py        hf: a datasets dataset (the Hub, a local script/folder, or save_to_disk)
    read.py      iter_documents (the documents of a SourceSpec) and check_source

Readers decode UTF-8 themselves: invalid bytes are replaced and counted (`ReadStats.bad_utf8`,
per document) or, with `strict=True`, raise UserError naming the file and byte offset. Malformed
input raises UserError (one line, names the file and record). A `Cursor` follows the reader: where
the document just yielded came from (file and line / record / row: its provenance, see
pipeline.format.provenance) and how much of the source is read (progress bars).

This package re-exports the names other modules use; new code imports from the module that owns
the name.
"""
from data_prep.sources.cursor import Cursor, ReadStats
from data_prep.sources.discover import origin_files, source_files, stdlib_files, stdlib_root
from data_prep.sources.hf import is_saved_dataset
from data_prep.sources.read import check_source, iter_documents
from data_prep.sources.spec import KINDS, SourceSpec, load_source_list, make_spec, parse_source

__all__ = ["KINDS", "Cursor", "ReadStats", "SourceSpec", "check_source", "is_saved_dataset",
           "iter_documents", "load_source_list", "make_spec", "origin_files", "parse_source",
           "source_files", "stdlib_files", "stdlib_root"]
