"""Rules that keep the package easy to change (docs/architecture.md): what differs by kind of task is decided by the
bundle's task kind (cadpipe/pipelines/kinds/), never by comparing task names elsewhere; scoring's functions stay
short enough to read (the run's skeleton in scoring/score.py, the steps in their own functions)."""

from __future__ import annotations

import ast
import os
import re

import cadpipe

PKG_DIR = os.path.dirname(os.path.abspath(cadpipe.__file__))
REGISTRY = os.path.join(PKG_DIR, "pipelines", "kinds", "registry.py")
# `task == ...`, `runner.task != ...`, `task in (...)`, `task not in ...`
TASK_BRANCH = re.compile(r"\btask\s*(?:==|!=)|\btask\s+(?:not\s+)?in\b")
MAX_FUNCTION_LINES = 80


def _python_files(folder: str):
    for root, _, files in os.walk(folder):
        for f in sorted(files):
            if f.endswith(".py"):
                yield os.path.join(root, f)


def task_branches(folder: str = PKG_DIR) -> list[str]:
    """``path:line: text`` of every task-name comparison outside the kinds' registry (comments left out)."""
    found = []
    for path in _python_files(folder):
        if os.path.abspath(path) == REGISTRY:
            continue
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                code = line.split("#", 1)[0]
                if TASK_BRANCH.search(code):
                    found.append(f"{os.path.relpath(path, PKG_DIR)}:{n}: {line.strip()}")
    return found


def long_functions(folder: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:line name (n lines)`` of every function (docstring included) longer than ``limit`` lines."""
    found = []
    for path in _python_files(folder):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{os.path.relpath(path, PKG_DIR)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_task_name_branches_outside_the_kinds_registry():
    assert task_branches() == [], "ask the bundle's kind (cadpipe.pipelines.kinds) instead of comparing task names"


def test_the_check_finds_task_branches(tmp_path):
    (tmp_path / "m.py").write_text('if runner.task == "detection":\n    pass\nok = task_hint  # task == x\n'
                                   'if task not in ("a", "b"):\n    pass\nif self.task in KINDS:\n    pass\n')
    assert [f.split(":")[1] for f in task_branches(str(tmp_path))] == ["1", "4", "6"]


def test_no_scoring_function_longer_than_80_lines():
    assert long_functions(os.path.join(PKG_DIR, "pipelines", "scoring")) == []


def test_the_length_check_counts_docstrings(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(78))
    (tmp_path / "m.py").write_text(f'def short():\n    """doc"""\n{body}\n\n\ndef long():\n    """doc"""\n{body}\n'
                                   "    return 1\n")
    assert [f.split()[1] for f in long_functions(str(tmp_path))] == ["long"]
