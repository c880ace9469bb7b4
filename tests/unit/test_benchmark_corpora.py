"""The headroom scenarios' corpora (benchmarks/headroom/corpora.py) and their ground truth
(benchmarks/headroom/scenarios.py, variants.py):

- generators are deterministic for their seed and differ across seeds;
- every profile states all five attributes of its country exactly once, in the asked version:
  the true value or the (fixed) wrong value; wrong values always differ;
- every spam line is one of the templates filled from the product, city and discount pools;
- scenarios: the oracle's sources are training sources other than the clean one (or, with harm
  inside every source, harmful parts packed into every training source, none pure), the cap
  admits them all, and every variant's overrides parse as a config with the scenario's cap; the
  suite and the levers name variants; `lai-filter` is the trainer's LAI untouched and the
  rate-matched baselines follow it; the filter's batch follows train.global_batch on any rank
  count; the universal scenario validates on every source in its training proportion;
- the static grid (5-8 mixtures) and the suite's plumbing with the trainer stubbed out: which
  runs go (no oracle / ceiling without harm / a clean source; the grid on the first seed only,
  `static-tuned` on the others with the grid's winner), and the rows' new columns.
"""
from __future__ import annotations

import re

import pytest

from benchmarks.headroom import corpora as K


def _statements(doc: str) -> list[tuple[str, str, str]]:
    """(entity, attribute, value) of every fact a profile document states."""
    name, val = r"([A-Z][a-z]+)", r"(\w+)"
    out = []
    for attr, phrases in K.PHRASES.items():
        for ph in phrases:
            pat = re.escape(ph).replace(r"\{e\}", "{e}").replace(r"\{v\}", "{v}")
            pat = pat.replace("{e}", name, 1).replace("{v}", val, 1)
            order = (0, 1) if ph.index("{e}") < ph.index("{v}") else (1, 0)
            for m in re.finditer(pat, doc):
                out.append((m.group(1 + order[0]), attr, m.group(1 + order[1])))
    record = name + ": " + "; ".join(f"{K.RECORD[a]} {val}" for a in K.ATTRIBUTES) + r"\."
    for m in re.finditer(record, doc):
        out += [(m.group(1), a, m.group(2 + i)) for i, a in enumerate(K.ATTRIBUTES)]
    return out


def test_fact_table_and_profiles_are_deterministic():
    assert K.fact_table(12, seed=3) == K.fact_table(12, seed=3)
    assert K.fact_table(12, seed=3) != K.fact_table(12, seed=4)
    t = K.fact_table(12, seed=3)
    assert len(set(t["entities"])) == 12
    assert K.profile_docs(t, 20, "true", seed=1) == K.profile_docs(t, 20, "true", seed=1)
    assert K.profile_docs(t, 20, "true", seed=1) != K.profile_docs(t, 20, "true", seed=2)
    assert K.reference_docs() == K.reference_docs() and len(K.reference_docs()) > 100
    code = K.code_docs(200_000)
    assert code == K.code_docs(200_000) and 200_000 <= sum(map(len, code)) < 260_000


@pytest.mark.parametrize("version", K.VERSIONS)
def test_profiles_state_the_version_asked(version):
    t = K.fact_table(10, seed=0)
    for e in t["entities"]:
        for a in K.ATTRIBUTES:
            assert t["wrong"][e][a] != t["true"][e][a]
    docs = K.profile_docs(t, 40, version, seed=5)
    for doc in docs:
        facts = _statements(doc)
        profiles = doc.split("\n")
        assert len(profiles) == 3 and len(facts) == 3 * len(K.ATTRIBUTES), doc
        assert len({(e, a) for e, a, _ in facts}) == len(facts), doc      # each fact once
        for e, a, v in facts:
            assert v == t[version][e][a], (doc, e, a, v)


