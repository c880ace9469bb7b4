"""lai-prep for a new user and for the valuation loop:

- every document's provenance (file and line / record / row, text hash) is recorded per shard and
  points at its original record, for every reader kind, also after a partitioned run's merge;
- `--exclude LIST` leaves out the documents a keep/drop list marks drop (by text, wherever they
  are) and is part of what a re-run must match;
- an HF `save_to_disk` folder is a source (Dataset and DatasetDict);
- `--help` shows the defaults; progress bars have a total and an ETA, also while the tokenizer
  is trained; a failed run leaves no empty output folder.
"""
from __future__ import annotations

import csv
import json
import re

import pytest

from data_prep.sources import iter_documents, parse_source
from pipeline.format.manifest import load_manifest
from pipeline.format.provenance import doc_hash, hash_hex, read_docs, record
from support.prep import VOCAB, make_docs, prep, prep_cli, read_docs as read_shards


def provenance(out) -> list[tuple[str, str, str]]:
    """(source, record, hash) of every document of a prepared directory, in shard order."""
    m = load_manifest(out)
    sources = {s["name"]: s for s in m.sources}
    rows = []
    for e in m.shards:
        for r in read_docs(out / e.prefix):
            rows.append((e.source, record(sources[e.source], int(r["file"]), int(r["pos"])),
                         hash_hex(r["hash"])))
    return rows


def test_every_document_links_to_its_original_record(tmp_path, spm_model):
    docs = make_docs(30, seed=3)
    jl = tmp_path / "a.jsonl"
    jl.write_text("\n".join(json.dumps({"text": d}) for d in docs[:10]) + "\n\n")   # blank line
    lines = tmp_path / "b.txt"
    lines.write_text("".join(" ".join(d.split()) + "\n" for d in docs[10:20]))
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": docs[20:30]}), tmp_path / "c.parquet")
    out = tmp_path / "out"
    assert prep("--source", f"jl=jsonl:{jl}", "--source", f"tx=text:{lines}:line",
                "--source", f"pq=parquet:{tmp_path / 'c.parquet'}", "--tokenizer",
                f"spm:{spm_model}", "--val-fraction", 0.2, "--out", out) == 0
    found = {rec: h for _, rec, h in provenance(out)}
    for i, d in enumerate(docs[:10]):
        assert found[f"{jl.resolve()}:{i + 1}"] == hash_hex(doc_hash(d.encode()))
    for i, d in enumerate(docs[10:20]):
        assert found[f"{lines.resolve()}:{i + 1}"] == hash_hex(doc_hash(" ".join(d.split()).encode()))
    for i, d in enumerate(docs[20:30]):
        assert found[f"{(tmp_path / 'c.parquet').resolve()} row {i}"] == hash_hex(doc_hash(d.encode()))
    assert len(found) == 30                                   # train and val shards both

    parted = tmp_path / "parted"                              # partitioned: the same records
    common = ["--source", f"jl=jsonl:{jl}", "--source", f"tx=text:{lines}:line", "--source",
              f"pq=parquet:{tmp_path / 'c.parquet'}", "--tokenizer", f"spm:{spm_model}",
              "--val-fraction", 0.2, "--out", parted]
    assert prep("tokenizer", *common) == 0
    for k in range(2):
        assert prep(*common, "--num-parts", 2, "--part", k) == 0
    assert prep("merge", parted) == 0
    assert sorted(provenance(parted)) == sorted(provenance(out))

    assert prep_cli("verify", out).returncode == 0            # the sidecar is checksummed
    sidecar = out / f"{load_manifest(out).shards[0].prefix}.docs.npy"
    sidecar.write_bytes(sidecar.read_bytes()[:-8] + b"\0" * 8)
    r = prep_cli("verify", out)
    assert r.returncode == 2 and "docs.npy: missing, or its checksum does not match" in r.stderr


def test_exclude_leaves_out_the_listed_documents(tmp_path, spm_model):
    docs = make_docs(40, seed=5)
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    base = ["--source", f"c=jsonl:{src}", "--tokenizer", f"spm:{spm_model}", "--val-fraction", 0]
    out = tmp_path / "all"
    assert prep(*base, "--out", out) == 0
    drop = {doc_hash(docs[i].encode()) for i in (3, 7, 8)}
    listing = tmp_path / "keep_drop.csv"
    with open(listing, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["decision", "doc_hash", "record"])
        for d in docs:
            h = doc_hash(d.encode())
            w.writerow(["drop" if h in drop else "keep", hash_hex(h), "x"])
    clean = tmp_path / "clean"
    r = prep_cli(*base, "--exclude", listing, "--out", clean)
    assert r.returncode == 0, r.stderr
    assert "3 excluded by --exclude" in r.stderr
    kept = {h for _, _, h in provenance(clean)}
    assert kept == {hash_hex(doc_hash(d.encode())) for d in docs} - {hash_hex(h) for h in drop}
    assert sum(len(v) for v in read_shards(clean).values()) == 37
    assert load_manifest(clean).stats["sources"]["c"]["excluded"] == 3
    listing.write_text(listing.read_text().replace("keep,", "drop,", 1))    # another list
    r = prep_cli(*base, "--exclude", listing, "--out", clean)
    assert r.returncode == 2 and "different arguments (exclude" in r.stderr
    listing.write_text("decision,doc_hash\nmaybe,00\n")
    r = prep_cli(*base, "--exclude", listing, "--out", tmp_path / "bad")
    assert r.returncode == 2 and "keep_drop.csv:2: decision must be keep or drop" in r.stderr


