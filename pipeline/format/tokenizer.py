"""The one place that loads a tokenizer: a sentencepiece model file or a Hugging Face tokenizer
directory, as named by a prepared directory's manifest (`TokenizerEntry.kind`, `.path`).

    tok = load_tokenizer("sentencepiece", data_dir / "tokenizer.model")
    tok.encode_batch(["text", ...]); tok.decode(ids); tok.save_hf(run_dir / "final")

Data prep encodes with it, the report decodes with it, and the final export saves it next to the
model as an HF tokenizer (a sentencepiece model is converted to one that encodes exactly like it).
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from pipeline.errors import UserError
from pipeline.fsutil import sha256_file

SPM_FILE = "tokenizer.model"     # sentencepiece model inside a prepared directory
HF_DIR = "tokenizer"             # HF tokenizer directory inside a prepared directory
KINDS = ("sentencepiece", "hf")


class Tokenizer:
    """What the pipeline needs from a tokenizer: ids of texts, text of ids, special ids."""
    kind: str
    vocab_size: int
    eos_id: int
    bos_id: int = -1
    pad_id: int = -1

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def decode(self, ids) -> str:
        """Text of `ids`; special tokens (EOS, BOS, padding) decode to nothing."""
        raise NotImplementedError

    def save_hf(self, dst: Path, max_length: int | None = None) -> None:
        """Save into directory `dst` so that transformers.AutoTokenizer.from_pretrained(dst)
        loads a tokenizer that encodes like this one (model_max_length = `max_length`, the
        model's context, when given)."""
        raise NotImplementedError


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, path: str | os.PathLike):
        import sentencepiece as spm
        self.path = Path(path)
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise UserError(f"{path}: not a sentencepiece model "
                            f"({str(e).strip().splitlines()[-1]})") from None
        self.vocab_size = self.sp.get_piece_size()
        self.eos_id, self.bos_id, self.pad_id = self.sp.eos_id(), self.sp.bos_id(), self.sp.pad_id()
        if self.eos_id < 0:
            raise UserError(f"{path}: sentencepiece model has no EOS piece (eos_id=-1)")

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, out_type=int, num_threads=1)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])       # control pieces decode to ""

    def save_hf(self, dst: Path, max_length: int | None = None) -> None:
        """tokenizer.model plus an equivalent HF fast tokenizer: transformers' Llama tokenizer
        (dummy prefix as the model has it), else its generic proto converter; each is checked on
        probe strings. ValueError if neither encodes exactly like the model (tokenizer.model is
        then still in `dst`)."""
        Path(dst).mkdir(parents=True, exist_ok=True)
        shutil.copy(self.path, Path(dst) / SPM_FILE)
        _save_pretrained(self._equivalent_hf(Path(dst)), dst, max_length)

    def _equivalent_hf(self, dst: Path):
        import transformers
        from transformers.convert_slow_tokenizer import SpmConverter

        sp = self.sp
        special = {name: sp.id_to_piece(i) for name, i in (("bos_token", self.bos_id),
                   ("eos_token", self.eos_id), ("pad_token", self.pad_id)) if i >= 0}
        probes = ["def f(x):\n    return x  # Hello, W\u00f6rld! 123", " two  spaces\ttab", "a"]
        src = self.path

        def llama():
            return transformers.LlamaTokenizer.from_pretrained(
                dst, add_prefix_space=sp.id_to_piece(sp.encode("a")[0]).startswith("\u2581"),
                **special)

        def generic():
            class Slow:
                vocab_file = str(src)
            return transformers.PreTrainedTokenizerFast(
                tokenizer_object=SpmConverter(Slow()).converted(), **special)

        errors = []
        for build in (llama, generic):
            try:
                hf = build()
            except Exception as e:      # a converter that does not apply: try the next one
                errors.append(f"{build.__name__}: {e}")
                continue
            if all(hf(p, add_special_tokens=False).input_ids == sp.encode(p) for p in probes):
                return hf
            errors.append(f"{build.__name__}: encodes differently")
        raise ValueError("; ".join(errors))


class HFTokenizer(Tokenizer):
    kind = "hf"

    def __init__(self, name_or_path: str | os.PathLike):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from transformers import AutoTokenizer
        try:
            self.tok = AutoTokenizer.from_pretrained(str(name_or_path))
        except Exception as e:  # OSError, ValueError, hub errors: one line
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"{name_or_path}: cannot load HF tokenizer ({msg})") from None
        self.vocab_size = len(self.tok)
        if self.tok.eos_token_id is None:
            raise UserError(f"{name_or_path}: HF tokenizer has no EOS token")
        self.eos_id = int(self.tok.eos_token_id)
        self.bos_id = -1 if self.tok.bos_token_id is None else int(self.tok.bos_token_id)
        self.pad_id = -1 if self.tok.pad_token_id is None else int(self.tok.pad_token_id)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.tok(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def save_hf(self, dst: Path, max_length: int | None = None) -> None:
        _save_pretrained(self.tok, dst, max_length)


def _save_pretrained(hf_tokenizer, dst: Path, max_length: int | None) -> None:
    if max_length is not None:
        hf_tokenizer.model_max_length = max_length
    hf_tokenizer.save_pretrained(dst)


def load_tokenizer(kind: str, path: str | os.PathLike) -> Tokenizer:
    """The tokenizer of `kind` ("sentencepiece" | "hf") at `path`; UserError if unusable."""
    if kind not in KINDS:
        raise UserError(f"{path}: unknown tokenizer kind {kind!r} (expected one of {KINDS})")
    return SentencePieceTokenizer(path) if kind == "sentencepiece" else HFTokenizer(path)


def tokenizer_sha256(path: str | os.PathLike) -> str:
    """sha256 of a model file, or of a tokenizer directory (file names and contents, sorted)."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f.relative_to(p).as_posix().encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return h.hexdigest()