def test_spam_lines_are_filled_templates():
    docs = K.spam_docs(60, seed=3)
    assert docs == K.spam_docs(60, seed=3) and docs != K.spam_docs(60, seed=4)
    fill = {"p": "(?P<p>[a-z]+)", "P": "(?P<P>[A-Z][a-z]+)", "c": "(?P<c>[A-Z][a-z]+)",
            "d": "(?P<d>[0-9]+)"}
    pats = []
    for t in K.SPAM:
        pat, seen = re.escape(t), set()
        for key in re.findall(r"\{(\w)\}", t):   # a slot again = a backreference
            pat = pat.replace(re.escape("{" + key + "}"),
                              f"(?P={key})" if key in seen else fill[key], 1)
            seen.add(key)
        pats.append(re.compile(pat))
    for doc in docs:
        lines, pos = 0, 0
        while pos < len(doc):                       # lines joined by one space
            m = next((m for p in pats if (m := p.match(doc, pos))), None)
            assert m is not None, (doc[pos:], doc)
            g = m.groupdict()
            assert g.get("P", g["p"].capitalize()) == g["p"].capitalize(), doc
            assert g["p"] in K.PRODUCTS and g["c"] in K.CITIES, doc
            assert int(g["d"]) in range(10, 95, 5), doc
            lines += 1
            pos = m.end() + 1
        assert 3 <= lines <= 6, doc


