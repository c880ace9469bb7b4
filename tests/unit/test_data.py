"""Loader: packing, locate exactness, determinism, mixing, rank slicing, resume, val split."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from support.datagen import make_data_dir, random_docs
from pipeline.data import DocSpan, PackedDataset, RankLoader
from pipeline.errors import UserError
from pipeline.format.manifest import Manifest, ShardEntry, TokenizerEntry

L = 16              # seq_len
PER_SHARD = 40      # documents per shard


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three single-source directories of different sizes (c is tiny: it wraps often), with the
    documents kept for independent checks: docs[name][split] = list of token arrays."""
    root = tmp_path_factory.mktemp("data")
    docs, dirs = {}, {}
    for i, (name, n) in enumerate([("a", 150), ("b", 90), ("c", 12)]):
        train, val = random_docs(n, seed=10 * i), random_docs(8, seed=10 * i + 1)
        docs[name] = {"train": train, "val": val}
        dirs[name] = make_data_dir(root / name, train, source=name, val_docs=val, docs_per_shard=PER_SHARD)
    return dirs, docs


def expected_tokens(docs, spans: list[DocSpan]) -> np.ndarray:
    """The tokens `spans` name, read from the generating documents (not through any reader)."""
    out = []
    for s in spans:
        _, split, shard_no = s.shard.rsplit("-", 2)
        doc = docs[s.source][split][int(shard_no) * PER_SHARD + s.doc]
        assert 0 <= s.token_offset and s.token_offset + s.num_tokens <= len(doc)
        out.append(doc[s.token_offset: s.token_offset + s.num_tokens])
    return np.concatenate(out)


def test_locate_is_exact_across_epochs_and_sources(corpus):
    dirs, docs = corpus
    ds = PackedDataset([(dirs["a"], 2.0), (dirs["c"], 1.0)], L, seed=3)
    for seq_id in list(range(0, 3 * ds.samples_per_epoch, 7)) + [10 ** 9 + 11]:
        x, spans = ds.sample(seq_id), ds.locate(seq_id)
        assert x.dtype == np.int64 and x.shape == (L + 1,)
        assert sum(s.num_tokens for s in spans) == L + 1
        np.testing.assert_array_equal(x, expected_tokens(docs, spans))
        np.testing.assert_array_equal(x, np.concatenate([ds.span_tokens(s) for s in spans]))


@pytest.mark.parametrize("epoch", [0, 1])
def test_one_epoch_packs_the_shuffled_document_stream(corpus, epoch):
    """One source: an epoch's samples tile the concatenated documents with one-token overlaps,
    every document is used contiguously, and less than one sample of tokens is left over."""
    dirs, docs = corpus
    ds = PackedDataset([(dirs["a"], 1.0)], L, seed=0)
    n, total = ds.samples_per_epoch, sum(len(d) for d in docs["a"]["train"])
    assert n == (total - 1) // L
    covered: dict[tuple[str, int], set[int]] = {}
    for seq_id in range(epoch * n, (epoch + 1) * n):
        spans = ds.locate(seq_id)
        for i, s in enumerate(spans):
            doc_len = len(docs["a"]["train"][int(s.shard[-5:]) * PER_SHARD + s.doc])
            if i > 0:
                assert s.token_offset == 0                       # next document starts at its start
            if i < len(spans) - 1:
                assert s.token_offset + s.num_tokens == doc_len  # runs to the end of the document
            covered.setdefault((s.shard, s.doc), set()).update(range(s.token_offset, s.token_offset + s.num_tokens))
    assert sum(len(p) for p in covered.values()) == n * L + 1    # n samples of L+1, overlapping by 1
    assert total - (n * L + 1) < L
    for positions in covered.values():
        assert positions == set(range(len(positions)))           # a prefix, no holes


