"""Host memory stays flat: mapped shard pages are released, index arrays are kept per epoch only."""
from __future__ import annotations

import numpy as np
import psutil

from support.datagen import make_data_dir
from pipeline.data import PackedDataset, RankLoader
from pipeline.data.source import EPOCH_CACHE

MB = 1 << 20


def rss_growth_over_one_epoch(data_dir, release_every_bytes: int) -> int:
    ds = PackedDataset([(data_dir, 1.0)], 1024, seed=0)
    ds.release_every_bytes = release_every_bytes
    loader = RankLoader(ds, micro_batch=8, rank=0, world=1)
    for _ in range(20):                     # warm up: epoch index arrays, allocator pools
        loader.next_batch()
    proc = psutil.Process()
    before = proc.memory_info().rss
    peak = before
    while loader.samples_consumed < ds.samples_per_epoch:
        loader.next_batch()
        if loader.samples_consumed % 512 == 0:
            peak = max(peak, proc.memory_info().rss)
    return max(peak, proc.memory_info().rss) - before


def test_rss_stays_flat_while_reading_a_large_shard(tmp_path):
    rng = np.random.default_rng(0)
    docs = [np.append(rng.integers(3, 60000, size=int(n)), 2) for n in rng.integers(1000, 7000, size=4000)]
    data_dir = make_data_dir(tmp_path / "big", docs, vocab_size=60000, docs_per_shard=2000)
    size = sum((data_dir / f"synthetic-train-0000{i}.bin").stat().st_size for i in range(2))
    assert size > 24 * MB
    # control: without releasing, the mapped pages read stay resident (so the bound below can fail)
    assert rss_growth_over_one_epoch(data_dir, release_every_bytes=1 << 62) > 12 * MB
    assert rss_growth_over_one_epoch(data_dir, release_every_bytes=2 * MB) < 4 * MB


def test_index_arrays_are_kept_for_a_bounded_number_of_epochs(tmp_path):
    data_dir = make_data_dir(tmp_path / "d", [np.append(np.arange(3, 40), 2)] * 20)
    ds = PackedDataset([(data_dir, 1.0)], 8)
    stream = ds.streams[0]
    for i in range(0, 30 * ds.samples_per_epoch, 3):
        ds.sample(i)
        assert len(stream._epochs) <= EPOCH_CACHE
