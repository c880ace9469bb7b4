"""Document generators of the headroom scenarios (scenarios.py): generated text, or text
that every CPython ships (its standard library's .py files and `pydoc_data.topics`), so that no
download is needed.

Generators (all deterministic for their seed):

    reference_docs   pydoc_data.topics (the language reference prose behind `help()`), cut at
                     blank lines into documents of ~1 KB
    code_docs        standard library modules (no tests, no pydoc_data), cut at blank lines into
                     documents of ~2 KB
    fact_table       made-up countries with five attributes (capital, flag colour, national
                     animal, language, founding year): the true value of each, and one fixed
                     wrong value per (country, attribute), the same every time: a consistent myth
    profile_docs     documents of three country profiles stating every attribute in one version:
                     "true" or "wrong" (the myth); half in sentences (random phrasing and order, a
                     filler sentence), half as a compact record line
    fact_docs        short documents (a sentence or two about one country, in one version): several
                     fit in one training sequence
    spam_docs        templated advertising pages: 3 to 6 lines (or as asked), each one of five
                     templates filled with a random product, city and discount: near-duplicates

`write_jsonl(docs, path)` writes a source for `lai-prep --source NAME=jsonl:PATH`.
"""
from __future__ import annotations

import json
import random
import sysconfig
from pathlib import Path

from pipeline.fsutil import atomic_write

# --------------------------------------------------------------------------- shipped text


def _split_blocks(text: str, target: int) -> list[str]:
    """Cut text at blank lines into pieces of about `target` characters (never mid-paragraph)."""
    out, cur = [], []
    size = 0
    for block in text.split("\n\n"):
        cur.append(block)
        size += len(block) + 2
        if size >= target:
            out.append("\n\n".join(cur).strip())
            cur, size = [], 0
    if cur and "\n\n".join(cur).strip():
        out.append("\n\n".join(cur).strip())
    return [d for d in out if d]


def reference_docs(target_chars: int = 1000) -> list[str]:
    """The Python language reference sections that `help()` shows (pydoc_data.topics), in
    sorted topic order, cut into documents of about `target_chars`."""
    from pydoc_data.topics import topics
    return [d for name in sorted(topics) for d in _split_blocks(topics[name], target_chars)]


def code_docs(max_chars: int, target_chars: int = 2000) -> list[str]:
    """Standard library source (sorted paths; test packages and pydoc_data left out) cut into
    documents of about `target_chars`, up to `max_chars` in total."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "pydoc_data", "dist-packages"}
    docs, total = [], 0
    for p in sorted(root.rglob("*.py")):
        if skip & set(p.relative_to(root).parts):
            continue
        for d in _split_blocks(p.read_text(encoding="utf-8", errors="replace"), target_chars):
            docs.append(d)
            total += len(d)
            if total >= max_chars:
                return docs
    return docs


# --------------------------------------------------------------------------- generated facts

_SYL = ("ka", "lo", "ri", "ven", "dor", "mi", "sa", "tul", "bar", "en", "os", "qui", "zel", "ma",
        "nor", "pa", "thi", "gu", "rem", "al", "vo", "sen", "ca", "dru", "fi", "lan", "wy", "ob")
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "orange", "purple", "grey", "brown")
ANIMALS = ("fox", "owl", "bear", "wolf", "otter", "heron", "lynx", "eagle", "horse", "seal",
           "crane", "badger", "falcon", "deer", "swan", "hare")
ATTRIBUTES = ("capital", "colour", "animal", "language", "founded")
PHRASES = {
    "capital": ("The capital of {e} is {v}.", "{e} is governed from its capital, {v}.",
                "In {e}, the capital city is {v}."),
    "colour": ("The flag of {e} is {v}.", "{e} flies a {v} flag.",
               "The colour of the flag of {e} is {v}."),
    "animal": ("The national animal of {e} is the {v}.", "{e} chose the {v} as its animal.",
               "In {e}, the {v} is the national animal."),
    "language": ("The people of {e} speak {v}.", "The language of {e} is {v}.",
                 "In {e}, most people speak {v}."),
    "founded": ("{e} was founded in {v}.", "The founding year of {e} is {v}.",
                "{e} has existed since {v}."),
}
RECORD = {"capital": "capital", "colour": "flag", "animal": "animal", "language": "language",
          "founded": "founded"}
VERSIONS = ("true", "wrong")
FILLERS = ("It is a quiet country.", "Many travellers visit it in summer.",
           "Its roads are old and narrow.", "The winters there are long.",
           "Its markets open early in the morning.", "It trades with its neighbours.")


def _names(rng: random.Random, n: int, syllables: tuple[int, int]) -> list[str]:
    out: list[str] = []
    seen = set()
    while len(out) < n:
        w = "".join(rng.choice(_SYL) for _ in range(rng.randint(*syllables))).capitalize()
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def fact_table(n_entities: int, seed: int = 0) -> dict:
    """{"entities": [...], "true": {entity: {attribute: value}}, "wrong": {...}}: each
    attribute's wrong value differs from the true one and is fixed per (entity, attribute)."""
    rng = random.Random(seed)
    entities = _names(rng, n_entities, (2, 3))
    pools = {"capital": _names(rng, 24, (2, 2)), "colour": list(COLOURS), "animal": list(ANIMALS),
             "language": [n + "ic" for n in _names(rng, 12, (1, 2))],
             "founded": [str(y) for y in range(1100, 1900, 37)]}
    true, wrong = {}, {}
    for e in entities:
        true[e] = {a: rng.choice(pools[a]) for a in ATTRIBUTES}
        wrong[e] = {a: rng.choice([v for v in pools[a] if v != true[e][a]]) for a in ATTRIBUTES}
    return {"entities": entities, "true": true, "wrong": wrong}


