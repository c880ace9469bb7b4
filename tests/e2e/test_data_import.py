"""lai-prep import on shards written by megatron-core's own IndexedDatasetBuilder (documents of
several sentences, each a sequence, as Megatron's sentence-split mode writes them), with a real
sentencepiece tokenizer: the manifest's counts, checksums and max token id against the files,
lai-prep verify, the trainer's loader and config check on the result, and the one-line errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.format.manifest import load_manifest
from pipeline.fsutil import sha256_file
from support.train import make_animals_data, train_args

pytest.importorskip("megatron.core.datasets.indexed_dataset")


def megatron_shard(prefix, docs: list[list[list[int]]]) -> None:
    """One shard by megatron-core's builder: each document a list of sentences (sequences)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for doc in docs:
        builder.add_document(torch.tensor([t for s in doc for t in s]), [len(s) for s in doc])
    builder.finalize(f"{prefix}.idx")


@pytest.fixture
def lai_prep(capsys):
    """lai-prep in this process: (exit code, stdout + stderr)."""
    from data_prep.__main__ import main

    def run(*args) -> tuple[int, str]:
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:
            rc = e.code
        out = capsys.readouterr()
        return rc, out.out + out.err
    return run


@pytest.mark.slow
def test_import_megatron_shards_then_verify_load_and_check(tmp_path, lai_prep):
    import sentencepiece as spm
    (tmp_path / "tok").mkdir()
    tok = make_animals_data(tmp_path / "tok") / "tokenizer.model"
    sp = spm.SentencePieceProcessor(model_file=str(tok))
    rng = np.random.default_rng(0)
    words = "the cat dog sees likes big small red".split()

    def docs(n, eod=True):
        out = []
        for _ in range(n):
            sents = [sp.encode(" ".join(rng.choice(words, size=int(rng.integers(3, 9)))) + " .")
                     for _ in range(int(rng.integers(1, 4)))]
            out.append([*sents[:-1], sents[-1] + ([sp.eos_id()] if eod else [])])
        return out

    d = tmp_path / "megatron"
    d.mkdir()
    train_docs, val_docs = docs(300), docs(40, eod=False)       # val written without --append-eod
    megatron_shard(d / "web_text_document", train_docs)
    megatron_shard(d / "web_val_text_document", val_docs)

    rc, out = lai_prep("import", d, "--tokenizer", f"spm:{tok}", "--val", "*_val_*", "--source", "web")
    assert rc == 0, out
    assert "warning: 40 of 340 documents do not end with the tokenizer's eos id 2" in out
    m = load_manifest(d)
    assert m.dtype == "uint16" and m.tokenizer.kind == "sentencepiece"
    assert m.tokenizer.sha256 == sha256_file(tok) and m.tokenizer.vocab_size == sp.get_piece_size()
    assert sha256_file(d / m.tokenizer.path) == sha256_file(tok)
    for e, written in zip(m.shards, (train_docs, val_docs)):
        tokens = [t for doc in written for s in doc for t in s]
        assert e.source == "web" and e.split == ("val" if "_val_" in e.prefix else "train")
        assert (e.num_docs, e.num_tokens, e.max_id) == (len(written), len(tokens), max(tokens))
        assert e.bin_sha256 == sha256_file(d / f"{e.prefix}.bin")
        assert e.idx_sha256 == sha256_file(d / f"{e.prefix}.idx")
    assert lai_prep("verify", d)[0] == 0

    from pipeline.data import PackedDataset
    ds = PackedDataset([(str(d), 1.0)], 16, split="train")
    assert ds.num_docs == [300]
    flat = [[t for s in doc for t in s] for doc in train_docs]
    for seq_id in range(0, ds.samples_per_epoch, 7):     # each sample is the builder's documents
        want = [t for span in ds.locate(seq_id)
                for t in flat[span.doc][span.token_offset:span.token_offset + span.num_tokens]]
        assert ds.sample(seq_id).tolist() == want
    from pipeline.train.cli import main as lai_train
    assert lai_train(["--check", *train_args(d, tmp_path / "run")]) == 0    # the trainer's checks

    # again: refused without --force, in one line
    rc, out = lai_prep("import", d, "--tokenizer", f"spm:{tok}")
    assert rc == 2 and "manifest.json: already exists (use --force" in out

    # a token id outside the tokenizer's vocabulary: one line naming the shard, no manifest
    bad = tmp_path / "bad"
    bad.mkdir()
    megatron_shard(bad / "x_text_document", [[[5, 6]], [[7, 999]]])
    rc, out = lai_prep("import", bad, "--tokenizer", f"spm:{tok}")
    assert rc == 2
    assert out.strip() == (f"error: {bad / 'x_text_document.bin'}: document 1: token id 999 "
                                f">= vocab size {sp.get_piece_size()} (written for another "
                                "tokenizer, or changed since lai-prep wrote it; prepare the data again)")
    assert not (bad / "manifest.json").exists()
    rc, out = lai_prep("import", tok.parent, "--tokenizer", f"spm:{tok}")   # lai-prep's own dir
    assert rc == 2 and "already exists" in out
