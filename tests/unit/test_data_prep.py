"""Data prep: every reader on local files, text -> shards -> text round trip, our shards read by an
independent reader, determinism across worker counts, the tokenizer options (the demo default
through the real CLI: e2e/test_data_prep_cli.py). Helpers: support/prep.py; the `spm_model`
fixture: conftest.py."""
from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest

from data_prep.sources import iter_documents, parse_source, stdlib_files, stdlib_root
from data_prep.split import DocSplitter
from pipeline.format.tokenizer import SentencePieceTokenizer
from pipeline.format.indexed import IndexedReader
from pipeline.format.manifest import load_manifest
from support.indexed import ref_read
from support.prep import (VOCAB, dir_bytes, hf_tokenizer, make_docs, prep, read_docs,
                          write_text_dir)


def test_round_trip_text_to_shards_to_text(tmp_path, spm_model):
    docs = make_docs(120, seed=1) + ["", "   \n  "]           # two empty documents: skipped
    src = write_text_dir(tmp_path / "corpus", docs)
    out = tmp_path / "out"
    assert prep("--source", f"notes=text:{src}", "--out", out, "--tokenizer", f"spm:{spm_model}",
                "--shard-tokens", 600, "--val-fraction", 0.2, "--workers", 2) == 0
    m = load_manifest(out)
    tok = SentencePieceTokenizer(out / m.tokenizer.path)
    assert (out / "tokenizer.model").read_bytes() == spm_model.read_bytes()
    assert m.tokenizer.vocab_size == VOCAB and m.dtype == "uint16" and m.tokenizer.eos_id == 2
    # files are read in sorted order; each split keeps that order
    ordered = [d for _, d in sorted((f"doc{i:04d}.txt", d) for i, d in enumerate(docs)) if d.strip()]
    splitter = DocSplitter(0.2, 0)
    got = read_docs(out)
    for split in ("train", "val"):
        want = [d for d in ordered if splitter.split_of(d.encode()) == split]
        have = got[("notes", split)]
        assert len(want) == len(have) > 0
        for text, tokens in zip(want, have):
            assert tokens[-1] == m.tokenizer.eos_id
            assert tok.decode(tokens[:-1]) == text
    assert len([e for e in m.shards if e.split == "train"]) > 2         # the cap split it into shards
    st = m.stats["sources"]["notes"]
    assert (st["docs"], st["empty"], st["bad_utf8"]) == (len(docs), 2, 0)
    assert st["train_docs"] + st["val_docs"] == len(ordered)
    assert m.stats["num_tokens"] == sum(e.num_tokens for e in m.shards)
    # every shard: the independent byte-layout reader agrees with IndexedReader and the manifest
    for e in m.shards:
        dtype, seqs, doc_idx = ref_read(out / e.prefix)
        r = IndexedReader(out / e.prefix)
        assert dtype == np.uint16 and len(seqs) == e.num_docs == len(r)
        assert np.array_equal(doc_idx, np.arange(e.num_docs + 1))
        assert sum(map(len, seqs)) == e.num_tokens
        assert all(np.array_equal(s, r[i]) for i, s in enumerate(seqs))
    assert prep("verify", out) == 0


def test_same_bytes_for_any_worker_count(tmp_path):
    src = write_text_dir(tmp_path / "c", make_docs(200, seed=2))
    outs = []
    for workers in (1, 2):
        outs.append(tmp_path / f"w{workers}")
        prep("--source", f"text:{src}", "--out", outs[-1], "--vocab-size", VOCAB, "--shard-tokens", 900,
             "--val-fraction", 0.1, "--workers", workers)
    a, b = dir_bytes(outs[0]), dir_bytes(outs[1])
    assert sorted(a) == sorted(b) and len([n for n in a if n.endswith(".bin")]) > 3
    assert all(a[n] == b[n] for n in a), [n for n in a if a[n] != b[n]]    # tokenizer and manifest too


