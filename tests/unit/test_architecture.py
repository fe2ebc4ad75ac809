"""The architecture, checked from the source: no import cycle (imports inside functions included), a pure
layer that never imports torch, lightning or transformers, and no method name compared outside methods/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("hydralign", "hydra_plugins")
HEAVY = ("torch", "lightning", "transformers", "peft", "mlflow", "optuna", "datasets", "deepspeed")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for root in ROOTS for p in sorted((REPO / root).rglob("*.py"))}


def imported(path: Path, name: str, known: dict[str, Path], nodes=None) -> set[str]:
    """Every module ``name`` imports, at module level or inside a function (or only in ``nodes``), resolved to
    the most specific known module (``from a.b import c`` is ``a.b.c`` when c is a module, else ``a.b``);
    external modules by their dotted name."""
    nodes = ast.walk(ast.parse(path.read_text(), str(path))) if nodes is None else nodes
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known and "." in target:
                target = target.rpartition(".")[0]
            out.add(target)
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(path, name, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_even_through_imports_inside_functions():
    found = cycles(graph())
    assert not found, "import cycles (each a group of modules that import each other):\n" + "\n".join(
        " <-> ".join(c) for c in found)


PURE = ("hydralign.plan.core", "hydralign.config", "hydralign.methods.specs", "hydralign.errors")


def test_the_pure_layer_imports_no_heavy_library():
    edges = graph()
    pure = [m for m in edges if any(m == p or m.startswith(p + ".") for p in PURE)]
    assert pure
    bad = {}
    for m in pure:  # everything reachable from a pure module must be pure too
        seen, todo = set(), [m]
        while todo:
            v = todo.pop()
            for w in edges.get(v, ()):
                if w.split(".")[0] in HEAVY:
                    bad.setdefault(m, set()).add(f"{v} -> {w}")
                elif w in edges and w not in seen:
                    seen.add(w)
                    todo.append(w)
    assert not bad, bad


def method_names() -> set[str]:
    return {p.stem for p in (REPO / "conf" / "method").glob("*.yaml")}


def test_no_module_outside_methods_compares_a_method_name():
    names = method_names()
    found = []
    for name, path in modules().items():
        if name.startswith(("hydralign.methods", "hydralign.losses")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            consts = [c for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
            consts += [e for c in node.comparators if isinstance(c, (ast.Tuple, ast.List, ast.Set)) for e in c.elts
                       if isinstance(e, ast.Constant)]
            text = ast.unparse(node)
            if "method" in text and any(c.value in names for c in consts):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {text}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("limit, what", [(80, "function"), (400, "file")])
def test_sizes(limit, what):
    too_big = []
    for path in modules().values():
        text = path.read_text()
        if what == "file":
            n = len(text.splitlines())
            if n > limit:
                too_big.append(f"{path.relative_to(REPO)}: {n} lines")
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    too_big.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {n} lines")
    assert not too_big, "\n".join(too_big)


def edge_counts() -> tuple[int, int]:
    """(internal import edges, of which only inside functions): for the redesign's before/after note."""
    known = modules()
    total = inner = 0
    for name, path in known.items():
        tree = ast.parse(path.read_text())
        top = [n for b in tree.body if not isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
               for n in ast.walk(b)]
        internal = {m for m in imported(path, name, known) if m in known}
        total += len(internal)
        inner += len(internal - imported(path, name, known, top))
    return total, inner


if __name__ == "__main__":
    print("internal import edges, of which inside functions only:", edge_counts(), "modules:", len(modules()))
