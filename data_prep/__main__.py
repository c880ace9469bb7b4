"""`lai-prep`: corpora -> tokenizer -> Megatron-format shards + manifest.json (data_prep.single;
partitioned Slurm array mode: data_prep.partitioned).

    lai-prep --source stdlib --out data/stdlib                      train a tokenizer, write shards
    lai-prep tokenizer --source ... --out OUT [...]                 partitioned: tokenizer + plan
    lai-prep --source ... --out OUT --num-parts N --part K          partitioned: part K of N
    lai-prep merge OUT                                              partitioned: write the manifest
    lai-prep verify OUT                                             check every shard of OUT
    lai-prep import DIR --tokenizer spm:PATH|hf:NAME                a manifest for Megatron/GPT-NeoX shards
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from data_prep.sources.spec import load_source_list, parse_source
from pipeline.errors import UserError, cli_main
from pipeline.format.provenance import read_drop_list
from pipeline.values import to_bool

SOURCES_HELP = """\
sources (repeat --source, or list them in --sources FILE.yaml|json):
  [NAME=]KIND[:ARGS][,KEY=VALUE...]
  stdlib                        .py files of this Python's standard library (tests=1 adds test dirs)
  text:PATH[:file|line|blank]   one document per file (default) / per line / per blank-line paragraph
  jsonl:PATH                    JSON lines, text in --text-field (or ,field=NAME)
  json:PATH                     a JSON array of objects (or strings)
  parquet:PATH                  a Parquet string column (--text-field)
  hf:NAME[:CONFIG]:SPLIT        HF datasets; ,streaming=1  ,data_files=GLOB (e.g. hf:json:train,data_files=a.jsonl)
  PATH is a file, a directory (recursive) or a glob. NAME names the source in the manifest and shards.

examples:
  lai-prep --source stdlib --out data/stdlib
  lai-prep --source web=jsonl:/data/web --source code=parquet:/data/code --text-field content --out data/mix
  lai-prep --source text:notes/:blank --tokenizer spm:tok.model --out data/notes
  lai-prep --source web=jsonl:/data/web --groups 8 --out data/web    8 groups per source (lai.mixing.groups)
  lai-prep --source web=jsonl:/data/web --tokenizer spm:data/web/tokenizer.model \\
      --exclude runs/x/report/keep_drop.csv --out data/web-clean      a cleaned corpus
  hf:PATH also reads a folder written by datasets' save_to_disk (SPLIT: a DatasetDict's split)
partitioned (Slurm array): lai-prep tokenizer ... ; lai-prep ... --num-parts N --part K ; lai-prep merge OUT
shards made elsewhere (Megatron, GPT-NeoX): lai-prep import DIR --tokenizer spm:PATH  (see lai-prep import -h)
"""


def _positive(v: str) -> int:
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _bool(v: str) -> bool:
    """Every boolean spelling of pipeline.values (a bad one: argparse's usage error, exit 2)."""
    try:
        return to_bool(v)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default (unless it has none worth showing)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        d = action.default
        if d is None or d is False or d == [] or d is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def _prep_parser(prog: str, partitioned: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0],
                                formatter_class=_Help, epilog=SOURCES_HELP)
    p.add_argument("--source", action="append", default=[], metavar="SPEC", help="a source (repeatable)")
    p.add_argument("--sources", metavar="FILE", help="YAML/JSON list of sources")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--text-field", default="text", help="text field/column for jsonl/json/parquet/hf")
    t = p.add_argument_group("tokenizer")
    t.add_argument("--tokenizer", default="train", help="train | spm:PATH | hf:NAME_OR_PATH")
    t.add_argument("--vocab-size", type=_positive, default=8192, help="pieces of a trained tokenizer")
    t.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe", help="sentencepiece model type")
    t.add_argument("--byte-fallback", type=_bool, default="1", metavar="0|1",
                   help="bytes for characters outside the vocabulary")
    t.add_argument("--pad-id", type=int, default=0, help="padding id (-1: none)")
    t.add_argument("--bos-id", type=int, default=1, help="beginning-of-sequence id (-1: none)")
    t.add_argument("--eos-id", type=int, default=2, help="end-of-sequence id, appended to every document")
    t.add_argument("--unk-id", type=int, default=3, help="unknown-piece id")
    t.add_argument("--train-sentences", type=_positive, default=250_000,
                   help="cap on training lines, a seeded uniform sample")
    t.add_argument("--train-threads", type=int, default=0, help="sentencepiece threads (0: --workers)")
    o = p.add_argument_group("output")
    o.add_argument("--val-fraction", type=float, default=0.01, help="fraction of documents for val (by hash)")
    o.add_argument("--seed", type=int, default=0, help="split and tokenizer-sample seed")
    o.add_argument("--shard-tokens", type=_positive, default=100_000_000, help="shard size cap in tokens")
    o.add_argument("--dtype", choices=("auto", "uint16", "int32"), default="auto",
                   help="token dtype (auto: uint16 below 65500 ids, else int32)")
    o.add_argument("--max-docs", type=_positive, help="read at most this many documents per source (default: all)")
    o.add_argument("--max-bytes", type=_positive, help="read about this many text bytes per source (default: all)")
    o.add_argument("--exclude", type=Path, metavar="LIST",
                   help="leave out the documents a keep/drop list marks drop (lai-report's "
                        "RUN/report/keep_drop.csv; see --exclude-match)")
    o.add_argument("--exclude-match", choices=("text", "record"), default="text",
                   help="text: every document with a marked document's text, wherever it is "
                        "(exact duplicates included, counted); record: only the marked records "
                        "(same text at the same file and position)")
    o.add_argument("--groups", type=int, default=0, metavar="K",
                   help="assign every document to one of K groups within its source (hashed "
                        "n-gram TF-IDF + k-means, seeded by --seed), for lai.mixing.groups; 0: none")
    o.add_argument("--strict", action="store_true", help="fail on invalid UTF-8 instead of replacing it")
    o.add_argument("--workers", type=_positive, default=2, help="tokenizer processes")
    o.add_argument("--force", action="store_true", help="discard previous output in --out and start over")
    o.add_argument("--progress", type=_bool, default=None, metavar="0|1",
                   help="progress bars (default: when stderr is a terminal)")
    if partitioned:
        o.add_argument("--num-parts", type=_positive, default=1, help="partitioned mode: number of parts")
        o.add_argument("--part", type=int, help="partitioned mode: this part (0-based; default $SLURM_ARRAY_TASK_ID)")
    return p


