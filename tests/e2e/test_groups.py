"""Groups nobody declared: `lai-prep --groups K` and mixing over (source, group) arms.

- one source holding two templated kinds of documents (dice-game spam, theorem prose): the groups
  separate them (purity), deterministically for a seed and whatever the worker count; the
  manifest and the .docs.npy carry them and read back; a partitioned run finds the same groups;
- `lai.mixing.groups=true` on one prepared directory: the arms are its groups, named by their top
  terms in the log, TensorBoard, RUN/mixing.json and lai-report; per-arm sequence counts equal
  the ledger's; the weights move towards the group the val set stands for; stopped and resumed
  equals the uninterrupted run (ledger, trajectory).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from support.prep import prep
from support.train import CONFIG, ledger, run_train, scalars

SPAM = "casino bonus jackpot spins poker deposit slots winner".split()
PROSE = "theorem lemma proof integral matrix vector eigenvalue space".split()


def write_corpus(path: Path, n: int, kinds=(SPAM, PROSE), seed: int = 0) -> list[int]:
    """`n` JSON-lines documents alternating between the kinds; each document's kind."""
    rng = np.random.default_rng(seed)
    kind = [i % len(kinds) for i in range(n)]
    with open(path, "w") as f:
        for i, k in enumerate(kind):
            words = rng.choice(kinds[k], size=int(rng.integers(20, 50)))
            f.write(json.dumps({"text": " ".join(words) + f" the {i}"}) + "\n")
    return kind


def groups_by_line(out: Path) -> dict[int, int]:
    from pipeline.format.manifest import load_manifest
    from pipeline.format.provenance import read_docs
    return {int(r["pos"]): int(r["group"]) for e in load_manifest(out).shards
            for r in read_docs(out / e.prefix)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[int]]:
    d = tmp_path_factory.mktemp("groups")
    return d, write_corpus(d / "mix.jsonl", 400)


def test_groups_separate_kinds_deterministically(corpus, tmp_path):
    d, kind = corpus
    common = ["--source", f"web=jsonl:{d / 'mix.jsonl'}", "--vocab-size", 320, "--groups", 2,
              "--val-fraction", 0.05]
    for w in (1, 2):
        assert prep(*common, "--workers", w, "--out", tmp_path / f"w{w}") == 0
    a, b = (tmp_path / f"w{w}" for w in (1, 2))
    for p in sorted(a.glob("*.docs.npy")):                  # independent of the worker count
        assert p.read_bytes() == (b / p.name).read_bytes()
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()
    got = groups_by_line(a)
    assert len(got) == len(kind)
    pairs = np.array([(kind[line - 1], g) for line, g in got.items()])
    purity = max(np.mean(pairs[:, 0] == pairs[:, 1]), np.mean(pairs[:, 0] != pairs[:, 1]))
    assert purity >= 0.98
    from pipeline.format.manifest import load_manifest
    m = load_manifest(a)
    info = m.groups["web"]
    assert info["k"] == 2 and info["seed"] == 0
    assert sum(info["train_docs"]) == sum(e.num_docs for e in m.shards_of("train"))
    assert sum(info["train_tokens"]) == sum(e.num_tokens for e in m.shards_of("train"))
    spam = int(pairs[pairs[:, 0] == 0, 1][0])               # the group of the spam documents
    assert set(info["terms"][spam]) <= set(SPAM) and set(info["terms"][1 - spam]) <= set(PROSE)
    assert json.loads(json.dumps(m.to_json())) == json.loads((a / "manifest.json").read_text())
    parted = tmp_path / "parted"                             # partitioned: the same groups
    assert prep("tokenizer", *common, "--out", parted) == 0
    for k in (0, 1):
        assert prep(*common, "--num-parts", 2, "--part", k, "--out", parted) == 0
    assert prep("merge", parted) == 0
    assert groups_by_line(parted) == got and load_manifest(parted).groups == m.groups
    # another seed: its own (still deterministic) fit, recorded
    assert prep(*common, "--seed", 3, "--out", tmp_path / "s3") == 0
    assert load_manifest(tmp_path / "s3").groups["web"]["seed"] == 3
    # without --groups, nothing changes: no groups in the manifest, 20-byte provenance rows
    assert prep(*common[:4], "--val-fraction", 0.05, "--out", tmp_path / "plain") == 0
    assert "groups" not in json.loads((tmp_path / "plain" / "manifest.json").read_text())
    from pipeline.format.provenance import DOCS, read_docs
    assert read_docs(tmp_path / "plain" / "web-train-00000").dtype == DOCS
    from pipeline.data import PackedDataset
    from pipeline.errors import UserError
    with pytest.raises(UserError, match=r"plain/manifest.json: source 'web' has no groups"):
        PackedDataset([(tmp_path / "plain", 1.0)], 32, mixing=True, groups=True)
    ds = PackedDataset([(a, 3.0)], 32, mixing=True, groups=True)   # arms: the groups, by tokens
    assert ds.weights == pytest.approx([3.0 * t / sum(info["train_tokens"]) for t in info["train_tokens"]])
    assert ds.num_docs == [sum(e.num_docs for e in m.shards_of("train")), 0]   # memory: one table
    group_of = {(e.prefix, i): int(r["group"]) for e in m.shards_of("train")
                for i, r in enumerate(read_docs(a / e.prefix))}
    for seq_id in range(200):                        # an arm's samples are its group's documents
        arm = int(ds.source_of([seq_id])[0])
        assert {group_of[(sp.shard, sp.doc)] for sp in ds.locate(seq_id)} == {arm}
        assert {k[0] for k in ds.document_keys(seq_id)} == {0}