def test_text_modes_and_gzip(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\r\n\nthree\n\n\nfour\nfive")
    with gzip.open(tmp_path / "b.txt.gz", "wt") as f:
        f.write("gz doc")
    read = lambda spec: list(iter_documents(parse_source(spec)))  # noqa: E731
    assert read(f"text:{tmp_path / 'a.txt'}:line") == ["one", "two", "", "three", "", "", "four", "five"]
    assert read(f"text:{tmp_path / 'a.txt'}:blank") == ["one\ntwo", "three", "four\nfive"]
    assert read(f"text:{tmp_path}") == ["one\ntwo\r\n\nthree\n\n\nfour\nfive", "gz doc"]   # dir: sorted
    assert read(f"text:{tmp_path}/*.gz") == ["gz doc"]


def test_json_jsonl_parquet_readers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = [{"text": "alpha", "id": 1}, {"text": "beta\nγ", "id": 2}, {"text": None, "id": 3}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    with gzip.open(tmp_path / "e.jsonl.gz", "wt") as f:
        f.write(json.dumps({"body": "zipped"}) + "\n")
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "s.json").write_text(json.dumps(["just", "strings"]))
    pq.write_table(pa.table({"content": ["p0", "p1", None, "p3"], "n": [0, 1, 2, 3]}), tmp_path / "d.parquet",
                   row_group_size=2)
    read = lambda spec: list(iter_documents(parse_source(spec)))  # noqa: E731
    assert read(f"jsonl:{tmp_path / 'd.jsonl'}") == ["alpha", "beta\nγ", ""]
    assert read(f"jsonl:{tmp_path / 'e.jsonl.gz'},field=body") == ["zipped"]
    assert read(f"json:{tmp_path / 'd.json'}") == ["alpha", "beta\nγ", ""]
    assert read(f"json:{tmp_path / 's.json'}") == ["just", "strings"]
    assert read(f"parquet:{tmp_path / 'd.parquet'},field=content") == ["p0", "p1", "", "p3"]
    assert parse_source(f"parquet:{tmp_path}/d.parquet", default_field="content").field == "content"


@pytest.mark.parametrize("streaming", [False, True])
def test_hf_datasets_reader_on_local_files(tmp_path, monkeypatch, streaming):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    texts = [f"row {i} {'x' * i}" for i in range(25)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts)))
    spec = parse_source(f"hf:json:train,data_files={tmp_path / 'd.jsonl'},streaming={int(streaming)}")
    assert (spec.path, spec.split, spec.streaming, spec.name) == ("json", "train", streaming, "json")
    assert list(iter_documents(spec)) == texts


def test_stdlib_source_is_sorted_and_excludes_site_packages_and_tests():
    files = stdlib_files()
    rel = [f.relative_to(stdlib_root()).as_posix() for f in files]
    assert rel == sorted(rel) and len(rel) > 300 and "os.py" in rel
    assert not any("site-packages" in r or "/test/" in f"/{r}" for r in rel)
    with_tests = stdlib_files(include_tests=True)
    assert len(with_tests) > len(files) and any("/test/" in f"/{f.relative_to(stdlib_root()).as_posix()}"
                                                for f in with_tests)
    spec = parse_source("stdlib,tests=0")
    first = next(iter_documents(spec))
    assert first == files[0].read_text(encoding="utf-8", errors="replace")


def test_source_grammar():
    s = parse_source("web=text:/data/a:b/c.txt:blank,field=body")
    assert (s.name, s.kind, s.path, s.mode, s.field) == ("web", "text", "/data/a:b/c.txt", "blank", "body")
    s = parse_source("hf:allenai/c4:en:validation,streaming=true")
    assert (s.name, s.path, s.config, s.split, s.streaming) == ("c4", "allenai/c4", "en", "validation", True)
    assert parse_source("jsonl:/x/my-data.jsonl.gz").name == "my_data"
    assert parse_source("parquet:/x/*.parquet").name == "x"


def test_sources_file_and_multiple_sources(tmp_path, spm_model):
    import pyarrow as pa
    import pyarrow.parquet as pq
    docs = make_docs(40, seed=3)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs[:20]))
    pq.write_table(pa.table({"body": docs[20:]}), tmp_path / "b.parquet")
    (tmp_path / "sources.yaml").write_text(
        f"- web=jsonl:{tmp_path / 'a.jsonl'}\n- {{name: code, kind: parquet, path: '{tmp_path / 'b.parquet'}'}}\n")
    out = tmp_path / "out"
    prep("--sources", tmp_path / "sources.yaml", "--text-field", "body", "--out", out,
         "--tokenizer", f"spm:{spm_model}", "--val-fraction", 0)
    m = load_manifest(out)
    assert [s["name"] for s in m.sources] == ["web", "code"]
    assert [e.prefix for e in m.shards] == ["web-train-00000", "code-train-00000"]
    tok = SentencePieceTokenizer(out / "tokenizer.model")
    got = read_docs(out)
    assert [tok.decode(t[:-1]) for t in got[("web", "train")]] == docs[:20]
    assert [tok.decode(t[:-1]) for t in got[("code", "train")]] == docs[20:]


