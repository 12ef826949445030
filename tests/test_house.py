"""House rules that a linter does not check: function length in ``src/`` (issue 16).

Goal: no function longer than 80 lines of code (its docstring not counted). The functions
below are longer today; the list may only shrink — a new long function fails, and a listed
one that got short enough must leave the list. Complexity (≤ 15) is ruff's C901, run by
``make test``; its current exceptions carry ``# noqa: C901``.
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "prunekit"
MAX_LINES = 80

KNOWN_LONG: set[str] = set()  # "module:function": split them (issue 16, item 4)


def _code_lines(node) -> int:
    """Lines of the function, its docstring's lines not counted."""
    total = node.end_lineno - node.lineno + 1
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        total -= first.end_lineno - first.lineno + 1
    return total


def _long_functions() -> dict[str, int]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _code_lines(node)
                if n > MAX_LINES:
                    found[f"{path.relative_to(SRC).as_posix()}:{node.name}"] = n
    return found


def test_no_new_function_longer_than_80_lines():
    found = _long_functions()
    new = {k: v for k, v in found.items() if k not in KNOWN_LONG}
    assert not new, f"functions over {MAX_LINES} lines of code (split them): {new}"


def test_the_list_of_known_long_functions_only_shrinks():
    gone = KNOWN_LONG - set(_long_functions())
    assert not gone, f"now within {MAX_LINES} lines, remove from KNOWN_LONG: {sorted(gone)}"
