"""Sizes (model, run and corpus scale per machine kind) and the scenarios: a training mix of
generated or shipped sources, the harmful ones, the clean one (its val split is the val set), or
a val set drawn from every training source in its training proportion (`val="mix"`)."""
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
                      "conflict_entities": 12, "conflict_clean_docs": 1500, "conflict_docs": 500,
                      "inside_entities": 12, "inside_clean_docs": 3000, "inside_harm_docs": 2000,
                      "packed_docs": 2500,
                      "universal_entities": 24, "universal_docs": 2000}},
    # one GPU per run, GPT-2-small-ish width; more countries and documents so the facts stay
    # hard for the larger model (not yet measured: no GPU was available to this work)
    "gpu": {"n_layer": 8, "hidden": 512, "n_head": 8, "seq_len": 256, "global_batch": 64,
            "micro_batch": 64,
            "steps": 3000, "lr": 1e-3, "min_lr": 1e-4, "warmup": 200, "lai_warmup": 100,
            "eval_every": 100, "eval_batches": 16, "nproc": 1, "jobs": 1, "precision": "bf16",
            "scale": {"spam_entities": 3000, "spam_clean_docs": 60_000, "spam_docs": 240_000,
                      "domain_entities": 3000, "domain_docs": 200_000, "code_chars": 40_000_000,
                      "conflict_entities": 3000, "conflict_clean_docs": 150_000,
                      "conflict_docs": 50_000, "inside_entities": 3000,
                      "inside_clean_docs": 600_000, "inside_harm_docs": 400_000,
                      "packed_docs": 500_000,
                      "universal_entities": 3000, "universal_docs": 200_000}},
}



def with_steps(size: dict, steps: int) -> dict:
    """`size` training `steps` steps, its warmups and eval cadence scaled alike."""
    f = steps / size["steps"]
    return {**size, "steps": steps,
            **{k: max(1, min(steps - 1, round(size[k] * f)))
               for k in ("warmup", "lai_warmup", "eval_every")}}

# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    story: str                                   # what it stands for
    weights: dict[str, float]                    # training sources -> mixing weights
    harmful: tuple[str, ...]                     # what the oracle drops (lai.filter.oracle_sources)
    clean: str                                   # the ceiling's source; its val split = val set
    cap: float                                   # exclusion cap of every filter
    vocab: int
    documents: Callable[[dict], dict[str, list[str]]]   # size scale -> {part: documents}
    train: dict = field(default_factory=dict)    # per-scenario changes to the size's settings
    length: int = 1                              # runs train this many times the size's steps
    #   (warmups and eval cadence scaled alike): harm whose cost shows only near convergence
    parts: dict[str, tuple[str, ...]] = field(default_factory=dict)   # a prepared source ->
    #   the named document sets (lai-prep --source NAME=...) packed into it; default: its own
    packed: bool = False                         # documents shorter than a sequence: the
    #   per-document rows (lai.unit=document) apply
    refill: bool = False                         # the selection rows at equal trained tokens
    #   (lai.select.kind=oversample x2: oracle, loss, LAI) apply
    groups: int = 0                              # lai-prep --groups K for the training sources:
    #   the group-mixing row (lai.mixing.groups) applies
    only: tuple[str, ...] = ()                   # if set, the only rows besides the references
    val: str = "clean"                           # clean: the clean source's val split; mix:
    #   every training source's val split in its training proportion (no ceiling, no oracle)

    def parts_of(self, source: str) -> tuple[str, ...]:
        return self.parts.get(source, (source,))

    @property
    def prepared(self) -> list[str]:
        """Every prepared source: the training sources, and the clean one if it is not one."""
        return list(self.weights) + ([self.clean] if self.clean not in ("", *self.weights) else [])

    @property
    def applies(self) -> set[str]:
        """The reference rows this scenario has: `ceiling` needs a clean source, `oracle` (and
        `oracle@rate`) harmful data."""
        return {*(("ceiling",) if self.clean else ()),
                *(("oracle", "oracle@rate") if self.harmful else ()),
                *(("oracle-doc", "lai-doc", "lai-doc-raw") if self.packed else ()),
                *(("oracle-refill", "loss-refill", "select-lai", "weight-lai") if self.refill
                  else ()),
                *(("mixing-groups", "bandit-groups") if self.groups else ())}

    @property
    def oracle(self) -> str:
        """The oracle the headroom and every share are read against: per document where
        documents are packed (masking a harmful document beats dropping its sequence)."""
        return "oracle-doc" if self.packed else "oracle"

    @property
    def harmful_share(self) -> float:
        """The weight share of the training sources that hold nothing but harmful documents."""
        pure = [s for s in self.weights if set(self.parts_of(s)) <= set(self.harmful)]
        return sum(self.weights[s] for s in pure) / sum(self.weights.values())


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


def _inside(n: dict) -> dict[str, list[str]]:
    t = K.fact_table(n["inside_entities"], seed=3)
    c, h = n["inside_clean_docs"], n["inside_harm_docs"]
    return {"web": K.fact_docs(t, c, "true", seed=6),
            "web_spam": K.spam_docs(h, seed=7, lines=(1, 1)),
            "forum": K.fact_docs(t, c, "true", seed=8),
            "forum_myths": K.fact_docs(t, h, "wrong", seed=9),
            "clean": K.fact_docs(t, c, "true", seed=10)}


