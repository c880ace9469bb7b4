"""A run for lai-report's tests (no tests here): two real prepared sources with a real
sentencepiece tokenizer and a 2-rank ledger written by Ledger with made-up values. The fixture
over it is tests/conftest.py's `report_run`."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import sentencepiece as spm

from pipeline.data import PackedDataset
from pipeline.format.manifest import load_manifest
from pipeline.fsutil import sha256_file
from pipeline.format.ledger import Ledger
from support.datagen import make_data_dir

SEQ_LEN, MICRO, WORLD, STEPS = 16, 2, 2, 12
WORDS = {"alpha": "river stone mountain cloud forest meadow".split(),
         "beta": "import return lambda yield class def".split()}


def texts(source: str, n: int, rng) -> list[str]:
    return [f"{source} {i} " + " ".join(rng.choice(WORDS[source], size=rng.integers(4, 14)))
            for i in range(n)]


def make_report_run(root: Path) -> tuple[Path, PackedDataset, spm.SentencePieceProcessor, list[Path]]:
    """(RUN, its dataset, the tokenizer, the data dirs) under `root`: RUN/data.json pointing at two
    prepared directories (one source each), and a 2-rank ledger of 12 steps whose values depend
    on the source (beta mostly harmful)."""
    rng = np.random.default_rng(0)
    corpus = {name: texts(name, 30, rng) for name in WORDS}
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus["alpha"] + corpus["beta"]), model_writer=model,
        vocab_size=64, model_type="bpe", pad_id=0, bos_id=1, eos_id=2, unk_id=3,
        hard_vocab_limit=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    dirs = []
    for name, docs in corpus.items():
        d = make_data_dir(root / f"data-{name}", [sp.encode(t) + [sp.eos_id()] for t in docs[:24]],
                          vocab_size=64, source=name,
                          val_docs=[sp.encode(t) + [sp.eos_id()] for t in docs[24:]])
        (d / "tokenizer.model").write_bytes(model.getvalue())     # the real tokenizer
        manifest = load_manifest(d)
        manifest.tokenizer.sha256 = sha256_file(d / "tokenizer.model")
        manifest.save(d)
        dirs.append(d)
    run = root / "run"
    run.mkdir()
    ds = PackedDataset([(dirs[0], 0.6), (dirs[1], 0.4)], SEQ_LEN, split="train", seed=3)
    (run / "data.json").write_text(json.dumps({
        "sources": [[str(dirs[0]), 0.6], [str(dirs[1]), 0.4]], "seq_len": SEQ_LEN, "seed": 3,
        "val_sources": [[str(d), 1.0] for d in dirs], "fingerprint": ds.fingerprint}))
    for rank in range(WORLD):
        led = Ledger(run, rank, chunk_rows=5)
        for step in range(STEPS):
            first = (step * WORLD + rank) * MICRO
            seq = np.arange(first, first + MICRO)
            src = [ds.locate(int(s))[0].source for s in seq]
            v = rng.normal(size=MICRO) + np.where(np.array(src) == "alpha", 0.8, -0.8)
            led.append(step, seq, v, v > 0, rng.uniform(2, 4, size=MICRO))
        led.close()
    return run, ds, sp, dirs
