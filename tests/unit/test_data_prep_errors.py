"""Bad input to lai-prep: one line `error: <file>: <problem>` on stderr, exit 2, no traceback,
nothing half-written (no manifest, no temporaries, no shard that looks complete but is not)."""
from __future__ import annotations

import gzip
import json

import pytest

from pipeline.format.manifest import load_manifest
from support.faults import DOUBLED_WORD    # "at at column": a message glitch
from support.prep import VOCAB, hf_tokenizer, make_docs, prep, read_docs, write_text_dir


def fails(capsys, *args) -> str:
    """Run lai-prep in-process, expect exit 2 and exactly one stderr line starting with 'error: '."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        prep(*args)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not DOUBLED_WORD.search(lines[0]), lines[0]
    return lines[0]


def nothing_half_written(out) -> bool:
    if not out.exists():
        return True
    names = [p.name for p in out.rglob("*")]
    return "manifest.json" not in names and not any(".tmp." in n for n in names)


@pytest.mark.parametrize("kind", ["text", "jsonl", "json", "parquet"])
def test_missing_input_file(tmp_path, capsys, kind):
    out = tmp_path / "out"
    msg = fails(capsys, "--source", f"{kind}:{tmp_path / 'nope'}", "--out", out)
    assert msg == f"error: {tmp_path / 'nope'}: no such file or directory (source 'nope')"
    assert not out.exists()


def test_empty_directory_and_unknown_kind_and_duplicates(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "no jsonl files found" in fails(capsys, "--source", f"jsonl:{tmp_path / 'empty'}", "--out", tmp_path / "o")
    assert "unknown source kind 'csv'" in fails(capsys, "--source", "csv:x", "--out", tmp_path / "o")
    assert "duplicate source name(s) stdlib" in fails(capsys, "--source", "stdlib", "--source", "stdlib",
                                                      "--out", tmp_path / "o")


def test_unreadable_parquet_and_missing_column(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet at all")
    assert fails(capsys, "--source", f"parquet:{bad}", "--out", tmp_path / "o").startswith(
        f"error: {bad}: unreadable Parquet (")
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "t.parquet")
    assert fails(capsys, "--source", f"parquet:{tmp_path / 't.parquet'}", "--out", tmp_path / "o") == \
        f"error: {tmp_path / 't.parquet'}: no text column 'text' (columns: body)"
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "n.parquet")
    assert "column 'text' has type int64, not string" in fails(
        capsys, "--source", f"parquet:{tmp_path / 'n.parquet'}", "--out", tmp_path / "o")
    assert nothing_half_written(tmp_path / "o")


@pytest.mark.parametrize("content,message", [
    ('{"text": "ok"}\n{"text": "also ok"}\n{"text": broken\n', "d.jsonl:3: invalid JSON (Expecting value at column 10)"),
    ('{"text": "ok"}\n{"body": "x", "id": 1}\n', "d.jsonl:2: missing text field 'text' (fields: body, id)"),
    ('{"text": 5}\n', "d.jsonl:1: text field 'text' is int, not a string"),
    ('["not an object"]\n', "d.jsonl:1: expected a JSON object, got list"),
    ('{"text": "no end', "d.jsonl:1: invalid JSON (Unterminated string starting at column 10)"),
])
def test_bad_jsonl(tmp_path, capsys, spm_model, content, message):
    (tmp_path / "d.jsonl").write_text(content)
    out = tmp_path / "out"
    msg = fails(capsys, "--source", f"jsonl:{tmp_path / 'd.jsonl'}", "--out", out, "--tokenizer", f"spm:{spm_model}")
    assert msg == f"error: {tmp_path}/{message}"
    assert nothing_half_written(out)


def test_bad_json(tmp_path, capsys):
    (tmp_path / "a.json").write_text('[{"text": "x"},')
    assert "a.json: invalid JSON (Expecting value at line 1 column 16)" in fails(
        capsys, "--source", f"json:{tmp_path / 'a.json'}", "--out", tmp_path / "o")
    (tmp_path / "b.json").write_text('{"text": "x"}')
    assert "b.json: expected a JSON array of records, got dict" in fails(
        capsys, "--source", f"json:{tmp_path / 'b.json'}", "--out", tmp_path / "o")
    (tmp_path / "c.json").write_text('[{"text": "x"}, {"txt": "y"}]')
    assert "c.json: record 1: missing text field 'text' (fields: txt)" in fails(
        capsys, "--source", f"json:{tmp_path / 'c.json'}", "--out", tmp_path / "o")
    with gzip.open(tmp_path / "d.json.gz", "wb") as f:
        f.write(b"\x00garbage")
    assert "d.json.gz: invalid JSON" in fails(capsys, "--source", f"json:{tmp_path / 'd.json.gz'}", "--out", tmp_path / "o")
    (tmp_path / "e.json.gz").write_bytes(b"not gzip")
    assert "e.json.gz: cannot read" in fails(capsys, "--source", f"json:{tmp_path / 'e.json.gz'}", "--out", tmp_path / "o")
    assert nothing_half_written(tmp_path / "o")


def test_hf_missing_field_and_missing_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "d.jsonl").write_text('{"body": "x"}\n')
    assert "hf:json: missing text field 'text' (columns: body)" in fails(
        capsys, "--source", f"hf:json:train,data_files={tmp_path / 'd.jsonl'}", "--out", tmp_path / "o")
    assert fails(capsys, "--source", f"hf:json:train,data_files={tmp_path / 'nope.jsonl'}",
                 "--out", tmp_path / "o").startswith("error: hf:json: cannot load dataset (")


def test_invalid_utf8_replaced_and_counted_or_strict(tmp_path, capsys, spm_model):
    src = tmp_path / "c"
    src.mkdir()
    (src / "a.txt").write_bytes(b"caf\xe9 data\n")
    (src / "b.txt").write_text("fine text")
    (src / "c.txt").write_text("   \n\n")
    out = tmp_path / "out"
    prep("--source", f"text:{src}", "--out", out, "--tokenizer", f"spm:{spm_model}", "--val-fraction", 0)
    m = load_manifest(out)
    st = m.stats["sources"]["c"]
    assert (st["docs"], st["bad_utf8"], st["empty"], st["train_docs"]) == (3, 1, 1, 2)
    from pipeline.format.tokenizer import SentencePieceTokenizer
    tok = SentencePieceTokenizer(out / "tokenizer.model")
    assert [tok.decode(d[:-1]) for d in read_docs(out)[("c", "train")]] == ["caf\ufffd data\n", "fine text"]
    strict = tmp_path / "strict"
    assert fails(capsys, "--source", f"text:{src}", "--out", strict, "--tokenizer", f"spm:{spm_model}",
                 "--strict") == f"error: {src / 'a.txt'}: invalid UTF-8 at byte 3 (--strict)"
    assert nothing_half_written(strict)
    (tmp_path / "l.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    assert f"{tmp_path / 'l.jsonl'}:2: invalid UTF-8 at byte 10" in fails(
        capsys, "--source", f"jsonl:{tmp_path / 'l.jsonl'}", "--out", tmp_path / "strict2", "--strict")


@pytest.mark.parametrize("tokenizer", ["train", "spm"])
def test_empty_corpus(tmp_path, capsys, spm_model, tokenizer):
    src = tmp_path / "c"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.txt").write_text(" \n\t\n" * i)
    out = tmp_path / "out"
    tok = ["--tokenizer", f"spm:{spm_model}"] if tokenizer == "spm" else ["--vocab-size", VOCAB]
    assert fails(capsys, "--source", f"text:{src}", "--out", out, *tok) == \
        f"error: {src}: source 'c' has no non-empty documents (3 read, 3 empty)"
    assert nothing_half_written(out) and not list(out.glob("*.bin"))


def test_vocab_does_not_fit_dtype(tmp_path, capsys):
    (tmp_path / "d.jsonl").write_text('{"text": "the model"}\n')
    src = ["--source", f"jsonl:{tmp_path / 'd.jsonl'}"]
    assert fails(capsys, *src, "--out", tmp_path / "a", "--vocab-size", 70000, "--dtype", "uint16") == \
        "error: --vocab-size 70000: does not fit --dtype uint16 (ids up to 65535)"
    hf = hf_tokenizer(tmp_path / "hf", 70_000)
    assert fails(capsys, *src, "--out", tmp_path / "b", "--tokenizer", f"hf:{hf}", "--dtype", "uint16") == \
        f"error: {tmp_path / 'b' / 'tokenizer'}: vocab size 70002 does not fit uint16 (ids up to 70001); " \
        "use --dtype int32 or auto"
    assert nothing_half_written(tmp_path / "b") and not list((tmp_path / "b").glob("*.bin"))


def test_bad_tokenizer_and_vocab_too_large_for_corpus(tmp_path, capsys):
    src = write_text_dir(tmp_path / "c", make_docs(10))
    assert fails(capsys, "--source", f"text:{src}", "--out", tmp_path / "o", "--tokenizer", f"spm:{tmp_path / 'x'}") == \
        f"error: {tmp_path / 'x'}: no such sentencepiece model file"
    (tmp_path / "junk.model").write_bytes(b"junk")
    assert fails(capsys, "--source", f"text:{src}", "--out", tmp_path / "o", "--tokenizer",
                 f"spm:{tmp_path / 'junk.model'}").startswith(f"error: {tmp_path / 'junk.model'}: not a sentencepiece model")
    assert fails(capsys, "--source", f"text:{src}", "--out", tmp_path / "o", "--tokenizer", "bpe") == \
        "error: --tokenizer: expected train, spm:PATH or hf:NAME_OR_PATH, got 'bpe'"
    msg = fails(capsys, "--source", f"text:{src}", "--out", tmp_path / "o", "--vocab-size", 5000)
    assert msg.startswith("error: --vocab-size 5000: sentencepiece training failed (Vocabulary size too high")
    assert fails(capsys, "--source", f"text:{src}", "--out", tmp_path / "o", "--pad-id", 2) == \
        "error: --eos-id 2: same id as --pad-id"
    assert fails(capsys, "--source", f"text:{src}", "--out", tmp_path / "o", "--vocab-size", 300, "--bos-id", 300) == \
        "error: --bos-id 300: must be in [0, --vocab-size 300) or -1 (none)"
    (tmp_path / "file").write_text("")
    assert fails(capsys, "--source", f"text:{src}", "--out", tmp_path / "file") == \
        f"error: {tmp_path / 'file'}: cannot create the output directory (File exists)"
    assert nothing_half_written(tmp_path / "o")


def test_error_mid_tokenization_keeps_completed_shards_and_resumes(tmp_path, capsys, spm_model):
    docs = make_docs(1200, seed=8)      # several encode batches (256 documents each)
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs) + "{oops\n")
    out = tmp_path / "out"
    args = ["--source", f"jsonl:{path}", "--out", out, "--tokenizer", f"spm:{spm_model}", "--shard-tokens", 3000,
            "--workers", 1]
    assert f"d.jsonl:{len(docs) + 1}: invalid JSON" in fails(capsys, *args)
    assert nothing_half_written(out)
    progress = json.loads((out / "progress.json").read_text())
    assert len(progress["shards"]) >= 2                      # complete, checksummed shards are kept
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    prep(*args)
    ref = tmp_path / "ref"
    prep(*args[:3], ref, *args[4:])
    assert [p.read_bytes() for p in sorted(out.glob("*-*.*"))] == [p.read_bytes() for p in sorted(ref.glob("*-*.*"))]


def test_partitioned_mode_misuse(tmp_path, capsys):
    src = ["--source", f"text:{write_text_dir(tmp_path / 'c', make_docs(5))}"]
    assert "no completed parts to merge" in fails(capsys, "merge", tmp_path / "o")
    assert "run `lai-prep tokenizer` with the same options first" in fails(
        capsys, *src, "--out", tmp_path / "o", "--num-parts", 2, "--part", 0)
    assert "--part: must be in [0, --num-parts) = [0, 2), got 2" in fails(
        capsys, *src, "--out", tmp_path / "o", "--num-parts", 2, "--part", 2)
    assert not (tmp_path / "o").exists()             # failed runs left no empty folder behind
    assert "data directory does not exist" in fails(capsys, "verify", tmp_path / "o")


def test_rerun_with_corrected_arguments_after_a_failure_starts_over(tmp_path, capsys, spm_model):
    """A prep that failed leaves progress.json; the corrected command (other arguments) starts
    over, removing the failed run's shards, instead of asking for --force."""
    docs = make_docs(1200, seed=8)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs) + "{oops\n")
    out = tmp_path / "out"
    common = ["--out", out, "--tokenizer", f"spm:{spm_model}", "--shard-tokens", 3000, "--workers", 1]
    assert "bad.jsonl:1201: invalid JSON" in fails(capsys, "--source", f"jsonl:{bad}", *common)
    progress = json.loads((out / "progress.json").read_text())
    assert progress["failed"] is True and len(progress["shards"]) >= 2
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    prep("--source", f"jsonl:{good}", *common)
    err = capsys.readouterr().err
    assert f"lai-prep: {out / 'progress.json'}: the earlier run failed with other arguments (" in err
    assert "); starting over" in err
    assert load_manifest(out).shards and not (out / "progress.json").exists()
    assert not list(out.glob("bad-*")) and list(out.glob("good-train-*.bin"))


def test_rerun_with_other_arguments_after_a_kill_says_why_not(tmp_path, capsys, spm_model):
    """A run killed after completing shards: other arguments would lose them, so one line says
    so; the same arguments resume it."""
    from dataclasses import asdict
    src = write_text_dir(tmp_path / "c", make_docs(60, seed=3))
    out = tmp_path / "out"
    args = ["--source", f"text:{src}", "--out", out, "--tokenizer", f"spm:{spm_model}", "--shard-tokens"]
    prep(*args, 300)
    m = load_manifest(out)
    assert len(m.shards) >= 3
    (out / "progress.json").write_text(json.dumps(          # as a kill after two shards leaves it
        {"args": m.args, "shards": [asdict(s) for s in m.shards[:2]], "sources_done": {}}))
    (out / "manifest.json").unlink()
    assert fails(capsys, *args, 400) == (
        f"error: {out / 'progress.json'}: 2 shard(s) of an interrupted run made with other "
        "arguments (shard_tokens: 300 -> 400) would be lost; re-run with its arguments to resume "
        "it, pass --force to start over, or use another --out")
    prep(*args, 300)
    assert load_manifest(out).shards == m.shards
