"""Layering of the packages: no import cycles, and data flows one way.

The import graph is read from the source with :mod:`ast` (every ``import`` statement, at module
level *and* inside functions, so that lazy imports count too), at the granularity of modules of
``sirf_diffusion`` and ``stir_wrappers``.  Two checks:

Imports inside a module-level ``__getattr__`` are left out: that function only serves
deprecated aliases of names that moved (with a :class:`DeprecationWarning`), which may point
anywhere.

1. the graph has no cycle (Tarjan's strongly connected components);
2. every import goes down (or across) the layers
   ``geometry -> io/physics -> data/likelihood -> recon -> diffusion -> samplers -> integrations
   -> stir_wrappers -> commands/CLI`` of :data:`LAYERS`; and ``sirf_diffusion`` never imports
   ``stir_wrappers`` at module level (only the ``--physics stir`` command does, lazily).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sirf_diffusion", "stir_wrappers")

#: Module prefix -> layer (the longest matching prefix wins); an import may only go to a layer
#: at or below its own.
LAYERS: dict[str, int] = {
    "sirf_diffusion._version": 0,
    "sirf_diffusion.toolkits": 0,
    "sirf_diffusion.models": 0,
    "sirf_diffusion.physics.geometry": 1,
    "sirf_diffusion.io": 2,
    "sirf_diffusion.metrics": 2,
    "sirf_diffusion.plotting": 2,
    # the per-step bookkeeping of every trainer (logs, cadences, callback, progress bar)
    "sirf_diffusion.training_loop": 2,
    "sirf_diffusion.physics": 2,
    "sirf_diffusion.data": 3,
    "sirf_diffusion.likelihood": 3,
    "sirf_diffusion.recon": 4,
    # FBSEM-net's trainer reuses the prior trainer's checkpoints and EMA (a training module)
    "sirf_diffusion.recon.fbsem_training": 5,
    "sirf_diffusion.diffusion": 5,
    "sirf_diffusion.samplers": 6,
    "sirf_diffusion.integrations": 7,
    "stir_wrappers": 8,
    "sirf_diffusion.commands": 9,
    "sirf_diffusion.workflows": 9,
    "sirf_diffusion.demo": 9,
    "sirf_diffusion.cli": 10,
    "sirf_diffusion.__main__": 11,
}


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            mods[".".join(parts)] = (f, is_pkg)
    return mods


def _resolve(name: str, mods: dict) -> str | None:
    parts = name.split(".")
    while parts:
        if ".".join(parts) in mods:
            return ".".join(parts)
        parts.pop()
    return None


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``(all imports, module-level imports)``: module -> modules of the two packages it imports."""
    mods = _modules()
    everything: dict[str, set[str]] = {}
    top_level: dict[str, set[str]] = {}
    for mod, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = mod if is_pkg else mod.rpartition(".")[0]
        top_nodes = set(map(id, tree.body))
        shims = {id(n) for f in tree.body
                 if isinstance(f, ast.FunctionDef) and f.name == "__getattr__"
                 for n in ast.walk(f)}
        out: set[str] = set()
        top: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in shims:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in mods else origin
                           for a in node.names]
            for t in targets:
                r = _resolve(t, mods)
                if r is not None and r != mod:
                    out.add(r)
                    if id(node) in top_nodes:
                        top.add(r)
        everything[mod] = out
        top_level[mod] = top
    return everything, top_level


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> int | None:
    best = None
    for prefix, rank in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, rank)
    return None if best is None else best[1]


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph, _ = import_graph()
    assert len(graph) > 50  # the walk found the package
    assert cycles(graph) == []


def test_every_module_has_a_layer():
    graph, _ = import_graph()
    unranked = sorted(m for m in graph if m not in PACKAGES and layer(m) is None)
    assert unranked == [], f"add these modules to LAYERS: {unranked}"


def test_imports_go_down_the_layers():
    graph, _ = import_graph()
    upward = [f"{m} ({layer(m)}) -> {t} ({layer(t)})"
              for m, targets in sorted(graph.items()) if m not in PACKAGES
              for t in sorted(targets) if t not in PACKAGES and layer(t) > layer(m)]
    assert upward == []


@pytest.mark.parametrize("package", ["sirf_diffusion"])
def test_sirf_diffusion_never_imports_stir_wrappers_at_module_level(package):
    _, top = import_graph()
    offenders = sorted(m for m, targets in top.items() if m.startswith(package)
                       and any(t.startswith("stir_wrappers") for t in targets))
    assert offenders == []
