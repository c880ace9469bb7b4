"""Valuation closes the loop, end to end with the real commands: lai-prep (JSON lines, a
sentencepiece tokenizer) -> lai-train (one process, a few steps, LAI on) -> lai-report (ranked by
the step-corrected value, each document with how often it was measured and a link to its JSON
line) -> keep_drop.csv -> lai-prep --exclude -> a corpus without exactly the dropped documents."""
from __future__ import annotations

import csv
import json

import pytest

from pipeline.format.manifest import load_manifest
from pipeline.format.provenance import doc_hash, hash_hex, read_docs
from support.prep import make_docs, prep
from support.train import train

pytestmark = pytest.mark.slow


def hashes(out) -> list[str]:
    """Text hashes of every train document of a prepared directory."""
    m = load_manifest(out)
    return [hash_hex(r["hash"]) for e in m.shards_of("train") for r in read_docs(out / e.prefix)]


def test_report_keep_drop_list_and_exclude_close_the_loop(tmp_path, spm_model):
    docs = make_docs(160, seed=11)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs)))
    source = ["--source", f"web=jsonl:{corpus}", "--tokenizer", f"spm:{spm_model}"]
    data = tmp_path / "data"
    assert prep(*source, "--out", data) == 0
    run = tmp_path / "run"
    train(data, run, "train.zero_stage=0", "train.steps=6", "train.eval_every=0",
          "run.save_every=0", "lai.warmup_steps=0", ranks=1)

    from pipeline.report.cli import main as lai_report
    assert lai_report([str(run), "--drop-frac", "0.2", "--min-tokens", "8",
                       "--min-measured", "1"]) == 0      # 6 steps: most were measured once
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["value_step_method"].startswith("value_norm")   # the trainer records it
    least = report["documents"]["least_valuable"]
    assert least and all(e["measured"] >= 1 for e in least)
    assert [e["value_step"] for e in least] == sorted(e["value_step"] for e in least)
    line_of = {hash_hex(doc_hash(d.encode())): i + 1 for i, d in enumerate(docs)}
    for e in least:                       # the link is the document's own line of the corpus
        assert e["record"] == f"{corpus.resolve()}:{line_of[e['doc_hash']]}"
    md = (run / "report" / "report.md").read_text()
    assert least[0]["record"] in md and "| measured |" in md

    with open(run / "report" / "keep_drop.csv") as f:
        rows = list(csv.DictReader(f))
    dropped = {r["doc_hash"] for r in rows if r["decision"] == "drop"}
    ranked = [r for r in rows if r["value_step"]]
    assert dropped and len(dropped) == report["keep_drop"]["dropped"]
    assert len(dropped) <= int(0.2 * len(ranked))
    assert all(float(r["value_step"]) < 0 for r in rows if r["decision"] == "drop")

    clean = tmp_path / "clean"
    assert prep(*source, "--exclude", run / "report" / "keep_drop.csv", "--out", clean) == 0
    before, after = hashes(data), hashes(clean)
    assert set(after) == set(before) - dropped and len(after) == len(before) - len(dropped)
    exact = tmp_path / "exact"              # the list's records are the ones lai-prep reads
    assert prep(*source, "--exclude", run / "report" / "keep_drop.csv", "--exclude-match",
                "record", "--out", exact) == 0
    assert sorted(hashes(exact)) == sorted(after)
