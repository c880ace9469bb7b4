"""docs/ARCHITECTURE.md against the code: its layer table against every import of every module
(parsed with `ast`, imports inside functions included; nothing is run), and its binding
signatures against `inspect.signature` of the named functions and methods."""
from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = next(p for p in Path(__file__).resolve().parents          # also from tests/unit/
            if (p / "docs" / "ARCHITECTURE.md").is_file())
DOC = ROOT / "docs" / "ARCHITECTURE.md"
FIRST_PARTY = ("pipeline", "data_prep", "benchmarks", "tests")
TABLE_HEAD = "| layer | modules | may import | never imports |"


def doc_layers(text: str) -> dict[str, dict]:
    """The layer table: {layer: {"modules", "may", "never"}}, each a list of names."""
    lines = text.splitlines()
    start = lines.index(TABLE_HEAD) + 2
    layers = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        name, modules, may, never = (re.findall(r"[A-Za-z_][\w.]*", cell)
                                     for cell in line.strip("|").split("|"))
        layers[name[0]] = {"modules": modules, "may": may, "never": never}
    return layers


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved; `from a import b` gives a.b when
    b is a first-party module, else a."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            subs = {f"{base}.{a.name}" for a in node.names if is_module(f"{base}.{a.name}")}
            found.update(subs or {base})
    return found


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(name: str, layers: dict) -> str | None:
    """The layer whose module prefix is the longest match of `name`."""
    best = max(((len(m), layer) for layer, row in layers.items() for m in row["modules"]
                if within(name, m)), default=None)
    return best and best[1]


def sources() -> list[Path]:
    files = sorted((ROOT / "pipeline").rglob("*.py")) + sorted((ROOT / "data_prep").rglob("*.py"))
    return [p for p in files if module_name(p) != "pipeline"]     # the empty namespace root


def violations(layers: dict, graph: dict[str, set[str]]) -> list[str]:
    """graph: module -> the modules it imports. What breaks the table, one line each."""
    bad = []
    for mod, targets in sorted(graph.items()):
        layer = layer_of(mod, layers)
        if layer is None:
            bad.append(f"{mod}: in no layer of the table")
            continue
        row = layers[layer]
        allowed = [m for a in row["may"] for m in layers.get(a, {"modules": [a]})["modules"]]
        for t in sorted(targets):
            top = t.split(".")[0]
            if any(within(t, n) for n in row["never"]):
                bad.append(f"{mod} imports {t}: layer {layer} never imports it")
            elif top in FIRST_PARTY and layer_of(t, layers) != layer \
                    and not any(within(t, a) for a in allowed):
                bad.append(f"{mod} imports {t}: not allowed for layer {layer}")
    return bad


