"""Loader bad input: one-line UserErrors that name the file or field."""
from __future__ import annotations

import json

import pytest

from datagen import make_data_dir, random_docs
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
