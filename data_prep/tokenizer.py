"""The prepared directory's tokenizer: train a sentencepiece model on the corpus, or install an
existing sentencepiece model or Hugging Face tokenizer (loading is pipeline.format.tokenizer's).

Training is reproducible: the capped training sample is drawn by our own seeded reservoir sampler
(sentencepiece's own sampler is not seed-stable), and the saved model does not record the thread
count. BPE pieces do not depend on the thread count; unigram's EM does (thread-order float sums),
so unigram models are reproducible for a fixed `num_threads`.

The trained model keeps text exactly (decode(encode(x)) == x): identity normalization, no
whitespace collapsing, no dummy prefix, newline as a user-defined piece, byte fallback for
characters outside the vocabulary. That suits code (the stdlib corpus) as well as prose.
"""
from __future__ import annotations

import io
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from pipeline.errors import UserError
from pipeline.format.manifest import TokenizerEntry
from pipeline.format.tokenizer import (HF_DIR, SPM_FILE, HFTokenizer, SentencePieceTokenizer,
                                       load_tokenizer, tokenizer_sha256)
from pipeline.fsutil import atomic_write, tmp_name

MAX_SENTENCE_CHARS = 4096        # longer lines are cut into pieces for training


@dataclass
class TrainConfig:
    vocab_size: int = 8192
    model_type: str = "bpe"          # "bpe" | "unigram"
    byte_fallback: bool = True
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    unk_id: int = 3
    max_sentences: int = 250_000     # training sample cap (lines)
    seed: int = 0
    num_threads: int = 2
    character_coverage: float = 0.9995


def training_sentences(docs: Iterable[str]) -> Iterator[str]:
    """The training "sentences" of documents: their non-blank lines, cut to MAX_SENTENCE_CHARS."""
    for doc in docs:
        for line in doc.split("\n"):
            if line.strip():
                for i in range(0, len(line), MAX_SENTENCE_CHARS):
                    yield line[i:i + MAX_SENTENCE_CHARS]


def sample_sentences(sentences: Iterable[str], k: int, seed: int) -> list[str]:
    """A uniform sample of at most k sentences (reservoir sampling, deterministic in `seed`)."""
    rng = random.Random(seed)
    sample: list[str] = []
    for i, s in enumerate(sentences):
        if i < k:
            sample.append(s)
        else:
            j = rng.randrange(i + 1)
            if j < k:
                sample[j] = s
    return sample


def check_train_config(cfg: TrainConfig) -> None:
    """Fail early (before reading the corpus) on options sentencepiece would reject."""
    if cfg.model_type not in ("bpe", "unigram"):
        raise UserError(f"--model-type: must be bpe or unigram, got {cfg.model_type!r}")
    ids = {"--unk-id": cfg.unk_id, "--eos-id": cfg.eos_id, "--bos-id": cfg.bos_id, "--pad-id": cfg.pad_id}
    for name, value in ids.items():
        if value >= cfg.vocab_size or (value < 0 and name in ("--unk-id", "--eos-id")):
            raise UserError(f"{name} {value}: must be in [0, --vocab-size {cfg.vocab_size})"
                            + ("" if name in ("--unk-id", "--eos-id") else " or -1 (none)"))
        for other, v in ids.items():
            if other != name and value >= 0 and v == value:
                raise UserError(f"{name} {value}: same id as {other}")


def train_sentencepiece(sentences: list[str], out_path: str | os.PathLike, cfg: TrainConfig) -> None:
    """Train a sentencepiece model on `sentences` and write it atomically to `out_path`."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    check_train_config(cfg)
    if not sentences:
        raise UserError("corpus: no text to train the tokenizer on (every document is empty)")
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=buf, vocab_size=cfg.vocab_size,
            model_type=cfg.model_type, byte_fallback=cfg.byte_fallback, pad_id=cfg.pad_id,
            bos_id=cfg.bos_id, eos_id=cfg.eos_id, unk_id=cfg.unk_id,
            character_coverage=cfg.character_coverage, input_sentence_size=0,
            shuffle_input_sentence=False, num_threads=max(1, cfg.num_threads),
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=False, user_defined_symbols=["\n"], allow_whitespace_only_pieces=True,
            split_digits=True, max_sentence_length=4 * MAX_SENTENCE_CHARS, minloglevel=2)
    except RuntimeError as e:
        msg = (str(e).strip().splitlines() or ["unknown error"])[-1]
        msg = msg.rsplit("] ", 1)[-1]        # drop sentencepiece's "INTERNAL: file.cc(line) [check]" prefix
        raise UserError(f"--vocab-size {cfg.vocab_size}: sentencepiece training failed ({msg})") from None
    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]  # protobuf-generated at import
    proto.ParseFromString(buf.getvalue())
    proto.trainer_spec.ClearField("num_threads")   # does not change the model; keeps bytes reproducible
    with atomic_write(out_path) as f:
        f.write(proto.SerializeToString())


def tokenizer_entry(out_dir: str | os.PathLike, kind: str) -> TokenizerEntry:
    """Load the tokenizer installed in `out_dir` and describe it for the manifest."""
    rel = SPM_FILE if kind == "sentencepiece" else HF_DIR
    tok = load_tokenizer(kind, Path(out_dir) / rel)
    return TokenizerEntry(kind=kind, path=rel, sha256=tokenizer_sha256(Path(out_dir) / rel),
                          vocab_size=tok.vocab_size, eos_id=tok.eos_id, bos_id=tok.bos_id, pad_id=tok.pad_id)


def install_tokenizer(spec: str, out_dir: str | os.PathLike) -> str:
    """Copy an existing tokenizer (`spm:PATH` or `hf:NAME_OR_PATH`) into `out_dir` atomically;
    returns its kind. The copy is what workers load and what the manifest points to."""
    out = Path(out_dir)
    kind, _, where = spec.partition(":")
    if kind == "spm":
        src = Path(where)
        if not src.is_file():
            raise UserError(f"{src}: no such sentencepiece model file")
        SentencePieceTokenizer(src)                    # validate before copying
        with atomic_write(out / SPM_FILE) as f, open(src, "rb") as g:
            shutil.copyfileobj(g, f)
        return "sentencepiece"
    if kind == "hf":
        tok = HFTokenizer(where)
        final = out / HF_DIR
        tmp = tmp_name(final)
        shutil.rmtree(tmp, ignore_errors=True)
        tok.save_hf(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return "hf"
    raise UserError(f"--tokenizer: expected train, spm:PATH or hf:NAME_OR_PATH, got {spec!r}")
