"""The shape of the code a reader meets: no function body (its docstring aside) over 45 lines, tests
named for the module they test, and the tests the docs cite where the docs say."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mmkd"
LONGEST = 45


def body_lines(func: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = func.body
    docstring = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
        and isinstance(body[0].value.value, str)
    first = body[1] if docstring and len(body) > 1 else body[0]
    return func.end_lineno - first.lineno + 1


def test_body_lines_counts_a_function_without_its_docstring():
    tree = ast.parse('def f():\n    """Doc\n    string."""\n    a = 1\n\n    return a\n')
    assert body_lines(tree.body[0]) == 3


def test_no_function_is_longer_than_45_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and body_lines(node) > LONGEST:
                long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({body_lines(node)} lines)")
    assert long == [], "functions over 45 lines: " + ", ".join(long)


def _module_for(test_file: str) -> list[Path]:
    """The modules a test file is named for: tests/test_cache_writer.py -> mmkd/cache/writer.py (or
    mmkd/cache_writer.py, or the folder mmkd/cache_writer/)."""
    stem = test_file.removeprefix("test_").removesuffix(".py")
    head, _, tail = stem.partition("_")
    return [PACKAGE / f"{stem}.py", PACKAGE / stem, PACKAGE / head / f"{tail}.py", PACKAGE / head / tail]


def test_the_tests_docs_cite_exist_in_the_file_named():
    """docs/failures.md and docs/method.md name each test as FILE::NAME: the file has it, so the
    pages cannot point at a test that moved or was renamed."""
    import re

    tests = PACKAGE.parent / "tests"
    cited = set()
    for page in ("failures.md", "method.md", "results.md"):
        cited |= set(re.findall(r"(test_\w+\.py)::(test_\w+)", (PACKAGE.parent / "docs" / page).read_text()))
    assert len(cited) > 60
    missing = [f"{f}::{n}" for f, n in sorted(cited)
               if not (tests / f).is_file() or f"def {n}(" not in (tests / f).read_text(encoding="utf-8")]
    assert not missing, missing


def test_test_files_are_named_for_the_module_they_test():
    """Tests are arranged by module: each test file but the few about the whole (the README's workflow,
    imports, code shape, the public API, benchmarks, the real models and other families, a hub end to end,
    several processes or machines) is named for a module or package of mmkd."""
    whole = {"test_workflow.py", "test_imports.py", "test_code_shape.py", "test_benchmarks.py",
             "test_real_models.py", "test_distributed.py", "test_multinode.py", "test_families.py",
             "test_api.py", "test_hub.py", "test_ablate_demo.py"}
    odd = [p.name for p in sorted((PACKAGE.parent / "tests").glob("test_*.py"))
           if p.name not in whole and not any(m.exists() for m in _module_for(p.name))]
    assert not odd, odd


def test_no_module_is_over_400_lines():
    """The README's layout promises it: a module longer than that does more than one job."""
    long = [f"{p.relative_to(PACKAGE.parent)} ({n} lines)" for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400]
    assert not long, long
