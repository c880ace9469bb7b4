"""Fixtures shared by tests/unit and tests/e2e. Helper functions live in tests/support/."""
from __future__ import annotations

from pathlib import Path

import pytest

from support.datagen import make_data_dir, random_docs
from support.prep import VOCAB, make_docs


@pytest.fixture()
def stub_data_dir(tmp_path) -> Path:
    """A data directory that counts as prepared for Config.validate (an empty manifest), no data."""
    d = tmp_path / "data"
    d.mkdir()
    (d / "manifest.json").write_text("{}")    # validate() only checks that it is prepared
    return d


@pytest.fixture(scope="module")
def animals_data(tmp_path_factory) -> Path:
    """support.train.make_animals_data: English sentences, a real sentencepiece tokenizer."""
    from support.train import make_animals_data
    return make_animals_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Random tokens (200 documents, vocab 128, 2 shards): the fault tests' data."""
    return make_data_dir(tmp_path_factory.mktemp("data") / "d", random_docs(200, 128, min_len=8),
                         vocab_size=128, docs_per_shard=100)


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory) -> Path:
    """A tiny sentencepiece model trained by data_prep on make_docs (vocab 400, byte fallback)."""
    from data_prep.tokenizer import TrainConfig, train_sentencepiece, training_sentences
    path = tmp_path_factory.mktemp("spm") / "tiny.model"
    train_sentencepiece(list(training_sentences(make_docs(300, seed=99))), path,
                        TrainConfig(vocab_size=VOCAB, num_threads=1))
    return path


@pytest.fixture(scope="module")
def trained_tiny():
    """(model, ids): support.lai's gpt2 trained 40 steps, 32 sequences of 32 tokens (vocab 256)."""
    from support.lai import synthetic_corpus, trained_tiny_model
    model = trained_tiny_model(steps=40)
    ids, _ = synthetic_corpus(32, 32, 256, noise_frac=0.2, seed=7)
    return model, ids


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    """support.report.make_report_run: (RUN, dataset, tokenizer, data dirs) for lai-report."""
    from support.report import make_report_run
    return make_report_run(tmp_path_factory.mktemp("report"))