def run_args(data: Path, val: Path, run: Path, steps: int) -> list[str]:
    return [str(CONFIG), f"run.out_dir={run}", f"data.sources=[{{path: '{data}', weight: 1.0}}]",
            f"data.val_sources=[{{path: '{val}', weight: 1.0}}]", "data.seq_len=32",
            "model.n_layer=2", "model.hidden=64", "model.n_head=2", "train.micro_batch=8",
            "train.global_batch=0", "train.steps=8", f"train.steps={steps}", "train.lr=1e-2",
            "train.schedule=constant", "train.warmup_steps=2", "train.eval_every=0",
            "lai.filter.kind=none", "lai.mixing.kind=value", "lai.mixing.groups=true", "lai.score.reference=val",
            "lai.warmup_steps=1", "lai.mixing.every=2", "lai.mixing.eta=2.0", "lai.mixing.ema=0.5",
            "log.every=1", "log.histogram_every=0", "run.save_every=4"]


def train(data: Path, val: Path, run: Path, steps: int) -> str:
    p = run_train(run_args(data, val, run, steps), ranks=1)
    return p.stdout + p.stderr


@pytest.mark.slow
def test_mixing_over_groups_moves_to_the_val_group_and_resumes(corpus, tmp_path):
    d, _ = corpus
    data, val = tmp_path / "data", tmp_path / "val"
    assert prep("--source", f"web=jsonl:{d / 'mix.jsonl'}", "--vocab-size", 320, "--groups", 2,
                "--out", data) == 0
    write_corpus(tmp_path / "prose.jsonl", 80, kinds=(PROSE,), seed=1)
    assert prep("--source", f"prose=jsonl:{tmp_path / 'prose.jsonl'}", "--tokenizer",
                f"spm:{data / 'tokenizer.model'}", "--val-fraction", 0.5, "--out", val) == 0
    straight, split = tmp_path / "straight", tmp_path / "split"
    out = train(data, val, straight, 8)
    train(data, val, split, 4)
    assert "resumed from" in train(data, val, split, 8)

    traj = json.loads((straight / "mixing.json").read_text())
    assert traj == json.loads((split / "mixing.json").read_text())
    la, lb = ledger(straight), ledger(split)
    assert np.array_equal(la["seq_id"], lb["seq_id"]) and np.array_equal(la["loss"], lb["loss"])

    from pipeline.format.manifest import group_label, load_manifest
    info = load_manifest(data).groups["web"]
    names = [group_label("web", g, info["terms"][g]) for g in range(2)]
    assert traj["sources"] == names                         # arms: (source, group), labelled
    shares = np.array(info["train_tokens"]) / sum(info["train_tokens"])
    np.testing.assert_allclose(traj["initial"], shares, rtol=1e-12)
    prose = next(g for g in range(2) if set(info["terms"][g]) <= set(PROSE))
    assert traj["final"][prose] > traj["initial"][prose] + 0.05, traj
    assert f"mix {names[0]} " in out or f"mix {names[1]} " in out      # the console names them
    counts = np.bincount(la["seq_id"] % 2, minlength=2)       # seq_id = k * arms + arm
    assert traj["sequences"] == counts.tolist() and counts.sum() == 8 * 8
    tb = scalars(straight)
    from pipeline.train.metrics import mixing_scalars
    tag, = mixing_scalars([names[prose]], {"sequences": [0]})     # the arm's TensorBoard tag
    assert names[prose].split()[0].replace("/", "_") in tag and dict(tb[tag])[8] == counts[prose]
    from pipeline.report.valuation import build_report
    mix = {s["source"]: s for s in build_report(straight)["mixing"]["sources"]}
    assert set(mix) == set(names) and mix[names[prose]]["served"] == pytest.approx(
        counts[prose] / counts.sum())
