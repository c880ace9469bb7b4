"""lai-report on a real (tiny) prepared dataset, a real sentencepiece tokenizer and a ledger
written by Ledger with made-up values: every number is checked against a direct computation."""
from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
from support.report import MICRO, STEPS, WORLD

from pipeline.errors import UserError
from pipeline.format.indexed import IndexedReader
from pipeline.format.ledger import Ledger, read_ledger
from pipeline.report.cli import main
from pipeline.report.valuation import build_report


def step_z(rows) -> list[float]:
    """Each row's value as a z-score among the rows of its step, by plain Python."""
    by_step = defaultdict(list)
    for r in rows:
        by_step[int(r["step"])].append(float(r["value"]))
    out = []
    for r in rows:
        v = by_step[int(r["step"])]
        mean = sum(v) / len(v)
        sd = (sum((x - mean) ** 2 for x in v) / len(v)) ** 0.5
        out.append((float(r["value"]) - mean) / sd)
    return out


def direct(rows, ds):
    """Per-document and per-source token-weighted aggregates by plain Python loops (z: the
    step-corrected value, for rows whose values are all finite)."""
    doc = defaultdict(lambda: defaultdict(float))
    src = defaultdict(lambda: defaultdict(float))
    src_seqs = defaultdict(set)
    zs = step_z(rows) if np.isfinite(rows["value"]).all() else [np.nan] * len(rows)
    for r, z in zip(rows, zs):
        for s in ds.locate(int(r["seq_id"])):
            for acc in (doc[(s.source, s.shard, s.doc)], src[s.source]):
                acc["tokens"] += s.num_tokens
                acc["z"] += s.num_tokens * z
                acc["value"] += s.num_tokens * r["value"]
                acc["excluded"] += s.num_tokens * (not r["kept"])
                acc["loss"] += s.num_tokens * float(r["loss"])
            doc[(s.source, s.shard, s.doc)]["sequences"] += 1
            src_seqs[s.source].add(int(r["seq_id"]))
    for key, acc in src.items():
        acc["sequences"] = len(src_seqs[key])
    return doc, src


def test_spans_cover_the_samples(report_run):
    """What the report relies on: a sample's tokens are its located document runs, in order."""
    _, ds, _, dirs = report_run
    readers = {}
    for seq_id in range(0, 3 * ds.samples_per_epoch, 7):
        spans = ds.locate(seq_id)
        pieces = []
        for s in spans:
            d = dirs[0] if s.source == "alpha" else dirs[1]
            r = readers.setdefault(s.shard, IndexedReader(d / s.shard))
            pieces.append(r[s.doc][s.token_offset:s.token_offset + s.num_tokens])
        assert np.array_equal(np.concatenate(pieces), ds.sample(seq_id))


