"""The code's shape holds: flows/ and tasks/ stay readable function by function, and the product does not depend on
the benchmarks."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("flows", "tasks", "warehouse")
LONGEST = 50  # lines of a function, its signature and docstring included


def _functions(root: str) -> list[tuple[int, str]]:
    found = []
    for path in sorted((REPO / root).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                found.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(REPO)}:{node.lineno} {node.name}"))
    return found


def test_every_function_in_flows_and_tasks_is_under_50_lines():
    long = sorted((f for root in ("flows", "tasks") for f in _functions(root) if f[0] >= LONGEST), reverse=True)
    assert not long, f"functions of {LONGEST} lines or more (split them): {long}"


def test_the_product_imports_nothing_from_benchmarks():
    for root in PRODUCT:
        for path in (REPO / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [alias.name for alias in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                assert not any(name.split(".")[0] == "benchmarks" for name in names), path