def test_deterministic_and_seeded(corpus):
    dirs, _ = corpus
    srcs = [(dirs["a"], 0.7), (dirs["b"], 0.3)]
    ids = range(0, 2 * PackedDataset(srcs, L).samples_per_epoch, 5)
    run = lambda seed: np.stack([PackedDataset(srcs, L, seed=seed).sample(i) for i in ids])  # noqa: E731
    first = run(1)
    np.testing.assert_array_equal(first, run(1))
    assert (first != run(2)).any(axis=1).mean() > 0.9
    ds = PackedDataset([(dirs["a"], 1.0)], L, seed=1)
    n = ds.samples_per_epoch
    assert not np.array_equal([ds.sample(i) for i in range(n)], [ds.sample(n + i) for i in range(n)])


def test_mixing_proportions_over_any_window(corpus):
    dirs, docs = corpus
    weights = {"a": 5.0, "b": 3.0, "c": 2.0}
    ds = PackedDataset([(dirs[k], w) for k, w in weights.items()], L, seed=0)
    names = list(weights)
    src = np.array([names.index(ds.locate(i)[0].source) for i in range(3000)])
    counts = np.vstack([np.zeros(3), np.cumsum(np.eye(3)[src], axis=0)])
    w = np.array(list(weights.values())) / sum(weights.values())
    for win in (1, 2, 10, 37, 100, 1000, 3000):
        assert np.abs(counts[win:] - counts[:-win] - w * win).max() <= 1.0 + 1e-9, win
    # the tiny source wrapped through many of its epochs and stayed exact
    n_c = ds.streams[2].num_samples
    assert (src == 2).sum() > 10 * n_c
    for i in np.flatnonzero(src == 2)[-5:]:
        np.testing.assert_array_equal(ds.sample(int(i)), expected_tokens(docs, ds.locate(int(i))))


def test_rank_slices_are_disjoint_and_cover_the_global_batch(corpus):
    dirs, _ = corpus
    ds = PackedDataset([(dirs["a"], 1.0), (dirs["b"], 1.0)], L, seed=5)
    micro, world = 2, 3
    loaders = [RankLoader(ds, micro, r, world) for r in range(world)]
    for step in range(4):
        batches = [ld.next_batch() for ld in loaders]
        ids = torch.cat([b["seq_ids"] for b in batches])
        assert ids.tolist() == list(range(step * micro * world, (step + 1) * micro * world))
        for b in batches:
            assert b["input_ids"].dtype == b["targets"].dtype == b["seq_ids"].dtype == torch.int64
            assert b["input_ids"].shape == b["targets"].shape == (micro, L)
            x = torch.from_numpy(np.stack([ds.sample(int(i)) for i in b["seq_ids"]]))
            assert torch.equal(b["input_ids"], x[:, :-1]) and torch.equal(b["targets"], x[:, 1:])
    assert all(ld.samples_consumed == 4 * micro * world for ld in loaders)


def test_resume_equals_uninterrupted(corpus):
    dirs, _ = corpus
    srcs = [(dirs["a"], 0.6), (dirs["c"], 0.4)]
    ref = RankLoader(PackedDataset(srcs, L, seed=9), 4, 1, 2)
    for _ in range(7):
        ref.next_batch()
    state = ref.state_dict()
    resumed = RankLoader(PackedDataset(srcs, L, seed=9), 4, 1, 2)
    resumed.load_state_dict(state)
    by_count = RankLoader(PackedDataset(srcs, L, seed=9), 4, 1, 2, samples_consumed=state["samples_consumed"])
    for _ in range(5):
        want = ref.next_batch()
        for got in (resumed.next_batch(), by_count.next_batch()):
            assert all(torch.equal(want[k], got[k]) for k in want)


def test_resume_with_a_different_world_size_continues_the_global_order(corpus):
    dirs, _ = corpus
    srcs = [(dirs["a"], 1.0), (dirs["b"], 2.0)]
    four = [RankLoader(PackedDataset(srcs, L), 2, r, 4) for r in range(4)]
    for _ in range(3):
        for ld in four:
            ld.next_batch()
    state = four[0].state_dict()
    two = [RankLoader(PackedDataset(srcs, L), 4, r, 2) for r in range(2)]
    for ld in two:
        ld.load_state_dict(state)
    for _ in range(3):
        a = [ld.next_batch() for ld in four]
        b = [ld.next_batch() for ld in two]
        for k in ("seq_ids", "input_ids", "targets"):
            assert torch.equal(torch.cat([x[k] for x in a]), torch.cat([x[k] for x in b]))
    assert two[0].samples_consumed == four[0].samples_consumed == 6 * 8


