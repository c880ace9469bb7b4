"""The training data loader: memory-mapped shards -> packed samples of seq_len + 1 tokens ->
weighted, deterministic global order -> each rank's slice of every global micro-batch.

    dataset.py  PackedDataset (global, rank-agnostic; seq_id -> tokens / DocSpans), DocSpan
    source.py   one prepared directory as an endless stream of packed samples
    blend.py    deterministic weighted blending of sources
    loader.py   RankLoader (rank slicing, resume state)
    mixture.py  DynamicMixture: each global micro-batch's sources from weights that change
                during training (lai.mixing)
    groups.py   the (source, group) arms of lai.mixing.groups
"""
from pipeline.data.dataset import DocSpan, PackedDataset
from pipeline.data.loader import RankLoader

__all__ = ["DocSpan", "PackedDataset", "RankLoader"]
