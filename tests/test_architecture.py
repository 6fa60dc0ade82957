"""The layering, checked from the source: imports point one way, and library files stay small.

    core/  (framework-free)  ->  io/  ->  runtime/ (Ray, gRPC, Serve adapters)  ->  cli/
    synth/ and report/ beside them; the top-level deployments/ package above the library.

Every import statement is read with ``ast`` (lazy imports inside functions included), so a
violation cannot hide in a function body.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "seqguard_ray"
GENERATED = LIB / "proto"
MAX_LINES = 420  # "about 400" for a library module; generated code excepted

# package -> what it must never import (top-level distributions, or seqguard_ray subpackages)
FORBIDDEN = {
    "core": {"ray", "grpc", "google.protobuf", "deployments", "seqguard_ray.io", "seqguard_ray.runtime",
             "seqguard_ray.cli", "seqguard_ray.synth", "seqguard_ray.report", "seqguard_ray.client",
             "seqguard_ray.proto"},
    "io": {"ray", "grpc", "deployments", "seqguard_ray.runtime", "seqguard_ray.cli", "seqguard_ray.report"},
    "runtime": {"deployments", "seqguard_ray.cli"},
    "synth": {"ray", "grpc", "deployments", "seqguard_ray.runtime", "seqguard_ray.cli", "seqguard_ray.report"},
    "report": {"ray", "grpc", "deployments", "seqguard_ray.runtime", "seqguard_ray.cli"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target))
            # `from . import x` / `from .. import runtime`: the names may be modules
            out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
    return out


def _library_files() -> list[Path]:
    return sorted(p for p in LIB.rglob("*.py") if GENERATED not in p.parents)


def _hits(path: Path, forbidden: set[str]) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line} imports {name}" for line, name in _imports(path)
            if any(name == f or name.startswith(f + ".") for f in forbidden)]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_one_way(layer):
    files = sorted((LIB / layer).rglob("*.py"))
    assert files, f"seqguard_ray/{layer}/ is missing"
    bad = [hit for p in files for hit in _hits(p, FORBIDDEN[layer])]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_library_never_imports_the_top_level_deployments_package():
    bad = [hit for p in _library_files() for hit in _hits(p, {"deployments"})]
    assert not bad, "\n".join(bad)


def test_library_modules_import_no_cycles():
    """No two library modules import each other, directly or round a longer loop."""
    mods = {_module_name(p): p for p in _library_files()}
    graph = {m: {t for _, t in _imports(p) if t in mods and t != m} for m, p in mods.items()}
    # a package's __init__ importing its own submodules is how packages export: not a cycle
    graph = {m: {t for t in ts if not (mods[m].name == "__init__.py" and t.startswith(m + "."))}
             for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_library_modules_stay_small():
    long = {str(p.relative_to(ROOT)): n for p in _library_files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"library modules over {MAX_LINES} lines: {long}"


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """The walker resolves relative and lazy imports (a check that sees nothing passes vacuously)."""
    pkg = ROOT / "seqguard_ray" / "core"
    probe = pkg / "_architecture_probe.py"
    probe.write_text("def f():\n    from ..runtime import serve\n    import ray\n")
    try:
        names = [n for _, n in _imports(probe)]
        assert "seqguard_ray.runtime" in names and "ray" in names
        assert _hits(probe, FORBIDDEN["core"])
    finally:
        probe.unlink()
