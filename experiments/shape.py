"""The package's shape in numbers: files, lines, import cycles, upward imports (against the
floors of ``docs/layout.md``, read from the import-linter layers contract in ``pyproject.toml``),
imports inside functions (and those of any module without a comment saying why), public
functions with an unannotated parameter or return, literal ``choices=`` lists, registration tables beside
``rerank.registry.Registry``, files in ``experiments/results/benchmarks/`` and bytes of ``docs/``.

    python experiments/shape.py [--json]

The last line is one JSON object with the figures (issue 43's before and after).
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rerank"


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _resolve(module: str, node: ast.ImportFrom | ast.Import, known: dict[str, Path]) -> Iterator[str]:
    """The package's own modules an import statement in ``module`` reaches."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            here = module.split(".")
            is_package = known[module].name == "__init__.py"
            anchor = here if is_package else here[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target.startswith("rerank") and target != module:
            yield target


def imports(known: dict[str, Path]) -> tuple[dict[str, set[str]], int]:
    """Each module's imports of the package (everywhere in the file), and how many sit in functions."""
    graph: dict[str, set[str]] = {name: set() for name in known}
    inside = 0
    for name, path in known.items():
        tree = ast.parse(path.read_text())
        in_function: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                in_function.update(id(child) for child in ast.walk(node) if child is not node)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                reached = set(_resolve(name, node, known))
                graph[name] |= reached
                if reached and id(node) in in_function:
                    inside += 1
    return graph, inside


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), a package's ``__init__``
    importing its own modules left out (that is how a package exposes them, not a circle)."""
    edges = {a: {b for b in bs if not b.startswith(a + ".")} for a, bs in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10000)
    for node in edges:
        if node not in index:
            visit(node)
    return groups


def floors() -> list[list[str]]:
    """The layers contract of pyproject.toml, highest floor first, each a list of module prefixes."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for contract in config.get("tool", {}).get("importlinter", {}).get("contracts", []):
        if contract.get("type") == "layers":
            return [[part.strip() for part in layer.replace("|", ":").split(":")] for layer in contract["layers"]]
    return []


def floor_of(module: str, layers: list[list[str]]) -> int | None:
    for height, layer in enumerate(reversed(layers)):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in layer):
            return height
    return None


def literal_choices(known: dict[str, Path]) -> list[str]:
    """``choices=[...]`` arguments written as literal lists of strings."""
    found = []
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.keyword) and node.arg == "choices"
                    and isinstance(node.value, (ast.List, ast.Tuple, ast.Set))
                    and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.value.elts)):
                found.append(f"{name}:{node.value.lineno}")
    return found


TABLE_NAMES = ("_KINDS", "_INDEX_KINDS", "_RECIPES", "REGISTRY", "LAYOUTS", "LOSSES", "SHAPES", "BACKENDS", "EXTRAS",
               "EXTRA_MODULES", "METHODS", "PRECISIONS")


def registration_tables(known: dict[str, Path]) -> tuple[list[str], list[str]]:
    """``Registry(...)`` instances, and hand-written module-level tables of kinds beside them."""
    registries, tables = [], []
    for name, path in known.items():
        for node in ast.parse(path.read_text()).body:
            target, value = None, None
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                target, value = node.targets[0].id, node.value
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                target, value = node.target.id, node.value
            if target is None or value is None:
                continue
            if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "Registry":
                registries.append(f"{name}.{target}")
            elif target in TABLE_NAMES and isinstance(value, (ast.Dict, ast.Call)):
                tables.append(f"{name}.{target}")
    return registries, tables


def unexplained_function_imports(known: dict[str, Path]) -> list[str]:
    """Imports inside functions (of any module, the package's or not) with no comment saying why."""
    found = []
    for name, path in known.items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)) and "#" not in lines[inner.lineno - 1]:
                        found.append(f"{name}:{inner.lineno}")
    return sorted(set(found))


def unannotated_public_functions(known: dict[str, Path]) -> list[str]:
    """Public functions and methods (of public classes) with a parameter or the return unannotated."""
    found = []

    def visit(body: list, prefix: str, module: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                visit(node.body, f"{prefix}{node.name}.", module)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                dunder = node.name.startswith("__") and node.name.endswith("__")
                if node.name.startswith("_") and not dunder:
                    continue
                arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                if arguments and arguments[0].arg in ("self", "cls"):
                    arguments = arguments[1:]
                starred = [a for a in (node.args.vararg, node.args.kwarg) if a is not None]
                if (any(a.annotation is None for a in arguments + starred)
                        or (node.returns is None and node.name != "__init__")):
                    found.append(f"{module}.{prefix}{node.name}")

    for name, path in known.items():
        visit(ast.parse(path.read_text()).body, "", name)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the offending imports and lists")
    args = parser.parse_args()
    known = modules()
    graph, inside = imports(known)
    groups = cycles(graph)
    layers = floors()
    upward = sorted(f"{a} -> {b}" for a, bs in graph.items() for b in bs
                    if floor_of(a, layers) is not None and floor_of(b, layers) is not None
                    and floor_of(b, layers) > floor_of(a, layers))  # type: ignore[operator]
    unplaced = sorted(m for m in known if m != "rerank" and floor_of(m, layers) is None)
    choices = literal_choices(known)
    registries, tables = registration_tables(known)
    results = ROOT / "experiments" / "results" / "benchmarks"
    docs = ROOT / "docs"
    figures = {
        "package_files": len(known),
        "package_lines": sum(len(p.read_text().splitlines()) for p in known.values()),
        "own_imports": sum(len(v) for v in graph.values()),
        "imports_inside_functions": inside,
        "function_imports_without_reason": len(unexplained_function_imports(known)),
        "public_functions_unannotated": len(unannotated_public_functions(known)),
        "import_cycles": len(groups),
        "modules_in_cycles": sum(len(g) for g in groups),
        "upward_imports": len(upward),
        "modules_without_floor": len(unplaced),
        "literal_choices_lists": len(choices),
        "registries": len(registries),
        "registration_tables_beside_registry": len(tables),
        "benchmark_result_files": sum(1 for p in results.iterdir() if p.is_file()),
        "docs_bytes": sum(p.stat().st_size for p in docs.rglob("*") if p.is_file()),
    }
    for key, value in figures.items():
        print(f"{key:40s} {value}")
    if args.list:
        for title, items in (("cycles", [" ".join(g) for g in groups]), ("upward", upward), ("without a floor", unplaced),
                             ("choices", choices), ("registries", registries), ("tables", tables)):
            print(f"\n{title}:")
            for item in items:
                print(f"  {item}")
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