def test_exclude_counts_copies_and_matches_records_on_request(tmp_path, spm_model):
    """A marked document's text also found elsewhere: --exclude (text) drops the copies too and
    says how many there were; --exclude-match record drops only the marked records."""
    docs = make_docs(20, seed=6)
    lines = docs + [docs[3], docs[3], docs[7]]          # lines 21-23: copies of lines 4 and 8
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in lines))
    listing = tmp_path / "keep_drop.csv"
    with open(listing, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["decision", "doc_hash", "record"])
        for line in (4, 8):
            w.writerow(["drop", hash_hex(doc_hash(docs[line - 1].encode())),
                        f"{src.resolve()}:{line}"])
    base = ["--source", f"c=jsonl:{src}", "--tokenizer", f"spm:{spm_model}", "--val-fraction", 0,
            "--exclude", listing]
    r = prep_cli(*base, "--out", tmp_path / "text")
    assert r.returncode == 0, r.stderr
    assert ("5 excluded by --exclude (2 marked drop; 3 of them copies of a marked document's text "
            "elsewhere)" in r.stderr)
    assert load_manifest(tmp_path / "text").stats["sources"]["c"]["excluded_copies"] == 3
    assert len(provenance(tmp_path / "text")) == 18
    r = prep_cli(*base, "--exclude-match", "record", "--out", tmp_path / "record")
    assert r.returncode == 0, r.stderr
    assert "2 excluded by --exclude (2 marked drop)," in r.stderr and "copies of" not in r.stderr
    kept = [rec for _, rec, _ in provenance(tmp_path / "record")]
    assert len(kept) == 21 and f"{src.resolve()}:4" not in kept
    assert {f"{src.resolve()}:{n}" for n in (21, 22, 23)} <= set(kept)   # the copies stay


def test_exclude_that_matches_nothing_says_so(tmp_path, spm_model, capsys):
    """A keep/drop list made on other data: a warning line, and the summary counts 0 excluded
    of the documents the list marks drop."""
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in make_docs(10, seed=5)))
    listing = tmp_path / "keep_drop.csv"
    others = [hash_hex(doc_hash(d.encode())) for d in make_docs(2, seed=99)]
    listing.write_text("decision,doc_hash\n" + "".join(f"drop,{h}\n" for h in others))
    capsys.readouterr()
    assert prep("--source", f"c=jsonl:{src}", "--tokenizer", f"spm:{spm_model}",
                "--val-fraction", 0, "--exclude", listing, "--out", tmp_path / "out") == 0
    err = capsys.readouterr().err.splitlines()
    assert f"warning: --exclude {listing}: none of its 2 'drop' documents is in these " \
           "sources; nothing was excluded (a list made on other data?)" in err
    assert any(ln.startswith("lai-prep: 10 docs (0 empty skipped, 0 excluded by --exclude (2 "
                             "marked drop), ") for ln in err), err


@pytest.mark.parametrize("as_dict", [False, True])
def test_hf_save_to_disk_folder_is_a_source(tmp_path, monkeypatch, as_dict):
    import datasets
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    texts = [f"row {i} {'y' * i}" for i in range(12)]
    ds = datasets.Dataset.from_dict({"text": texts, "id": list(range(12))})
    saved = tmp_path / "saved"
    (datasets.DatasetDict({"train": ds, "test": ds.select(range(2))}) if as_dict else ds) \
        .save_to_disk(str(saved))
    spec = parse_source(f"hf:{saved}:{'test' if as_dict else 'train'}")
    assert list(iter_documents(spec)) == (texts[:2] if as_dict else texts)
    spec = parse_source(f"hf:{saved}:train,streaming=1")
    assert list(iter_documents(spec)) == texts
    if as_dict:
        from pipeline.errors import UserError
        with pytest.raises(UserError, match="no split 'validation' in this saved DatasetDict"):
            list(iter_documents(parse_source(f"hf:{saved}:validation")))


def test_help_shows_defaults():
    r = prep_cli("--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for default in ("(default: 8192)", "(default: 0.01)", "(default: 100000000)",
                    "(default: train)", "(default: 2)", "(default: auto)"):
        assert default in text, default


def test_progress_has_a_total_and_eta_also_for_the_tokenizer(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in make_docs(400, seed=2)))
    r = prep_cli("--source", f"jsonl:{src}", "--vocab-size", VOCAB, "--progress", 1,
                 "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    bars = r.stderr.replace("\r", "\n").splitlines()
    total = f"{src.stat().st_size / 1024:.1f}k"               # input bytes, with an ETA field
    for bar in ("tokenizer: reading c", "c"):
        done = [b for b in bars if re.match(rf"{bar}: 100%\|.*\| {total}/{total} "
                                            r"\[\d\d:\d\d<\d\d:\d\d, ", b)]
        assert done, (bar, bars[-8:])
    assert any(b.startswith("tokenizer: training sentencepiece: 00:0") for b in bars)


def test_a_failed_run_leaves_no_empty_output_folder(tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_text('{"text": "fine"}\n{"text": 3}\n')
    out = tmp_path / "new" / "out"
    r = prep_cli("--source", f"jsonl:{src}", "--vocab-size", VOCAB, "--out", out)
    assert r.returncode == 2 and "is int, not a string" in r.stderr
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    r = prep_cli("--source", f"jsonl:{src}", "--vocab-size", VOCAB, "--out", kept)
    assert r.returncode == 2 and kept.is_dir()                # it was there before: left alone