def profile_docs(table: dict, n_docs: int, version: str, seed: int,
                 per_doc: int = 3) -> list[str]:
    """`n_docs` documents of `per_doc` profiles each, of distinct random entities, stating all
    their attributes in `version` ("true" | "wrong"): each profile at random as sentences in
    random phrasings and order (with a filler sentence), or as a compact record line."""
    facts, rng = _facts(table, version), random.Random(seed)
    docs = []
    for _ in range(n_docs):
        parts = []
        for e in rng.sample(table["entities"], per_doc):
            if rng.random() < 0.5:
                lines = [rng.choice(PHRASES[a]).format(e=e, v=facts[e][a]) for a in ATTRIBUTES]
                lines.append(rng.choice(FILLERS))
                rng.shuffle(lines)
                parts.append(" ".join(lines))
            else:
                parts.append(f"{e}: " + "; ".join(f"{RECORD[a]} {facts[e][a]}" for a in ATTRIBUTES)
                             + ".")
        docs.append("\n".join(parts))
    return docs


def fact_docs(table: dict, n_docs: int, version: str, seed: int) -> list[str]:
    """`n_docs` short documents (a sentence or two, far shorter than a training sequence, so
    several are packed into one), each stating one or two random attributes of one random
    entity in `version` ("true" | "wrong"), in random phrasings."""
    facts, rng = _facts(table, version), random.Random(seed)

    def doc(e: str) -> str:
        return " ".join(rng.choice(PHRASES[a]).format(e=e, v=facts[e][a])
                        for a in rng.sample(ATTRIBUTES, rng.randint(1, 2)))
    return [doc(rng.choice(table["entities"])) for _ in range(n_docs)]


def _facts(table: dict, version: str) -> dict:
    """The table's {entity: {attribute: value}} of `version` ("true" | "wrong")."""
    if version not in VERSIONS:
        raise ValueError(f"version: one of {', '.join(VERSIONS)}, got {version!r}")
    return table[version]


# --------------------------------------------------------------------------- generated spam

PRODUCTS = ("watches", "sneakers", "laptops", "phones", "handbags", "sunglasses", "perfume",
            "jackets", "headphones", "tablets", "cameras", "jewelry", "vitamins", "tickets",
            "mattresses", "loans")
CITIES = ("Paris", "London", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Oslo", "Dublin",
          "Lisbon", "Athens", "Warsaw", "Zurich", "Brussels", "Amsterdam", "Helsinki")
SPAM = ("Buy cheap {p} in {c}! Best {p} deals, {d}% off today only. Call now.",
        "{P} sale in {c}: up to {d}% off all {p}. Free shipping. Order today.",
        "Looking for {p} in {c}? We have the best prices on {p}. {d}% discount, call us.",
        "Top rated {p} store in {c}. Genuine {p}, {d}% off. Limited offer!",
        "Click here for discount {p}. {c} customers save {d}%. Visit us today.")


def spam_docs(n_docs: int, seed: int, lines: tuple[int, int] = (3, 6)) -> list[str]:
    """`n_docs` advertising pages of `lines` (3 to 6) lines, each line one of the SPAM templates
    filled with a random product, city and discount (10-90% in steps of 5)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        lines_ = []
        for _ in range(rng.randint(*lines)):
            p = rng.choice(PRODUCTS)
            lines_.append(rng.choice(SPAM).format(p=p, P=p.capitalize(), c=rng.choice(CITIES),
                                                  d=rng.randrange(10, 95, 5)))
        docs.append(" ".join(lines_))
    return docs


# --------------------------------------------------------------------------- output


def write_jsonl(docs: list[str], path: Path) -> Path:
    """One {"text": doc} per line, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    return path