def test_state_from_other_data_or_seed_is_refused(corpus):
    dirs, _ = corpus
    state = RankLoader(PackedDataset([(dirs["a"], 1.0)], L, seed=0), 2, 0, 1).state_dict()
    for other in (PackedDataset([(dirs["a"], 1.0)], L, seed=1), PackedDataset([(dirs["b"], 1.0)], L),
                  PackedDataset([(dirs["a"], 1.0)], L + 1), PackedDataset([(dirs["a"], 1.0), (dirs["b"], 1.0)], L)):
        with pytest.raises(UserError, match="loader state"):
            RankLoader(other, 2, 0, 1).load_state_dict(state)


def test_val_split_reads_only_val_shards(corpus):
    dirs, docs = corpus
    srcs = [(dirs["a"], 1.0), (dirs["b"], 1.0)]
    val, train = PackedDataset(srcs, L, split="val"), PackedDataset(srcs, L, split="train")
    val_tokens = sum(len(d) for k in ("a", "b") for d in docs[k]["val"])
    assert val.samples_per_epoch == sum((sum(len(d) for d in docs[k]["val"]) - 1) // L for k in ("a", "b"))
    assert val.samples_per_epoch < val_tokens // L < train.samples_per_epoch
    for i in range(2 * val.samples_per_epoch):
        spans = val.locate(i)
        assert all("-val-" in s.shard for s in spans)
        np.testing.assert_array_equal(val.sample(i), expected_tokens(docs, spans))
    assert not any("-val-" in s.shard for i in range(200) for s in train.locate(i))


def test_tokenizer_properties(corpus):
    dirs, _ = corpus
    ds = PackedDataset([(dirs["b"], 1.0)], L)
    assert (ds.vocab_size, ds.eos_id) == (512, 2)
    assert ds.tokenizer_path == dirs["b"] / "tokenizer.model" and ds.tokenizer_path.is_file()
    assert ds.data_dir("b", "b-train-00000") == dirs["b"]


def test_megatron_shards_with_multi_sequence_documents(tmp_path):
    """A Megatron shard whose documents span several sequences (index written here from the byte
    layout): documents are the packing unit and DocSpans index documents, not sequences."""
    seqs = [np.array([5, 6, 7]), np.array([8, 2]), np.array([9, 10, 11, 2]), np.array([12, 13, 2])]
    doc_idx = np.array([0, 2, 4], dtype=np.int64)               # two documents of two sequences
    lengths = np.array([len(s) for s in seqs], dtype=np.int32)
    pointers = np.concatenate([[0], np.cumsum(lengths[:-1]) * 2]).astype(np.int64)
    (tmp_path / "m-train-00000.bin").write_bytes(np.concatenate(seqs).astype(np.uint16).tobytes())
    (tmp_path / "m-train-00000.idx").write_bytes(
        b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 8, len(seqs), len(doc_idx))
        + lengths.tobytes() + pointers.tobytes() + doc_idx.tobytes())
    shard = ShardEntry(source="m", split="train", prefix="m-train-00000", num_docs=2, num_tokens=12,
                       bin_sha256="-", idx_sha256="-")
    tok = TokenizerEntry(kind="sentencepiece", path="tokenizer.model", sha256="0" * 64, vocab_size=100, eos_id=2)
    Manifest(tokenizer=tok, dtype="uint16", split={}, sources=[{"name": "m", "spec": {}}], shards=[shard]).save(tmp_path)
    ds = PackedDataset([(tmp_path, 1.0)], 3)
    docs = [np.concatenate(seqs[:2]), np.concatenate(seqs[2:])]
    assert ds.samples_per_epoch == 3
    for i in range(6):
        spans = ds.locate(i)
        assert all(s.doc in (0, 1) and s.token_offset + s.num_tokens <= len(docs[s.doc]) for s in spans)
        want = np.concatenate([docs[s.doc][s.token_offset: s.token_offset + s.num_tokens] for s in spans])
        np.testing.assert_array_equal(ds.sample(i), want)
