"""lai-prep as a real `python -m data_prep` process: the README demo's first step as documented
(a tokenizer of 8192 pieces trained on the standard library), and `verify` on corrupt shards
(one line, exit 2, no traceback). In-process tests: unit/test_data_prep*.py."""
from __future__ import annotations

import pytest

from data_prep.sources import stdlib_files
from pipeline.format.manifest import load_manifest
from pipeline.format.tokenizer import SentencePieceTokenizer
from support.prep import make_docs, prep, prep_cli, read_docs, write_text_dir


def test_demo_default_stdlib(tmp_path):
    """The README demo's first step, exactly as documented (default vocab 8192, 2 workers)."""
    out = tmp_path / "stdlib"
    r = prep_cli("--source", "stdlib", "--out", out, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("lai-prep: ")
    m = load_manifest(out)
    assert m.tokenizer.vocab_size == 8192 and m.dtype == "uint16"
    assert m.stats["sources"]["stdlib"]["docs"] == len(stdlib_files())
    tok = SentencePieceTokenizer(out / "tokenizer.model")
    train = read_docs(out)[("stdlib", "train")]
    texts = {f.read_text(encoding="utf-8", errors="replace") for f in stdlib_files()[:50]}
    assert sum(tok.decode(t[:-1]) in texts for t in train[:40]) >= 35   # (val takes ~1%)


@pytest.mark.parametrize("damage,message", [
    (lambda p: p.with_suffix(".idx").write_bytes(b"XXXXXXXXX" + p.with_suffix(".idx").read_bytes()[9:]), "wrong magic"),
    (lambda p: p.with_suffix(".idx").write_bytes(p.with_suffix(".idx").read_bytes()[:-8]), "index size"),
    (lambda p: p.write_bytes(p.read_bytes()[:-4]), "shorter than the index says"),
    (lambda p: p.write_bytes(bytes(len(p.read_bytes()))), "checksum does not match the manifest"),
])
def test_verify_reports_corrupt_shards(tmp_path, spm_model, damage, message):
    src = write_text_dir(tmp_path / "c", make_docs(20, seed=9))
    out = tmp_path / "out"
    prep("--source", f"text:{src}", "--out", out, "--tokenizer", f"spm:{spm_model}", "--val-fraction", 0)
    damage(out / "c-train-00000.bin")
    r = prep_cli("verify", out)                                   # the real CLI: no traceback
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith(f"error: {out / 'c-train-00000'}") and message in r.stderr
    assert r.stderr.strip().count("\n") == 0