def _packed(n: dict) -> dict[str, list[str]]:
    t, k = K.fact_table(n["inside_entities"], seed=5), n["packed_docs"]
    return {"web": K.fact_docs(t, k, "true", seed=13), "web_myths": K.fact_docs(t, k, "wrong", seed=14),
            "forum": K.fact_docs(t, k, "true", seed=15),
            "forum_myths": K.fact_docs(t, k, "wrong", seed=16),
            "clean": K.fact_docs(t, k, "true", seed=17)}


def _blend(n: dict) -> dict[str, list[str]]:
    t = K.fact_table(n["domain_entities"], seed=1)
    return {"facts": K.profile_docs(t, n["domain_docs"], "true", seed=3),
            "code": K.code_docs(n["code_chars"]), "reference": K.reference_docs(),
            "clean": K.profile_docs(t, n["domain_docs"] // 2, "true", seed=12)}


def _universal(n: dict) -> dict[str, list[str]]:
    t = K.fact_table(n["universal_entities"], seed=4)
    return {"facts": K.profile_docs(t, n["universal_docs"], "true", seed=11),
            "code": K.code_docs(n["code_chars"]), "reference": K.reference_docs()}


SCENARIOS = {s.name: s for s in (
    Scenario("spam", "Repeated low-loss harm: templated near-duplicate spam",
             "Facts about made-up countries mixed 2:3 with templated advertising pages (five "
             "templates filled with a random product, city and discount, over and over): "
             "near-duplicates of each other, lower in loss than the facts, so per-sequence loss "
             "cannot flag them; they teach nothing the validation set asks for. Validation: "
             "held-out fact pages.",
             {"facts": 1.0, "spam": 1.5}, ("spam",), "facts", 0.7, 512, _spam, refill=True),
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
             {"facts": 3.0, "myths": 1.0}, ("myths",), "facts", 0.3, 512, _conflict,
             refill=True),
    Scenario("inside", "Harm inside every source: spam and myths packed among clean documents",
             "Two declared sources, each 40% harmful documents among true facts: `web` holds "
             "one-line spam ads, `forum` myths (the consistent wrong value of a fact). Every "
             "document is a sentence or two, shorter than a sequence, so several are packed into "
             "each sequence, harmful and clean together. No declared source is pure: mixing over "
             "them cannot isolate the harm. Validation: held-out true facts; `ceiling` trains on "
             "true facts alone; `oracle-doc` masks the harmful documents' tokens out of the loss "
             "(lai.unit=document), `lai-doc` values and drops documents instead of sequences.",
             {"web": 1.0, "forum": 1.0}, ("web_spam", "forum_myths"), "clean", 0.5, 512,
             _inside, parts={"web": ("web", "web_spam"), "forum": ("forum", "forum_myths")},
             packed=True),
    Scenario("packed", "Contradicting facts inside every source, packed",
             "Two declared sources, `web` and `forum`, each half true facts and half myths (the "
             "consistent wrong value of each fact), every document a sentence or two, packed "
             "several to a sequence: harm that no declared source isolates and no sequence "
             "holds alone. Validation: held-out true facts; `ceiling` trains on true facts "
             "alone; `oracle-doc` masks exactly the myths' tokens (lai.unit=document). Runs "
             "train 5x the size's steps: the myths' cost shows only once the facts are learnt "
             "(at 1x and 3x the oracle's gain was 1.0x and 1.9x the seed noise).",
             {"web": 1.0, "forum": 1.0}, ("web_myths", "forum_myths"), "clean", 0.6, 512, _packed,
             parts={"web": ("web", "web_myths"), "forum": ("forum", "forum_myths")}, packed=True,
             length=5, only=("ceiling", "oracle", "oracle-doc", "lai-filter", "lai-doc",
                             "mixing", "bandit")),
    Scenario("blend", "Domain targeting inside one source: no declared domains",
             "The documents of `domain` (country facts, standard library code, the Python "
             "language reference) prepared as one source, `web`, with lai-prep --groups 8 "
             "(hashed n-gram TF-IDF + k-means): nobody declared the domains, so mixing can only "
             "act on the groups it finds (`mixing-groups`: lai.mixing.groups). Validation: "
             "held-out fact pages; `ceiling` trains on fact pages alone. Compare its share of "
             "the ceiling's gain with `mixing` over the declared sources in `domain`.",
             {"web": 1.0}, ("code", "reference"), "clean", 0.8, 1024, _blend,
             parts={"web": ("facts", "code", "reference")}, groups=8,
             only=("ceiling", "oracle", "mixing-groups", "bandit-groups")),
    Scenario("universal", "Universal: the validation set is the mix",
             "Three real sources, nothing harmful: country facts, standard library code and the "
             "Python language reference (prose). The validation set is drawn from every source "
             "in its training proportion, and each source's own val loss is reported. There is "
             "no harm to remove: the do-no-harm check, where anything shipped as a default must "
             "end within noise of `none`. No ceiling, no oracle, no headroom by construction.",
             {"facts": 1.0, "code": 1.0, "reference": 1.0}, (), "", 0.1, 1024, _universal,
             val="mix"),
)}
