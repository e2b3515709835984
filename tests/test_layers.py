"""The package's import rules (docs/architecture.md): imports only go down the layers, and no module imports
itself back through others (no cycles, function-level imports included)."""

from __future__ import annotations

import ast
import os

import cadpipe

PKG_DIR = os.path.dirname(os.path.abspath(cadpipe.__file__))

# lowest first; a module may import from its own layer and the layers before it
LAYERS = [
    ("cadpipe", "cadpipe.errors", "cadpipe._version", "cadpipe.flags", "cadpipe.extras"),
    ("cadpipe.transforms.readers",),  # readers and their guards: nothing else of transforms below them
    ("cadpipe.transforms.clahe",),
    ("cadpipe.transforms",),  # intensity, geometry and domain transforms (lung, mammo, histology)
    ("cadpipe.data",),
    ("cadpipe.pipelines.outputs",),
    ("cadpipe.pipelines.kinds",),
    ("cadpipe.pipelines.inference",),
    ("cadpipe.pipelines.tasks",),
    ("cadpipe.pipelines.scoring",),
    ("cadpipe.pipelines.pacs",),
    ("cadpipe.pipelines.portal", "cadpipe.pipelines.monailabel", "cadpipe.pipelines.demo"),
    ("cadpipe.cli", "cadpipe.__main__"),
]


def _modules() -> dict[str, str]:
    out = {}
    root = os.path.dirname(PKG_DIR)
    for folder, _, files in os.walk(PKG_DIR):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), root)[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(folder, f)
    return out


def _imports(path: str, name: str, is_pkg: bool) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cadpipe")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_pkg else name.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base.startswith("cadpipe"):
                found |= {f"{base}.{a.name}" for a in node.names} | {base}
    return found


def _resolve(target: str, modules: dict[str, str]) -> str | None:
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def _rank(module: str) -> int:
    best, rank = "", -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > len(best):
                best, rank = p, i
    return rank


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        is_pkg = path.endswith("__init__.py")
        deps = {_resolve(t, modules) for t in _imports(path, name, is_pkg)}
        graph[name] = {d for d in deps if d and d != name}
    return graph


def test_every_module_has_a_layer():
    assert [m for m in _graph() if _rank(m) < 0] == []


def test_imports_only_go_down():
    bad = [f"{m} imports {d}" for m, deps in _graph().items() for d in deps
           if _rank(d) > _rank(m) and d != "cadpipe"]
    assert bad == []


def test_no_import_cycles():
    graph = _graph()
    # a package's __init__ importing its own submodules is how packages re-export; leave those edges out
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [])
    assert cycles == []


def test_transforms_top_level_stays_small():
    """Readers and the CLAHE family live in their subpackages; few modules stay loose at the top."""
    top = os.path.join(PKG_DIR, "transforms")
    loose = sorted(f for f in os.listdir(top) if f.endswith(".py") and f != "__init__.py")
    assert len(loose) <= 8, loose