def test_scenarios_ground_truth_and_variant_overrides(tmp_path):
    from benchmarks.headroom.scenarios import SCENARIOS, SIZES
    from benchmarks.headroom.variants import (LEVERS, RATE_FROM, SUITE, VARIANTS, applies,
                                              filter_batch, grid, overrides_for)
    from pipeline.config import load_config

    def load(overrides):           # the suite's base config has val data (data.val_sources)
        return load_config(None, [f"data.val_sources=[{{path: '{tmp_path}'}}]", *overrides])
    assert set(SUITE) | set(LEVERS) == set(VARIANTS) and not set(SUITE) & set(LEVERS)
    assert VARIANTS["lai-filter"] == ["lai.enabled=true", "lai.filter.kind=lai"]
    assert RATE_FROM == "lai-filter" in SUITE
    cpu = SIZES["cpu"]
    assert [filter_batch(cpu, n) for n in (1, 2, 4)] == [cpu["global_batch"]] * 3
    assert filter_batch({"global_batch": 16, "micro_batch": 4}, 2) == 8   # 2 micro-steps
    for sc in SCENARIOS.values():
        parts = {p for s in sc.weights for p in sc.parts_of(s)}
        assert set(sc.harmful) < parts and sc.clean not in sc.harmful
        assert sc.cap >= sc.harmful_share            # the oracle can drop every harmful sequence
        dirs = {s: tmp_path / s for s in sc.prepared}
        for name in VARIANTS:
            if not applies(name, sc):
                continue
            cfg = load(overrides_for(name, VARIANTS, sc, dirs, 0.07, 16, grid(sc)[0]))
            if name in ("none", "ceiling"):
                assert cfg.lai.filter.kind == "none"
            elif name != "oracle@rate":
                assert cfg.lai.filter.max_exclude_frac == sc.cap
            if name.startswith("oracle"):
                assert cfg.lai.filter.oracle_sources == list(sc.harmful)
        if sc.clean:
            ceiling = load(overrides_for("ceiling", VARIANTS, sc, dirs, 0.07, 16))
            assert [s.path for s in ceiling.data.sources] == [str(dirs[sc.clean])]
        if sc.harmful:
            at_rate = load(overrides_for("oracle@rate", VARIANTS, sc, dirs, 0.07, 16))
            assert int(at_rate.lai.filter.max_exclude_frac * 16) == 1            # round(0.07 * 16)
        if not applies("static-tuned", sc):
            assert sc.only and "static-tuned" not in sc.only
            continue
        mixes = grid(sc)
        assert 5 <= len(mixes) <= 8 and dict(zip(sc.weights, [w / sum(sc.weights.values())
                                                              for w in sc.weights.values()])) in mixes
        for i, mix in enumerate(mixes):
            assert list(mix) == list(sc.weights) and sum(mix.values()) == pytest.approx(1.0)
            cfg = load(overrides_for(f"grid{i}", VARIANTS, sc, dirs, 0.07, 16))
            assert [(s.path, s.weight) for s in cfg.data.sources] == \
                   [(str(dirs[s]), pytest.approx(w)) for s, w in mix.items()]
        tuned = load(overrides_for("static-tuned", VARIANTS, sc, dirs, 0.07, 16,
                                                mixes[-1]))
        assert [s.weight for s in tuned.data.sources] == pytest.approx(list(mixes[-1].values()))
        assert not tuned.lai.enabled and not tuned.lai.mixing.on
    blend = SCENARIOS["blend"]
    assert blend.groups and applies("mixing-groups", blend) and not applies("lai-filter", blend)
    assert load(overrides_for("mixing-groups", VARIANTS, blend, {}, 0.0, 16)).lai.mixing.groups
    inside, universal = SCENARIOS["inside"], SCENARIOS["universal"]
    assert inside.harmful_share == 0 and all(set(inside.parts_of(s)) & set(inside.harmful) and
                                             set(inside.parts_of(s)) - set(inside.harmful)
                                             for s in inside.weights)
    assert inside.prepared == ["web", "forum", "clean"] and inside.applies == {
        "ceiling", "oracle", "oracle@rate", "oracle-doc", "lai-doc", "lai-doc-raw"}
    assert inside.oracle == "oracle-doc" and SCENARIOS["spam"].oracle == "oracle"
    for name in ("oracle-refill", "loss-refill", "select-lai"):
        pick = load(overrides_for(name, VARIANTS, SCENARIOS["spam"], {}, 0.0, 16))
        assert pick.lai.select.kind == "oversample" and pick.lai.select.factor == 2.0
        assert applies(name, SCENARIOS["conflict"]) and not applies(name, inside)
    for name in ("oracle-doc", "lai-doc", "lai-doc-raw"):
        doc = load(overrides_for(name, VARIANTS, inside, {}, 0.0, 16))
        assert doc.lai.unit == "document" and not applies(name, SCENARIOS["spam"])
    assert not universal.harmful and universal.val == "mix" and universal.applies == set()
    from benchmarks.headroom.runs import base_config
    cfg = base_config(universal, cpu, {s: tmp_path / s for s in universal.prepared})
    assert cfg["data"]["val_sources"] == cfg["data"]["sources"] and len(cfg["data"]["sources"]) == 3
    cfg = load(overrides_for("bandit", VARIANTS, universal, {}, 0.0, 16))
    assert cfg.lai.mixing.on and cfg.lai.mixing.kind == "loss_bandit" and not cfg.lai.enabled
    assert load(overrides_for("mixing-avg", VARIANTS, universal, {}, 0.0, 16)
                       ).lai.mixing.average


def test_short_documents_for_packing():
    """Scenario 4's documents are a sentence or two (several per 64-token sequence) and its
    spam one line; its parts are the sources' parts plus the clean one."""
    t = K.fact_table(10, seed=0)
    docs = K.fact_docs(t, 200, "wrong", seed=1)
    assert docs == K.fact_docs(t, 200, "wrong", seed=1) and max(map(len, docs)) < 160
    for doc in docs:
        facts = _statements(doc)
        assert 1 <= len(facts) <= 2 and all(v == t["wrong"][e][a] for e, a, v in facts), doc
    assert all(d.count("!") + d.count(".") <= 3 for d in K.spam_docs(50, seed=2, lines=(1, 1)))
    from benchmarks.headroom.scenarios import SCENARIOS
    sc = SCENARIOS["inside"]
    small = {"inside_entities": 6, "inside_clean_docs": 30, "inside_harm_docs": 20}
    docs = sc.documents(small)
    assert set(docs) == {p for s in sc.prepared for p in sc.parts_of(s)}
    assert [len(docs[p]) for p in ("web", "web_spam", "forum_myths", "clean")] == [30, 20, 20, 30]