@pytest.mark.parametrize("n_words,dtype", [(100, "uint16"), (70_000, "int32")])
def test_hf_tokenizer_and_dtype_choice(tmp_path, n_words, dtype):
    from transformers import AutoTokenizer
    hf = hf_tokenizer(tmp_path / "hf", n_words)
    docs = ["the model w99 data", "w69990 token"] if n_words > 1000 else ["the model data", "token loss"]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = tmp_path / "out"
    prep("--source", f"jsonl:{tmp_path / 'd.jsonl'}", "--out", out, "--tokenizer", f"hf:{hf}", "--val-fraction", 0)
    m = load_manifest(out)
    assert (m.tokenizer.kind, m.tokenizer.path, m.dtype, m.tokenizer.eos_id) == ("hf", "tokenizer", dtype, 1)
    ref = AutoTokenizer.from_pretrained(hf)
    got = read_docs(out)[("d", "train")]
    assert [list(t) for t in got] == [ref(d, add_special_tokens=False)["input_ids"] + [1] for d in docs]


def test_rerun_resumes_noop_changed_args_refused_force_restarts(tmp_path, spm_model, capsys):
    src = write_text_dir(tmp_path / "c", make_docs(60, seed=4))
    out = tmp_path / "out"
    base = ["--source", f"text:{src}", "--out", out, "--tokenizer", f"spm:{spm_model}", "--shard-tokens", 500]
    prep(*base)
    before = dir_bytes(out)
    prep(*base, "--workers", 1)                       # workers do not change the output: a no-op
    assert "nothing to do" in capsys.readouterr().err and dir_bytes(out) == before
    with pytest.raises(SystemExit) as e:
        prep(*base[:-1], 2000)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.count("\n") == 0
    assert "manifest.json" in err and "shard_tokens: 500 -> 2000" in err and "--force" in err
    assert dir_bytes(out) == before
    prep(*base[:-1], 2000, "--force")
    shards = {e.prefix + ".bin" for e in load_manifest(out).shards}
    assert shards == {n for n in os.listdir(out) if n.endswith(".bin")}     # old shards removed
    assert len(shards) < len([n for n in before if n.endswith(".bin")])
    assert not any(n.endswith(".tmp") or ".tmp." in n for n in os.listdir(out))


def test_split_is_a_function_of_text_and_seed():
    texts = [f"document {i} " * (i % 7 + 1) for i in range(5000)]
    a, b = DocSplitter(0.1, seed=0), DocSplitter(0.1, seed=1)
    val_a = [t for t in texts if a.split_of(t.encode()) == "val"]
    assert 0.08 < len(val_a) / len(texts) < 0.12
    assert val_a == [t for t in reversed(texts) if a.split_of(t.encode()) == "val"][::-1]   # order-free
    assert val_a != [t for t in texts if b.split_of(t.encode()) == "val"]                   # seed matters
    assert all(DocSplitter(0.0).split_of(t.encode()) == "train" for t in texts[:100])


def test_max_docs_and_max_bytes(tmp_path, spm_model):
    lines = tmp_path / "l.txt"
    lines.write_text("\n".join(f"line number {i}" for i in range(100)))      # 13 bytes each for i < 10
    # --max-bytes stops before the first document once the total has reached the cap: 8 x 13 >= 100
    for opt, value, want in (("--max-docs", 10, 10), ("--max-bytes", 100, 8)):
        out = tmp_path / opt
        prep("--source", f"text:{lines}:line", "--out", out, "--tokenizer", f"spm:{spm_model}", opt, value,
             "--val-fraction", 0)
        st = load_manifest(out).stats["sources"]["l"]
        assert st["docs"] == st["train_docs"] == want, st
