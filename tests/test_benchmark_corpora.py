"""The headroom scenarios' corpora (benchmarks/headroom/corpora.py) and their ground truth
(benchmarks/headroom/scenarios.py, variants.py):

- generators are deterministic for their seed and differ across seeds;
- every profile states all five attributes of its country exactly once, in the asked version:
  the true value or the (fixed) wrong value; wrong values always differ;
- every spam line is one of the templates filled from the product, city and discount pools;
- scenarios: the oracle's sources are training sources other than the clean one, the cap admits
  them all, and every variant's overrides parse as a config with the scenario's cap; the suite
  and the levers name variants; `lai-default` is the trainer's LAI untouched and the rate-matched
  baselines follow it; the filter's batch follows train.global_batch on any rank count.
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
    from benchmarks.headroom.variants import (LEVERS, RATE_FROM, SUITE, VARIANTS, filter_batch,
                                              overrides_for)
    from pipeline.config import load_config
    assert set(SUITE) | set(LEVERS) == set(VARIANTS) and not set(SUITE) & set(LEVERS)
    assert VARIANTS["lai-default"] == ["lai.enabled=true", "lai.filter=lai"]
    assert RATE_FROM == "lai-default" in SUITE
    cpu = SIZES["cpu"]
    assert [filter_batch(cpu, n) for n in (1, 2, 4)] == [cpu["global_batch"]] * 3
    assert filter_batch({"global_batch": 16, "micro_batch": 4}, 2) == 8   # 2 micro-steps
    for sc in SCENARIOS.values():
        assert sc.harmful and set(sc.harmful) < set(sc.weights) and sc.clean not in sc.harmful
        assert sc.cap >= sc.harmful_share            # the oracle can drop every harmful sequence
        dirs = {s: tmp_path / s for s in sc.weights}
        for name in VARIANTS:
            cfg = load_config(None, overrides_for(name, VARIANTS, sc, dirs, 0.07, 16))
            if name in ("none", "ceiling"):
                assert cfg.lai.filter == "none"
            elif name != "oracle@rate":
                assert cfg.lai.max_exclude_frac == sc.cap
            if name.startswith("oracle"):
                assert cfg.lai.oracle_sources == list(sc.harmful)
        ceiling = load_config(None, overrides_for("ceiling", VARIANTS, sc, dirs, 0.07, 16))
        assert [s.path for s in ceiling.data.sources] == [str(dirs[sc.clean])]
        at_rate = load_config(None, overrides_for("oracle@rate", VARIANTS, sc, dirs, 0.07, 16))
        assert int(at_rate.lai.max_exclude_frac * 16) == 1            # round(0.07 * 16)
