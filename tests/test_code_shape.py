"""The shape of the code a reader meets: no function body (its docstring aside) over 45 lines."""

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
