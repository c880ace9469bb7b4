"""lai-prep's progress bars (tqdm on stderr; shown on a terminal or with --progress 1).

`SourceBar` follows a reader's Cursor: over the source's input bytes when its files' size is known
(uncompressed files), else over documents when their number is (Parquet metadata, a
non-streaming HF dataset, a part's range), with a total and an ETA; documents and tokens in the
postfix. Compressed files and streamed datasets have no total: the bar counts and shows the rate.
`elapsed` shows a running clock while something without progress reports runs (sentencepiece
training releases the GIL, so the clock's thread keeps ticking).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

from tqdm import tqdm

from data_prep.sources.cursor import Cursor


class SourceBar:
    def __init__(self, desc: str, cursor: Cursor, *, disable: bool | None,
                 docs_total: int | None = None, docs_limit: int | None = None):
        """`docs_total`: count documents against this total (a part's range); `docs_limit`:
        --max-docs, which caps a document total."""
        self.cursor, self.docs_total, self.docs_limit = cursor, docs_total, docs_limit
        self.bar = tqdm(desc=desc, unit="doc", unit_scale=True, dynamic_ncols=True,
                        disable=disable, mininterval=0.5)
        self.by_bytes: bool | None = None        # decided at the first update (the reader's
        self.docs = self.tokens = 0              # totals are known once it has started)

    def _start(self) -> None:
        c, bar = self.cursor, self.bar
        self.by_bytes = self.docs_total is None and c.total_bytes is not None
        if self.by_bytes:
            bar.unit, bar.unit_divisor, bar.total = "B", 1024, c.total_bytes
        else:
            total = self.docs_total if self.docs_total is not None else c.total_docs
            if total is not None and self.docs_limit is not None:
                total = min(total, self.docs_limit)
            bar.total = total

    def update(self, docs: int, tokens: int = 0) -> None:
        if self.by_bytes is None:
            self._start()
        self.docs += docs
        self.tokens += tokens
        self.bar.set_postfix_str(f"{self.docs:,} docs, {self.tokens / 1e6:.2f}M tok",
                                 refresh=False)
        self.bar.update(self.cursor.bytes_read - self.bar.n if self.by_bytes else docs)

    def close(self) -> None:
        self.bar.close()


@contextlib.contextmanager
def elapsed(desc: str, *, disable: bool | None) -> Iterator[None]:
    """A bar that shows the time spent in the `with` block, refreshed every second."""
    bar = tqdm(desc=desc, bar_format="{desc}: {elapsed}", disable=disable)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(1.0):
            bar.refresh()

    clock = threading.Thread(target=tick, daemon=True)
    clock.start()
    try:
        yield
    finally:
        stop.set()
        clock.join()
        bar.close()
