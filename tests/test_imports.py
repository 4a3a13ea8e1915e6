"""The import graph of the package, read from the source (imports inside functions included): no
cycle, nothing imports the command line, the losses and objectives stay below the run, and every import
left inside a function says why in a `# lazy:` comment."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mmkd"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(node: ast.Import | ast.ImportFrom, here: str) -> set[str]:
    """The mmkd modules one import statement loads (a `from PACKAGE import NAME` of a submodule
    loads that submodule; a relative import is resolved against `here`)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = here if here in _PACKAGES else here.rpartition(".")[0]
            base = importlib.util.resolve_name("." * node.level + base, package)
        names = [base] + [f"{base}.{a.name}" for a in node.names]
    return {n for n in names if n in MODULES}


_PACKAGES = {module_name(p) for p in MODULES.values() if p.name == "__init__.py"}


def graph() -> dict[str, set[str]]:
    edges = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found |= imported(node, name)
        edges[name] = found - {name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_made_up_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_imports_inside_functions():
    edges = graph()
    assert "mmkd.teacher" in edges["mmkd.features"]          # only ever imported inside a function there
    assert "mmkd.cache.writer" in edges["mmkd.cache"]        # inside the package's __getattr__


def test_no_import_cycle_hidden_or_not():
    assert cycles(graph()) == []


def test_nothing_imports_the_command_line_and_the_losses_and_objectives_stay_below_the_run():
    edges = graph()
    for name, targets in edges.items():
        if not name.startswith("mmkd.cli") and name != "mmkd.__main__":    # `python -m mmkd` runs the CLI
            assert not {t for t in targets if t.startswith("mmkd.cli") or t == "mmkd.__main__"}, name
    assert edges["mmkd.losses"] == set()
    run = {"mmkd.trainer", "mmkd.model", "mmkd.config", "mmkd.features", "mmkd.checkpoint", "mmkd.step_data"}
    for name in (n for n in edges if n.startswith("mmkd.objectives")):
        assert not edges[name] & run, (name, edges[name] & run)
        assert not {t for t in edges[name] if t.startswith(("mmkd.eval", "mmkd.cache"))}, name


def test_every_import_inside_a_function_says_why_it_is_lazy():
    bare = []
    for name, path in MODULES.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        for func in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(func):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    said = any("# lazy:" in line for line in lines[func.lineno - 1:node.lineno])
                    if not said:
                        bare.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert bare == [], "imports inside functions without a '# lazy: why' comment: " + ", ".join(bare)


def test_the_cli_and_the_readers_start_without_transformers_or_accelerate():
    """The measured reason for the lazy imports of transformers and accelerate (mmkd/__init__.py):
    `mmkd --help`, the cache reader and the step data start without them."""
    code = ("import sys, mmkd.cli, mmkd.cache, mmkd.features, mmkd.step_data; "
            "print([m for m in ('transformers', 'accelerate') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"