def test_suite_plumbing_with_the_trainer_stubbed(tmp_path, monkeypatch):
    """run_all with runs and analyses stubbed: the universal scenario runs no oracle or
    ceiling; the grid runs on seed 0 only and its best mixture (lowest val loss) becomes
    `static-tuned` on seed 0 and is run on seeds 1-2; the rows carry compute (wall / none's),
    reach as a share of the steps, tokens trained and per-source val loss."""
    from benchmarks.headroom import runs
    from benchmarks.headroom.analysis import summarise
    from benchmarks.headroom.scenarios import SCENARIOS
    from benchmarks.headroom.variants import VARIANTS, grid, sources_override
    sc = SCENARIOS["universal"]
    best = 3
    launched = []

    def run_train(config, run_dir, seed, overrides, nproc):
        launched.append((run_dir.parent.name, seed, overrides))
        cpu = 20.0 if run_dir.parent.name == "bandit" else 10.0
        return {"wall_s": 99.0, "cpu_s": cpu}             # compute: CPU, not wall, seconds

    def analysis(run_dir, sc_, warmup):
        name, seed = run_dir.parent.name, int(run_dir.name[4:])
        final = 2.0 - (0.5 if name == f"grid{best}" else 0.1 * (name == "static-tuned"))
        return {"final_val_loss": final + 0.01 * seed, "val_steps": [50, 100],
                "val_loss": [3.0, final + 0.01 * seed], "excluded": 0.0,
                "excluded_by_source": {}, "val_by_source": {"code": final},
                "tokens_trained": 1000, "docs_per_seq": 1.5, "harmful_tokens": 0.0,
                "auroc": float("nan"), "precision": float("nan"), "loss_auroc": float("nan")}
    monkeypatch.setattr(runs, "run_train", run_train)
    monkeypatch.setattr(runs, "cached_analysis", analysis)
    plan = runs.Plan(sc, {s: tmp_path / s for s in sc.prepared}, tmp_path / "c.yaml", {
        "lai_warmup": 1}, 16, {})
    names = ["none", "oracle", "ceiling", "bandit", "static-tuned"]
    results, _, _, grids = runs.run_all({"universal": plan}, names, VARIANTS, [0, 1, 2],
                                        tmp_path, 1, 1)
    got = sorted((n, s) for n, s, _ in launched)
    n_grid = len(grid(sc))
    assert got == sorted([("none", k) for k in range(3)] + [("bandit", k) for k in range(3)] +
                         [(f"grid{i}", 0) for i in range(n_grid)] + [("static-tuned", 1),
                                                                      ("static-tuned", 2)])
    assert grids["universal"]["weights"] == grid(sc)[best]
    tuned_ov = next(ov for n, _, ov in launched if n == "static-tuned")
    assert f"data.sources={sources_override(grid(sc)[best], plan.dirs)}" in tuned_ov
    assert set(results["universal"]) == {"none", "bandit", "static-tuned"}
    rows = {r["variant"]: r for r in summarise(results["universal"])[0]}
    assert rows["bandit"]["compute"] == 2.0 and rows["none"]["compute"] == 1.0
    assert rows["static-tuned"]["final"] == pytest.approx((1.5 + 1.91 + 1.92) / 3)  # grid3 on 0
    assert rows["static-tuned"]["reach_share"] == 1.0 and rows["none"]["reach_share"] == 1.0
    assert rows["none"]["tokens_trained"] == 1000 and rows["none"]["val_by_source"] == {"code": 2.0}
    from benchmarks.headroom.report import scenario_section
    text = scenario_section(sc, {"data": "d", "train": {}}, list(rows.values()),
                            summarise(results["universal"])[1], float("nan"), "cpu",
                            grids["universal"])
    assert "2.00x" in text and "val code" in text and "`static-tuned`: the best of" in text