def layer_cycle(layers: dict, graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of layers (as a path that ends where it starts), or None."""
    edges: dict[str, set[str]] = {name: set() for name in layers}
    for mod, targets in graph.items():
        src = layer_of(mod, layers)
        for t in targets:
            dst = layer_of(t, layers)
            if src and dst and dst != src:
                edges[src].add(dst)
    state: dict[str, int] = {}                # 1: on the current path, 2: done

    def visit(path):
        state[path[-1]] = 1
        for nxt in sorted(edges[path[-1]]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(path + [nxt])):
                return found
        state[path[-1]] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit([node])):
            return found
    return None


def module_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles between modules: each strongly connected component of two or more
    modules, sorted (an import of a name inside a module counts as an import of the module)."""
    def owner(t):
        while t and t not in graph:
            t = t.rpartition(".")[0]
        return t
    edges = {m: sorted({owner(t) for t in ts} - {"", m}) for m, ts in graph.items()}
    order, low, stack, cycles = {}, {}, [], []

    def visit(v):                                  # Tarjan's algorithm
        order[v] = low[v] = len(order)
        stack.append(v)
        for w in edges[v]:
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            comp = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in order:
            visit(v)
    return sorted(cycles)


@pytest.fixture(scope="module")
def layers():
    return doc_layers(DOC.read_text())


@pytest.fixture(scope="module")
def graph():
    return {module_name(p): imports(p) for p in sources()}


def test_the_layer_table_is_read(layers):
    assert set(layers) >= {"core", "format", "data", "lai", "lai.kernels", "lai.selection",
                           "config", "train", "report", "data_prep"}
    assert layers["lai.kernels"]["may"] == ["pipeline.errors"]
    assert layers["lai.kernels"]["never"] == ["deepspeed", "pipeline.lai.selection"]
    assert layers["lai.selection"]["may"] == ["lai.kernels", "pipeline.comm", "pipeline.errors"]
    assert "pipeline.train" in layers["report"]["never"]


def test_every_import_keeps_the_layer_rules(layers, graph):
    assert violations(layers, graph) == []


def test_the_layers_form_no_cycle(layers, graph):
    assert layer_cycle(layers, graph) is None


def test_no_module_cycle(graph):
    """No import cycle between modules, imports inside functions included."""
    assert module_cycles(graph) == []


def test_a_broken_rule_is_reported(layers, graph):
    """The checks can fail: a forbidden import, an upward import and a cycle, each reported."""
    broken = {m: set(t) for m, t in graph.items()}
    broken["pipeline.lai.selection.scorer"] |= {"deepspeed", "pipeline.train.step"}
    before = violations(layers, graph)
    assert [v for v in violations(layers, broken) if v not in before] == [
        "pipeline.lai.selection.scorer imports deepspeed: layer lai.selection never imports it",
        "pipeline.lai.selection.scorer imports pipeline.train.step: not allowed for layer lai.selection"]
    broken = {m: set(t) for m, t in graph.items()}
    broken["pipeline.lai.kernels.sketch"].add("pipeline.lai.selection.settings")
    broken["pipeline.report.valuation"].add("pipeline.train.checkpointing.state")
    assert [v for v in violations(layers, broken) if v not in before] == [
        "pipeline.lai.kernels.sketch imports pipeline.lai.selection.settings: "
        "layer lai.kernels never imports it",
        "pipeline.report.valuation imports pipeline.train.checkpointing.state: "
        "layer report never imports it"]
    broken = {m: set(t) for m, t in graph.items()}
    broken["pipeline.format.indexed"].add("pipeline.data.loader")
    assert layer_cycle(layers, broken) == ["format", "data", "format"]
    broken = {m: set(t) for m, t in graph.items()}
    broken["pipeline.data.blend"].add("pipeline.data.loader.RankLoader")
    new = [c for c in module_cycles(broken) if c not in module_cycles(graph)]
    assert len(new) == 1 and {"pipeline.data.blend", "pipeline.data.loader"} <= set(new[0])
    assert violations(layers, {"pipeline.newpkg.x": set()}) == [
        "pipeline.newpkg.x: in no layer of the table"]


def test_every_pipeline_module_is_in_the_layout():
    """The layout section names every module file of pipeline/ by its file name."""
    layout = DOC.read_text().split("## Layout (as built)")[1].split("\n## ")[0]
    named = set(re.findall(r"\w+\.py", layout))
    files = {p.name for p in (ROOT / "pipeline").rglob("*.py")} - {"__init__.py", "__main__.py"}
    assert sorted(files - named) == []


def test_every_package_docstring_names_its_modules():
    """A package's docstring (its map) names every module file of the package."""
    missing = []
    for init in sorted((ROOT / "pipeline").rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        if init.parent == ROOT / "pipeline":
            continue
        files = {p.name for p in init.parent.glob("*.py")} - {"__init__.py", "__main__.py"}
        missing += [f"{init.parent.name}/{f}" for f in sorted(files) if f not in doc]
    assert missing == []


def doc_signatures(text: str) -> list[tuple[str, str, str | None]]:
    """(dotted name, "(params)", return annotation or None) of the binding signatures block."""
    block = text.split("### Binding signatures")[1].split("\n### ")[0]
    joined = re.sub(r"\n {8}(?=\S)", " ", block)
    found = re.findall(r"^ {4}([\w.]+)(\(.*?\))(?: -> (.+))?$", joined, re.MULTILINE)
    return [(name, params, ret or None) for name, params, ret in found]


def resolve(dotted: str):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
            break
        except ModuleNotFoundError:
            continue
    for attr in parts[i:]:
        obj = getattr(obj, attr)
    return obj


def signature_text(obj) -> tuple[str, str | None]:
    """("(a, b=1, *, c=None)", "return annotation" or None), `self` left out."""
    sig = inspect.signature(obj)
    out, star = [], False
    for p in sig.parameters.values():
        if p.name == "self" and not out:
            continue
        if p.kind is p.VAR_POSITIONAL:
            out.append(f"*{p.name}")
            star = True
            continue
        if p.kind is p.VAR_KEYWORD:
            out.append(f"**{p.name}")
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            out.append("*")
            star = True
        out.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    ret = sig.return_annotation
    if ret is sig.empty:
        ret = None
    elif not isinstance(ret, str):
        ret = inspect.formatannotation(ret)
    return f"({', '.join(out)})", ret


def mismatches(declared) -> list[str]:
    wrong = []
    for name, params, ret in declared:
        got, got_ret = signature_text(resolve(name))
        if got != params or (ret is not None and ret != got_ret):
            wrong.append(f"{name}: doc {params} -> {ret}, code {got} -> {got_ret}")
    return wrong


def test_the_binding_signatures_match_the_code():
    declared = doc_signatures(DOC.read_text())
    assert len(declared) >= 50
    assert mismatches(declared) == []


def test_a_changed_signature_is_reported():
    """A parameter left out, a default changed, a return type changed: each reported."""
    name = "pipeline.train.checkpointing.checkpoint.load"
    assert mismatches([(name, "(state, path, *, same_world=True, universal=False)", "None")]) == []
    for params, ret in [("(state, path, *, same_world=True)", None),
                        ("(state, path, *, same_world=False, universal=False)", None),
                        ("(state, path, same_world=True, universal=False)", None),
                        ("(state, path, *, same_world=True, universal=False)", "bool")]:
        assert len(mismatches([(name, params, ret)])) == 1, (params, ret)
