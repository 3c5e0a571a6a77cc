"""The code's shape: no import cycle among medmtl's modules (imports inside functions and under
TYPE_CHECKING count too), and the layer contract of `.importlinter` (docs/ARCHITECTURE.md,
"Layers") covering every top-level package and kept by every import."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "medmtl"
CONTRACTS = PKG.parent / ".importlinter"


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PKG.rglob("*.py"):
        parts = f.relative_to(PKG.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _targets(mod: str, path: Path, node: ast.Import | ast.ImportFrom, mods: dict[str, Path],
             ) -> set[str]:
    """The medmtl modules an import statement loads (a `from pkg import name` loads pkg.name
    when that is a module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
            for _ in range(node.level - 1):
                pkg = pkg.rpartition(".")[0]
            base = f"{pkg}.{base}" if base else pkg
        subs = [f"{base}.{a.name}" for a in node.names]
        # `from pkg import sub` of submodules only loads those, not pkg's own names
        names = subs if all(n in mods for n in subs) else [base, *subs]
    return {n for n in names if n in mods and n != mod}


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                graph[m] |= _targets(m, f, node, mods)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_planted_cycle() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(g) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_in_function_imports_are_edges(tmp_path: Path) -> None:
    src = "def f():\n    from medmtl.config import TrainConfig\n"
    tree = ast.parse(src)
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    mods = _modules()
    assert _targets("medmtl.cli.app", mods["medmtl.cli.app"], node, mods) == {"medmtl.config"}
    rel = next(n for n in ast.walk(ast.parse("from . import archs")) if isinstance(n, ast.ImportFrom))
    assert _targets("medmtl.models.mtl", mods["medmtl.models.mtl"], rel, mods) == \
        {"medmtl.models.archs"}


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 50 and "medmtl.engine.trainer" in graph["medmtl.cli.train_cmds"] | {
        m for m in graph if "medmtl.engine.trainer" in graph[m]}
    assert find_cycles(graph) == []


def layers() -> list[set[str]]:
    """The layers of the contract, top first: each a set of top-level packages."""
    import configparser

    cp = configparser.ConfigParser()
    cp.read(CONTRACTS)
    raw = cp["importlinter:contract:layers"]["layers"]
    return [{p.strip().removeprefix("medmtl.") for p in line.split("|")}
            for line in raw.strip().splitlines() if line.strip()]


def layer_violations(graph: dict[str, set[str]], order: list[set[str]]) -> list[str]:
    """Imports from a package into one above it, or between two packages of one layer (the
    contract's `|`: independent)."""
    rank = {p: i for i, layer in enumerate(order) for p in layer}
    out = []
    for mod, targets in graph.items():
        src = mod.split(".")[1] if mod.count(".") else None
        for t in targets:
            dst = t.split(".")[1] if t.count(".") else None
            if src in rank and dst in rank and src != dst and rank[dst] <= rank[src]:
                out.append(f"{mod} -> {t}")
    return sorted(out)


def test_every_top_level_package_is_in_a_layer() -> None:
    tops = {p.stem if p.suffix == ".py" else p.name for p in PKG.iterdir()
            if (p.suffix == ".py" or (p / "__init__.py").is_file())
            and p.name not in ("__init__.py", "__main__.py")}
    listed = set().union(*layers())
    assert tops - listed == set(), "add these to a layer of .importlinter"
    assert listed - tops == set()


def test_the_layer_check_finds_a_planted_violation() -> None:
    order = [{"cli"}, {"engine"}, {"evaluation", "losses"}, {"config"}]
    graph = {"medmtl.config.x": {"medmtl.engine.y"}, "medmtl.engine.y": {"medmtl.config.x"},
             "medmtl.losses.a": {"medmtl.evaluation.b"}, "medmtl.cli.c": {"medmtl.engine.y"}}
    assert layer_violations(graph, order) == ["medmtl.config.x -> medmtl.engine.y",
                                              "medmtl.losses.a -> medmtl.evaluation.b"]


def test_no_import_runs_against_the_layers() -> None:
    """Every import, in functions too, follows the contract; `lint-imports` (run by `make test`)
    checks the same file with import-linter."""
    assert layer_violations(import_graph(), layers()) == []
