"""`model.init_from=PATH`: start from a save_pretrained folder (continued pretraining).

The folder's config.json gives the architecture (model.family, n_layer, hidden, ... are not used)
and its weights the start, in fp32; dropout and the KV cache are switched off for training, as
for models built from the config. `check` runs before anything starts (lai-train, --dry-run and
the launcher's check) and refuses, in one line, a folder that does not fit the data:

- the model's vocabulary must hold every id of the data's tokenizer;
- when the folder has a tokenizer it must be the data's: the same sentencepiece model file
  (sha256), else the same vocabulary (piece -> id). Otherwise the line names the lai-prep
  option that prepares the data with the folder's tokenizer (`--tokenizer hf:PATH`);
- data.seq_len must fit the model's context;
- the folder must hold a causal LM (AutoModelForCausalLM can build its config) and readable
  weights: every file model.safetensors / pytorch_model.bin (or their index) names, present and
  whole (a safetensors header that fits the file, a .bin's zip index), without reading tensors.
"""
from __future__ import annotations

from pathlib import Path

import json
import zipfile

import torch

from pipeline.errors import UserError
from pipeline.format.manifest import TokenizerEntry
from pipeline.format.tokenizer import (SPM_FILE, HFTokenizer, SentencePieceTokenizer,
                                       load_tokenizer)
from pipeline.fsutil import sha256_file
from pipeline.train.hf.export import context_length

KEY = "model.init_from"
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
DROPOUT_KEYS = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout", "attention_dropout",
                "resid_dropout", "embed_dropout", "dropout", "classifier_dropout")


def pretrained_config(path: str | Path):
    """The folder's transformers config; UserError if it is not a save_pretrained folder."""
    import transformers
    p = Path(path)
    if not (p / "config.json").is_file():
        raise UserError(f"{KEY}: {p}: not a save_pretrained folder (no config.json)")
    try:
        config = transformers.AutoConfig.from_pretrained(p)
    except (OSError, ValueError, KeyError) as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{KEY}: {p / 'config.json'}: unreadable ({msg})") from None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(f"{KEY}: {p}: a {type(config).__name__} ({config.model_type!r}) is not "
                        "a causal language model; start from a decoder-only model folder")
    return config


def _weight_files(p: Path) -> list[Path]:
    """The weight files of folder `p` (UserError if it names none)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (p / name).is_file():
            return [p / name]
        index = p / f"{name}.index.json"
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError) as e:
                raise UserError(f"{KEY}: {index}: unreadable ({type(e).__name__}: {e})") from None
            return [p / s for s in sorted(shards)]
    raise UserError(f"{KEY}: {p}: no weights (model.safetensors or pytorch_model.bin, or an "
                    "index of shards); save the model with save_pretrained")


def check_weights(p: Path) -> None:
    """UserError (one line) unless every weight file of `p` is present and whole."""
    from safetensors import safe_open
    for f in _weight_files(p):
        try:
            if f.suffix == ".safetensors":
                with safe_open(str(f), "pt"):
                    pass
            else:
                with zipfile.ZipFile(f) as z:
                    z.infolist()
        except FileNotFoundError:
            raise UserError(f"{KEY}: {f}: missing (the folder's index names it)") from None
        except Exception as e:  # noqa: BLE001 -- any reader failure means a damaged file
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"{KEY}: {f}: damaged or truncated ({why}); copy or save the "
                            "model again") from None


def _vocab(kind: str, path: Path) -> dict[str, int]:
    tok = load_tokenizer(kind, path)
    if isinstance(tok, SentencePieceTokenizer):
        return {tok.sp.id_to_piece(i): i for i in range(tok.vocab_size)}
    assert isinstance(tok, HFTokenizer)
    return dict(tok.tok.get_vocab())


def check(path: str | Path, tokenizer: TokenizerEntry, tokenizer_path: Path, seq_len: int,
          data_dir: str | Path) -> str:
    """UserError (one line) unless the folder fits the data (see the module doc); returns a note
    for the start line."""
    p = Path(path)
    config = pretrained_config(p)
    check_weights(p)
    spm_file = p / SPM_FILE
    hint = f"lai-prep --tokenizer {f'spm:{spm_file}' if spm_file.is_file() else f'hf:{p}'} ..."
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int) and vocab < tokenizer.vocab_size:
        raise UserError(f"{KEY}: {p} has a vocabulary of {vocab} ids, the data's tokenizer "
                        f"({data_dir}) {tokenizer.vocab_size}; prepare the data with the "
                        f"model's tokenizer ({hint})")
    context = context_length(config)
    if context is not None and seq_len > context:
        raise UserError(f"{KEY}: data.seq_len {seq_len} is longer than the context of {p} "
                        f"({context} positions)")
    if tokenizer.kind == "sentencepiece" and spm_file.is_file():
        same = sha256_file(spm_file) == tokenizer.sha256
    elif any((p / f).is_file() for f in HF_TOKENIZER_FILES):
        same = _vocab("hf", p) == _vocab(tokenizer.kind, tokenizer_path)
    else:
        return f"init from {p} ({type(config).__name__}; it has no tokenizer: only the " \
               "vocabulary size was checked against the data's)"
    if not same:
        raise UserError(f"{KEY}: {p}'s tokenizer is not the one {data_dir} was prepared with; "
                        f"prepare the data with it: {hint}")
    return f"init from {p} ({type(config).__name__}, the data's tokenizer)"


def load_model(path: str | Path) -> torch.nn.Module:
    """The folder's causal LM in fp32, dropout and KV cache off."""
    import transformers
    config = pretrained_config(path)
    for key in DROPOUT_KEYS:
        if isinstance(getattr(config, key, None), float):
            setattr(config, key, 0.0)
    config.use_cache = False
    return transformers.AutoModelForCausalLM.from_pretrained(path, config=config,
                                                             dtype=torch.float32)