def test_report_numbers_match_direct_computation(report_run):
    run_dir, ds, sp, dirs = report_run
    rep = build_report(run_dir, top=3, min_tokens=4, min_measured=1)
    rows = read_ledger(run_dir)
    assert rep["sequences"] == rows.size == STEPS * WORLD * MICRO
    assert rep["steps"] == {"count": STEPS, "first": 0, "last": STEPS - 1}
    assert rep["excluded_frac"] == pytest.approx(float((~rows["kept"]).mean()), rel=1e-12)

    doc, src = direct(rows, ds)
    assert [s["source"] for s in rep["sources"]] == sorted(src)
    for s in rep["sources"]:
        acc = src[s["source"]]
        assert s["tokens"] == acc["tokens"] and s["sequences"] == acc["sequences"]
        assert s["mean_value"] == pytest.approx(acc["value"] / acc["tokens"], rel=1e-9)
        assert s["excluded_frac"] == pytest.approx(acc["excluded"] / acc["tokens"], rel=1e-12)
        assert s["mean_loss"] == pytest.approx(acc["loss"] / acc["tokens"], rel=1e-6)
    by_src = {s["source"]: s for s in rep["sources"]}
    assert by_src["alpha"]["mean_value"] > 0 > by_src["beta"]["mean_value"]   # the planted signal

    ranked = sorted((k for k, a in doc.items() if a["tokens"] >= 4),      # by step value
                    key=lambda k: doc[k]["z"] / doc[k]["tokens"])
    docs = rep["documents"]
    assert rep["value_step_method"].startswith("z-score of the value among its step")
    assert docs["count"] == len(doc) and docs["ranked"] == len(ranked)
    key = lambda e: (e["source"], e["shard"], e["doc"])  # noqa: E731
    assert [key(e) for e in docs["least_valuable"]] == ranked[:3]
    assert [key(e) for e in docs["most_valuable"]] == ranked[::-1][:3]
    for e in docs["least_valuable"] + docs["most_valuable"]:
        acc = doc[key(e)]
        assert e["mean_value"] == pytest.approx(acc["value"] / acc["tokens"], rel=1e-9)
        assert e["value_step"] == pytest.approx(acc["z"] / acc["tokens"], rel=1e-9)
        assert e["sequences"] == e["measured"] == acc["sequences"]
        assert e["tokens"] == acc["tokens"]
        assert e["record"] == "" and e["doc_hash"] == ""         # datagen records no provenance
        d = dirs[0] if e["source"] == "alpha" else dirs[1]
        text = sp.decode(IndexedReader(d / e["shard"])[e["doc"]].tolist())
        assert e["snippet"] == text and e["snippet"].startswith(f"{e['source']} ")

    out = run_dir / "report"
    assert json.loads((out / "report.json").read_text()) == rep
    md = (out / "report.md").read_text()
    assert "| alpha |" in md and docs["most_valuable"][0]["snippet"] in md
    lines = (out / "documents.csv").read_text().splitlines()
    assert lines[0] == ("source,shard,doc,sequences,measured,tokens,value_step,mean_value,"
                        "excluded_frac,mean_loss,record,doc_hash")
    assert len(lines) == 1 + len(doc)
    import csv
    with open(out / "keep_drop.csv") as f:
        decisions = list(csv.DictReader(f))
    assert len(decisions) == len(doc)
    dropped = [(d["source"], d["shard"], int(d["doc"])) for d in decisions if d["decision"] == "drop"]
    assert dropped == ranked[:len(ranked) // 10] and rep["keep_drop"]["dropped"] == len(dropped)
    import matplotlib.image

    png = matplotlib.image.imread(out / "valuation.png")
    assert png.shape[0] > 300 and png.shape[1] > 800
    assert not [p for p in out.iterdir() if p.name.startswith(".")]   # no temporaries left


def test_keep_drop_needs_repeated_measurements_and_says_how_sure(report_run):
    """--min-measured: only documents measured at least twice can be dropped; each row's
    confidence is Phi(-v sqrt(n) / s) (drop) or its complement (keep), s the pooled
    within-document spread of one measurement: all against plain Python."""
    import csv
    import math
    run_dir, ds, _, _ = report_run
    rep = build_report(run_dir, min_tokens=4, drop_frac=0.5, min_measured=2)
    rows = read_ledger(run_dir)
    doc, _ = direct(rows, ds)
    per_doc = defaultdict(list)
    for r, z in zip(rows, step_z(rows)):
        for key in {(s.source, s.shard, s.doc) for s in ds.locate(int(r["seq_id"]))}:
            per_doc[key].append(z)
    twice = [v for v in per_doc.values() if len(v) >= 2]
    sd = math.sqrt(sum(sum((x - sum(v) / len(v)) ** 2 for x in v) for v in twice)
                   / sum(len(v) - 1 for v in twice))
    ranked = sorted((k for k, a in doc.items() if a["tokens"] >= 4),
                    key=lambda k: doc[k]["z"] / doc[k]["tokens"])
    eligible = [k for k in ranked if doc[k]["sequences"] >= 2]
    expected = [k for k in eligible[:len(eligible) // 2] if doc[k]["z"] < 0]
    held_back = [k for k in ranked[:len(ranked) // 2] if doc[k]["sequences"] < 2]
    assert expected and held_back                       # both rules decide something here
    with open(run_dir / "report" / "keep_drop.csv") as f:
        table = list(csv.DictReader(f))
    key = lambda d: (d["source"], d["shard"], int(d["doc"]))  # noqa: E731
    assert [key(d) for d in table if d["decision"] == "drop"] == expected
    for d in table:
        a = doc[key(d)]
        p = 0.5 * math.erfc(a["z"] / a["tokens"] * math.sqrt(a["sequences"]) / (sd * math.sqrt(2)))
        assert float(d["confidence"]) == pytest.approx(p if d["decision"] == "drop" else 1 - p,
                                                       abs=1e-4)
    k = rep["keep_drop"]
    assert k["measurement_sd"] == pytest.approx(sd, rel=1e-9) and k["min_measured"] == 2
    assert k["too_few_measurements"] == sum(doc[x]["sequences"] < 2 for x in ranked)
    assert "measured at least 2 times" in (run_dir / "report" / "report.md").read_text()
    with pytest.raises(SystemExit) as e:
        main([str(run_dir), "--min-measured", "0"])
    assert e.value.code == 2


def test_errors(report_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    assert e.value.code == 2
    assert capsys.readouterr().err == \
        f"error: {tmp_path / 'ledger'}: no ledger in this run directory (was it trained by lai-train?)\n"
    Ledger(tmp_path, 0).close()
    with pytest.raises(UserError, match="no committed rows"):
        build_report(tmp_path)
    led = Ledger(tmp_path, 0)
    led.append(0, [0], [1.0], [True], [2.0])
    led.close()
    with pytest.raises(UserError, match=r"data.json: missing"):
        build_report(tmp_path)
    (tmp_path / "data.json").write_text(json.dumps({"sources": [], "seq_len": 8, "seed": 0}))
    with pytest.raises(UserError, match="'sources' must be a non-empty list"):
        build_report(tmp_path)
    (tmp_path / "data.json").write_text(json.dumps({"sources": [["x", 1]], "seq_len": "8",
                                                    "seed": 0}))
    with pytest.raises(UserError, match="field 'seq_len' is missing or not of type int"):
        build_report(tmp_path)
    spec = json.loads((report_run[0] / "data.json").read_text())
    (tmp_path / "data.json").write_text(json.dumps({**spec, "seed": 4}))
    with pytest.raises(UserError, match="fingerprint differs"):
        build_report(tmp_path)


def test_unscored_sequences_are_left_out_of_values(report_run, tmp_path):
    """NaN values (LAI disabled, filter none) count for exclusion and loss but not for value."""
    _, ds, _, _ = report_run
    (tmp_path / "data.json").write_text((report_run[0] / "data.json").read_text())
    seq = np.arange(16)
    values = np.where(seq % 2 == 0, np.nan, np.linspace(-1, 1, 16))
    led = Ledger(tmp_path, 0)
    led.append(0, seq, values, seq % 3 != 0, np.full(16, 3.0))
    led.close()
    rep = build_report(tmp_path, min_tokens=1)
    doc, src = direct(read_ledger(tmp_path), ds)
    scored = direct(read_ledger(tmp_path)[1::2], ds)[1]
    for s in rep["sources"]:
        assert s["mean_value"] == pytest.approx(scored[s["source"]]["value"]
                                                / scored[s["source"]]["tokens"], rel=1e-9)
        assert s["excluded_frac"] == pytest.approx(src[s["source"]]["excluded"]
                                                   / src[s["source"]]["tokens"], rel=1e-12)
    ranked = rep["documents"]["most_valuable"] + rep["documents"]["least_valuable"]
    assert ranked and all(e["mean_value"] is not None for e in ranked)
    assert rep["mean_value"] == pytest.approx(np.nanmean(values))


def test_ranking_is_corrected_for_the_step(report_run, tmp_path):
    """Raw values that shrink 1000-fold over training: the raw ranking lists what was seen first,
    the step-corrected one what was worse than its batch mates (here: beta, at every step). A
    ledger column value_norm, when present, is used as the corrected value."""
    _, ds, _, _ = report_run
    (tmp_path / "data.json").write_text((report_run[0] / "data.json").read_text())
    led = Ledger(tmp_path, 0)
    n = 8
    for step in range(1, 7):
        seq = np.arange((step - 1) * n, step * n)
        beta = np.array([ds.locate(int(i))[0].source == "beta" for i in seq])
        values = np.where(beta, 0.5, 1.0) * 1000.0 ** -(step - 1)       # all positive
        led.append(step, seq, values, np.ones(n, bool), np.full(n, 3.0))
    led.close()
    rep = build_report(tmp_path, min_tokens=1, top=1000)
    least = rep["documents"]["least_valuable"]
    assert {e["source"] for e in least if e["value_step"] < 0} == {"beta"}
    assert all(e["value_step"] >= 0 for e in least if e["source"] == "alpha")
    k = sum(e["source"] == "beta" for e in least)
    assert {e["source"] for e in least[:k]} == {"beta"}        # ranked by step value
    raw = sorted(least, key=lambda e: e["mean_value"])[:k]    # by raw value: "seen late"
    assert "alpha" in {e["source"] for e in raw}

    import pipeline.report.stats as stats
    norm = read_ledger(tmp_path)              # written without value_norm: read back as NaN
    assert np.isnan(norm["value_norm"]).all()
    norm["value_norm"] = -norm["seq_id"].astype(float)
    corrected, method = stats.step_corrected(norm)
    assert method.startswith("value_norm") and np.array_equal(corrected, norm["value_norm"])
    norm["value_norm"] = np.nan                                # an older run: computed
    assert stats.step_corrected(norm)[1] == stats.STEP_ZSCORE
