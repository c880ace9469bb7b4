"""Loader bad input: one-line UserErrors that name the file or field."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from support.datagen import make_data_dir, random_docs
from pipeline.data import PackedDataset, RankLoader
from pipeline.errors import UserError


@pytest.fixture
def good(tmp_path):
    return make_data_dir(tmp_path / "good", random_docs(30, seed=1), source="good", docs_per_shard=10)


def expect(match: str, sources, seq_len: int = 8, **kw):
    with pytest.raises(UserError, match=match) as err:
        PackedDataset(sources, seq_len, **kw)
    assert "\n" not in str(err.value)


def test_missing_directory_or_manifest(tmp_path):
    expect(f"{tmp_path / 'nope'}: data directory does not exist", [(tmp_path / "nope", 1.0)])
    (tmp_path / "empty").mkdir()
    expect(f"{tmp_path / 'empty' / 'manifest.json'}: no manifest", [(tmp_path / "empty", 1.0)])


def test_truncated_or_missing_shard_names_the_file(good):
    bin_file = good / "good-train-00001.bin"
    data = bin_file.read_bytes()
    bin_file.write_bytes(data[:-6])
    expect(f"{bin_file}: .* shorter than the index says", [(good, 1.0)])
    bin_file.unlink()
    expect(f"{bin_file}: missing shard file", [(good, 1.0)])


def test_shard_disagreeing_with_manifest(good):
    m = json.loads((good / "manifest.json").read_text())
    m["shards"][0]["num_tokens"] += 1
    (good / "manifest.json").write_text(json.dumps(m))
    expect("good-train-00000.idx: .* but the manifest says", [(good, 1.0)])


def test_tokenizer_mismatch_between_sources(good, tmp_path):
    other = make_data_dir(tmp_path / "other", random_docs(30, seed=2), source="other", tokenizer="another")
    expect(f"{other / 'manifest.json'}: tokenizer sha256 .* differs .*: prepare {other} again "
           f"with lai-prep --tokenizer spm:{good / 'tokenizer.model'} ...", [(good, 1.0), (other, 1.0)])


def test_split_without_shards_or_too_few_tokens(good, tmp_path):
    expect(f"{good / 'manifest.json'}: no 'val' shards", [(good, 1.0)], split="val")
    small = make_data_dir(tmp_path / "small", [[5, 6, 2]], source="small")
    expect(f"{small}: the 'train' split has 3 tokens, fewer than one sample", [(small, 1.0)], seq_len=3)
    expect("split: expected 'train' or 'val'", [(good, 1.0)], split="test")


def test_bad_weights_and_arguments(good):
    expect(r"data.sources\[0\]: weight must be a positive number", [(good, 0.0)])
    expect(r"data.sources\[1\]: weight must be a positive number", [(good, 1.0), (good, float("nan"))])
    expect(r"data.sources\[0\]: expected \(data_dir, weight\)", [str(good)])
    expect("data.sources: no data sources", [])
    expect("data.seq_len: must be a positive integer", [(good, 1.0)], seq_len=0)
    with pytest.raises(UserError, match="rank < world"):
        RankLoader(PackedDataset([(good, 1.0)], 8), 2, rank=2, world=2)


def test_same_shards_twice_are_ambiguous(good):
    expect("also in", [(good, 1.0), (good, 2.0)])


# ---------------------------------------------------------------- token ids and changed bytes

def _with_bad_token(docs, doc: int, token: int):
    docs = [d.copy() for d in docs]
    docs[doc][3] = token
    return docs


def _drop_max_id(data_dir) -> None:
    """The manifest as an older lai-prep wrote it (no max_id per shard)."""
    m = json.loads((data_dir / "manifest.json").read_text())
    for s in m["shards"]:
        del s["max_id"]
    (data_dir / "manifest.json").write_text(json.dumps(m))


def test_token_id_beyond_the_vocab_is_refused_when_the_shard_opens(tmp_path):
    docs = _with_bad_token(random_docs(30, seed=1, min_len=8), doc=17, token=600)
    d = make_data_dir(tmp_path / "d", docs, vocab_size=512, source="bad", docs_per_shard=10)
    assert json.loads((d / "manifest.json").read_text())["shards"][1]["max_id"] == 600
    expect(f"{d / 'bad-train-00001.bin'}: document 7: token id 600 >= vocab size 512 ",
           [(d, 1.0)])


def test_token_id_beyond_the_vocab_is_caught_in_the_batch(tmp_path):
    """An older manifest without max_id: the loader's per-batch check names shard and document
    before the batch reaches a model (negative ids in an int32 shard too)."""
    for vocab, token, what in ((512, 513, ">= vocab size 512"), (70000, -5, "is negative")):
        docs = [_with_bad_token([d], 0, token)[0] for d in random_docs(20, seed=2, min_len=8)]
        d = make_data_dir(tmp_path / f"v{vocab}", docs, vocab_size=vocab, docs_per_shard=10)
        _drop_max_id(d)
        ds = PackedDataset([(d, 1.0)], 8)
        loader = RankLoader(ds, 2, rank=1, world=2)
        with pytest.raises(UserError) as e:
            loader.next_batch()
        msg = str(e.value)
        m = re.match(rf"{d}/(synthetic-train-0000[01]).bin: document (\d+): token id {token} {what} ", msg)
        assert m and "\n" not in msg, msg
        shard, doc = m.group(1), int(m.group(2))
        assert token in ds.document_tokens("synthetic", shard, doc)
        assert loader.samples_consumed == 0          # nothing was handed out


def test_shard_check_finds_changed_bytes_and_ids_beyond_the_vocab(good):
    from pipeline.format.manifest import load_manifest
    from pipeline.format.verify import ShardCheck
    from pipeline.fsutil import sha256_file
    m = load_manifest(good)
    check = ShardCheck(good, m.shards[1], np.dtype(m.dtype), m.tokenizer.vocab_size)
    assert check.run() is None
    seen = []
    assert ShardCheck(good, m.shards[1], np.dtype(m.dtype), 100).run(seen.append).startswith(
        f"{good / 'good-train-00001.bin'}: document ")                 # ids up to 511 > 100
    assert sum(seen) == check.nbytes
    path = good / "good-train-00001.bin"
    tokens = np.fromfile(path, dtype=m.dtype)
    tokens[10:110] = 7                                                 # same size, other ids
    tokens.tofile(path)
    assert check.run() == (f"{path}: checksum does not match the manifest (its bytes changed "
                           "since lai-prep wrote it)")
    stamp = check.stamp()
    # the same change with the checksum updated, and an id past the vocabulary
    tokens[::50] = 999
    tokens.tofile(path)
    m.shards[1].bin_sha256 = sha256_file(path)
    got = ShardCheck(good, m.shards[1], np.dtype(m.dtype), 512).run()
    assert got.startswith(f"{path}: document 0: token id 999 >= vocab size 512 "), got
    assert check.stamp() != stamp                                      # the mtime moved