def _options(a: argparse.Namespace):
    from data_prep.options import PrepOptions
    specs = [parse_source(s, default_field=a.text_field) for s in a.source]
    if a.sources:
        specs += load_source_list(a.sources, default_field=a.text_field)
    if not specs:
        raise UserError("--source: give at least one source (e.g. --source stdlib)")
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"--source: duplicate source name(s) {', '.join(dup)}; name them with NAME=KIND:...")
    part = getattr(a, "part", None)
    num_parts = getattr(a, "num_parts", 1)
    if num_parts > 1 and part is None:
        env = os.environ.get("SLURM_ARRAY_TASK_ID")
        if env is None:
            raise UserError("--part: required with --num-parts > 1 (or set SLURM_ARRAY_TASK_ID)")
        part = int(env)
    marked = frozenset(read_drop_list(a.exclude)) if a.exclude else frozenset()
    return PrepOptions(
        sources=specs, out=a.out, tokenizer=a.tokenizer, vocab_size=a.vocab_size, model_type=a.model_type,
        byte_fallback=a.byte_fallback, pad_id=a.pad_id, bos_id=a.bos_id, eos_id=a.eos_id, unk_id=a.unk_id,
        train_sentences=a.train_sentences, train_threads=a.train_threads, val_fraction=a.val_fraction,
        seed=a.seed, shard_tokens=a.shard_tokens, dtype=a.dtype, max_docs=a.max_docs, max_bytes=a.max_bytes,
        strict=a.strict, workers=a.workers, force=a.force, num_parts=num_parts, part=part, progress=a.progress,
        exclude=a.exclude, drop=frozenset(h for h, _ in marked), drop_records=marked,
        exclude_match=a.exclude_match, groups=a.groups)


def _import_parser() -> argparse.ArgumentParser:
    from data_prep import imported
    p = argparse.ArgumentParser(prog="lai-prep import", description=imported.__doc__.split("\n\n")[0],
                                formatter_class=_Help)
    p.add_argument("out", type=Path, metavar="DIR", help="folder holding the .bin/.idx shards")
    p.add_argument("--tokenizer", required=True,
                   help="the tokenizer the shards were made with: spm:PATH | hf:NAME_OR_PATH")
    p.add_argument("--source", default="", help="source name in the manifest (default: DIR's name)")
    p.add_argument("--val", default="", metavar="GLOB",
                   help="shards whose path under DIR matches GLOB are the val split (e.g. '*_val_*')")
    p.add_argument("--force", action="store_true", help="replace an existing manifest.json")
    return p


def _dir_parser(prog: str, what: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=what)
    p.add_argument("out", type=Path, help="prepared data directory")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv.pop(0) if argv and argv[0] in ("tokenizer", "merge", "verify", "import") else "prep"
    from data_prep import partitioned, single
    from data_prep.options import output_folder
    if cmd == "import":
        from data_prep.imported import run_import
        a = _import_parser().parse_args(argv)
        run_import(a.out, a.tokenizer, a.source, a.val, a.force)
    elif cmd == "merge":
        partitioned.run_merge(_dir_parser("lai-prep merge", "merge the parts of a partitioned run").parse_args(argv).out)
    elif cmd == "verify":
        single.run_verify(_dir_parser("lai-prep verify", "check every shard of a prepared directory").parse_args(argv).out)
    elif cmd == "tokenizer":
        opts = _options(_prep_parser("lai-prep tokenizer", partitioned=False).parse_args(argv))
        with output_folder(opts.out):
            partitioned.run_tokenizer(opts)
    else:
        opts = _options(_prep_parser("lai-prep", partitioned=True).parse_args(argv))
        with output_folder(opts.out):
            (single.run_prep if opts.part is None else partitioned.run_part)(opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
