"""The code's shape: no import cycle among medmtl's modules (imports inside functions and under
TYPE_CHECKING count too), and no module over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "medmtl"
MAX_LINES = 400


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


def test_no_module_over_400_lines() -> None:
    long = {str(f.relative_to(PKG.parent)): n for f in PKG.rglob("*.py")
            if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert long == {}
