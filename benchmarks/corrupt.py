"""Corrupt a prepared corpus at the document level, recording which documents were corrupted.

    .venv/bin/python -m benchmarks.corrupt SRC_DIR OUT_DIR [--frac 0.2] [--types repeat,shuffle,garbage] [--seed 0]

SRC_DIR is a complete `lai-prep` output. OUT_DIR becomes a complete prepared directory of its own
(same tokenizer, same shard names, a fresh manifest.json written last) in which whole train
documents, chosen in random order (skipping any that would overshoot) until they hold `frac` of the
train tokens, are replaced by a
corrupted version of the same length (the trailing EOS is kept). Validation shards are copied
unchanged, so the validation split stays clean. OUT_DIR/corruption.json is the ground truth:

    {"source": SRC_DIR, "frac": 0.2, "types": [...], "seed": 0,
     "doc_fraction": ..., "token_fraction": ..., "counts": {kind: n},
     "boilerplate": {"shard", "doc", "tokens"},         # what "duplicate" copies
     "docs": [{"shard": "<prefix>", "doc": i, "kind": "repeat"}, ...]}

`CorruptionLabels(OUT_DIR)` maps a packed sequence (its DocSpans from PackedDataset.locate) to the
fraction of its tokens that come from corrupted documents and the dominant corruption type.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.lib.corruption import CORRUPTIONS, Corruptor
from benchmarks.lib.paths import OUT
from pipeline.errors import UserError, cli_main
from pipeline.fsutil import atomic_write_json, sha256_file
from pipeline.format.indexed import IndexedReader, IndexedWriter
from pipeline.format.manifest import load_manifest
from pipeline.format.tokenizer import load_tokenizer

GROUND_TRUTH = "corruption.json"


def corrupt_corpus(src: Path, out: Path, frac: float, types: list[str], seed: int) -> dict:
    """Write the corrupted copy of `src` into `out`; returns the ground-truth record."""
    src, out = Path(src), Path(out)
    if not 0.0 < frac < 1.0:
        raise UserError(f"--frac: must be in (0, 1), got {frac}")
    bad = [t for t in types if t not in CORRUPTIONS]
    if bad or not types:
        raise UserError(f"--types: unknown corruption {bad or types!r} (choose from {', '.join(CORRUPTIONS)})")
    man = load_manifest(src)
    if (out / "manifest.json").exists():
        raise UserError(f"{out}: already a prepared directory (remove it first)")
    if out.resolve() == src.resolve():
        raise UserError(f"{out}: output must differ from the source directory")
    out.mkdir(parents=True, exist_ok=True)
    tok_path = src / man.tokenizer.path
    tokenizer = load_tokenizer(man.tokenizer.kind, tok_path) \
        if man.tokenizer.kind == "sentencepiece" else None
    if "shuffle" in types and tokenizer is None:
        raise UserError(f"{src}: the 'shuffle' corruption needs a sentencepiece tokenizer")
    special = max(man.tokenizer.eos_id, man.tokenizer.bos_id, man.tokenizer.pad_id) + 1
    train = man.shards_of("train")
    readers = {s.prefix: IndexedReader(src / s.prefix) for s in train}
    all_docs = [(s.prefix, i) for s in train for i in range(len(readers[s.prefix]))]
    total = sum(r.num_tokens for r in readers.values())
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(all_docs))
    # the boilerplate that "duplicate" copies: the first 256 tokens of the first document (in the
    # seeded order) that has that many; it stays in the corpus as a clean document itself
    boiler_doc = next((all_docs[k] for k in order if readers[all_docs[k][0]].lengths[all_docs[k][1]] > 256),
                      all_docs[order[0]])
    boilerplate = np.asarray(readers[boiler_doc[0]][boiler_doc[1]][:256], dtype=np.int64)
    corruptor = Corruptor(man.tokenizer.vocab_size, tokenizer, num_special=special,
                          boilerplate=boilerplate)

    # choose documents: random order over all train documents, skipping any that would overshoot,
    # until `frac` of the train tokens are corrupted
    chosen: dict[tuple[str, int], str] = {}
    acc = 0
    for k in order:
        prefix, i = all_docs[k]
        if (prefix, i) == boiler_doc:
            continue
        n = int(readers[prefix].lengths[i])
        if acc + n > frac * total:
            continue
        chosen[(prefix, i)] = types[len(chosen) % len(types)]
        acc += n

    new_shards = []
    for s in tqdm(man.shards, desc="corrupt shards"):
        if s.split != "train":
            for ext in (".bin", ".idx"):
                shutil.copyfile(src / (s.prefix + ext), out / (s.prefix + ext))
            new_shards.append(s)
            continue
        r = readers[s.prefix]
        with IndexedWriter(out / s.prefix, r.dtype) as w:
            for i in range(len(r)):
                doc = np.asarray(r[i], dtype=np.int64)
                kind = chosen.get((s.prefix, i))
                if kind is not None:
                    body = doc[:-1] if len(doc) and doc[-1] == man.tokenizer.eos_id else doc
                    doc = np.concatenate([corruptor(kind, body, rng), doc[len(body):]])
                w.add_document(doc)
        new_shards.append(replace(s, num_tokens=w.num_tokens,
                                  bin_sha256=sha256_file(out / (s.prefix + ".bin")),
                                  idx_sha256=sha256_file(out / (s.prefix + ".idx"))))
    shutil.copyfile(tok_path, out / man.tokenizer.path)
    counts = {t: sum(1 for k in chosen.values() if k == t) for t in types}
    truth = {"source": str(src), "frac": frac, "types": types, "seed": seed,
             "doc_fraction": len(chosen) / max(1, len(all_docs)), "token_fraction": acc / max(1, total),
             "counts": counts, "boilerplate": {"shard": boiler_doc[0], "doc": int(boiler_doc[1]),
                                                "tokens": boilerplate.tolist()},
             "docs": [{"shard": p, "doc": int(i), "kind": k} for (p, i), k in sorted(chosen.items())]}
    atomic_write_json(out / GROUND_TRUTH, truth)
    stats = dict(man.stats, corruption={k: truth[k] for k in ("frac", "types", "seed", "doc_fraction",
                                                              "token_fraction", "counts")})
    replace(man, shards=new_shards, stats=stats,
            args=dict(man.args, corrupted_from=str(src))).save(out)   # manifest last
    return truth


def corrupted_copy(clean: Path, frac: float = 0.2, types: tuple[str, ...] = CORRUPTIONS,
                   seed: int = 0) -> Path:
    """The corrupted copy of a prepared directory that the benchmarks share, made on first use:
    benchmarks/out/data/<clean name>-corrupt<pct>-<types>-s<seed>."""
    out = OUT / "data" / f"{Path(clean).name}-corrupt{round(frac * 100)}-{'-'.join(types)}-s{seed}"
    if not (out / "manifest.json").is_file():
        if out.exists():
            shutil.rmtree(out)          # an interrupted earlier attempt (no manifest = incomplete)
        corrupt_corpus(Path(clean), out, frac, list(types), seed)
    return out


class CorruptionLabels:
    """Ground truth of a corrupted directory: which (shard, doc) are corrupted and how."""

    def __init__(self, data_dir: str | Path):
        path = Path(data_dir) / GROUND_TRUTH
        if not path.is_file():
            raise UserError(f"{path}: no corruption ground truth (make it with benchmarks.corrupt)")
        truth = json.loads(path.read_text())
        self.kind = {(d["shard"], d["doc"]): d["kind"] for d in truth["docs"]}
        self.truth = truth

    def of_spans(self, spans) -> tuple[float, str]:
        """(fraction of the sequence's tokens from corrupted documents, dominant kind or 'clean')."""
        by_kind: dict[str, int] = {}
        total = 0
        for sp in spans:
            k = self.kind.get((sp.shard, sp.doc), "clean")
            by_kind[k] = by_kind.get(k, 0) + sp.num_tokens
            total += sp.num_tokens
        bad = total - by_kind.get("clean", 0)
        kind = max(by_kind, key=by_kind.get) if by_kind else "clean"
        return (bad / total if total else 0.0), kind


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.corrupt",
                                description=__doc__.split("\n")[0])
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--frac", type=float, default=0.2, help="fraction of train tokens to corrupt")
    p.add_argument("--types", default=",".join(CORRUPTIONS))
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


@cli_main
def main(argv=None) -> int:
    a = parse_args(argv)
    t = corrupt_corpus(a.src, a.out, a.frac, [s for s in a.types.split(",") if s], a.seed)
    print(f"corrupt: {len(t['docs'])} documents ({t['doc_fraction']:.1%} of documents, "
          f"{t['token_fraction']:.1%} of train tokens) {t['counts']} -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
