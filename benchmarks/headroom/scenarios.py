"""Sizes (model, run and corpus scale per machine kind) and the scenarios: a training mix of
generated or shipped sources, the harmful ones, the clean one (its val split is the val set)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from benchmarks.headroom import corpora as K

# --------------------------------------------------------------------------- sizes

SIZES = {
    # 1 process per run, 2 runs at once on 2 cores: ~20-60 CPU s a run (see docs/RESULTS.md)
    "cpu": {"n_layer": 2, "hidden": 64, "n_head": 2, "seq_len": 64, "global_batch": 16,
            "micro_batch": 16,
            "steps": 300, "lr": 5e-3, "min_lr": 2e-4, "warmup": 20, "lai_warmup": 20,
            "eval_every": 25, "eval_batches": 8, "nproc": 1, "jobs": 2, "precision": "fp32",
            "scale": {"spam_entities": 12, "spam_clean_docs": 500, "spam_docs": 2000,
                      "domain_entities": 24, "domain_docs": 2000, "code_chars": 1_500_000,
                      "conflict_entities": 12, "conflict_clean_docs": 1500, "conflict_docs": 500}},
    # one GPU per run, GPT-2-small-ish width; more countries and documents so the facts stay
    # hard for the larger model (not yet measured: no GPU was available to this work)
    "gpu": {"n_layer": 8, "hidden": 512, "n_head": 8, "seq_len": 256, "global_batch": 64,
            "micro_batch": 64,
            "steps": 3000, "lr": 1e-3, "min_lr": 1e-4, "warmup": 200, "lai_warmup": 100,
            "eval_every": 100, "eval_batches": 16, "nproc": 1, "jobs": 1, "precision": "bf16",
            "scale": {"spam_entities": 3000, "spam_clean_docs": 60_000, "spam_docs": 240_000,
                      "domain_entities": 3000, "domain_docs": 200_000, "code_chars": 40_000_000,
                      "conflict_entities": 3000, "conflict_clean_docs": 150_000,
                      "conflict_docs": 50_000}},
}

# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    story: str                                   # what it stands for
    weights: dict[str, float]                    # training sources -> mixing weights
    harmful: tuple[str, ...]                     # what the oracle drops (lai.oracle_sources)
    clean: str                                   # the ceiling's source; its val split = val set
    cap: float                                   # exclusion cap of every filter
    vocab: int
    documents: Callable[[dict], dict[str, list[str]]]   # size scale -> {source: documents}
    train: dict = field(default_factory=dict)    # per-scenario changes to the size's settings

    @property
    def harmful_share(self) -> float:
        return sum(self.weights[s] for s in self.harmful) / sum(self.weights.values())


def _spam(n: dict) -> dict[str, list[str]]:
    t = K.fact_table(n["spam_entities"], seed=0)
    return {"facts": K.profile_docs(t, n["spam_clean_docs"], "true", seed=1),
            "spam": K.spam_docs(n["spam_docs"], seed=2)}


def _domain(n: dict) -> dict[str, list[str]]:
    t = K.fact_table(n["domain_entities"], seed=1)
    return {"facts": K.profile_docs(t, n["domain_docs"], "true", seed=3),
            "code": K.code_docs(n["code_chars"]), "reference": K.reference_docs()}


def _conflict(n: dict) -> dict[str, list[str]]:
    t = K.fact_table(n["conflict_entities"], seed=2)
    return {"facts": K.profile_docs(t, n["conflict_clean_docs"], "true", seed=4),
            "myths": K.profile_docs(t, n["conflict_docs"], "wrong", seed=5)}


SCENARIOS = {s.name: s for s in (
    Scenario("spam", "Repeated low-loss harm: templated near-duplicate spam",
             "Facts about made-up countries mixed 2:3 with templated advertising pages (five "
             "templates filled with a random product, city and discount, over and over): "
             "near-duplicates of each other, lower in loss than the facts, so per-sequence loss "
             "cannot flag them; they teach nothing the validation set asks for. Validation: "
             "held-out fact pages.",
             {"facts": 1.0, "spam": 1.5}, ("spam",), "facts", 0.7, 512, _spam),
    Scenario("domain", "Domain targeting: the target is a quarter of the mix",
             "Continued pretraining towards a knowledge domain: country facts are 25% of the mix, "
             "the rest Python standard library code and the Python language reference (prose). "
             "Validation: held-out documents of the target domain. The oracle drops every "
             "off-target sequence.",
             {"facts": 1.0, "code": 1.5, "reference": 1.5}, ("code", "reference"), "facts", 0.8,
             1024, _domain),
    Scenario("conflict", "Conflicting content: a consistent myth in 25% of the documents",
             "A quarter of the documents state a wrong value for every fact, the same wrong value "
             "each time (label noise in text form); the rest state the truth. Validation: held-out "
             "documents stating the truth.",
             {"facts": 3.0, "myths": 1.0}, ("myths",), "facts", 0.3, 512, _conflict),
)}
