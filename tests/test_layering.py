"""The layering of DESIGN.md section 1, checked statically (ast) over app/, model/ and bench/.

- model/ never imports app/ (any import statement, also inside functions);
- no import cycle between the repository's modules;
- app/ uses only `model` (the public names) and `model.errors`, and never reaches through
  `.engine.engine` into the engine's internals;
- no module of app/ or model/ is longer than MAX_LINES.

Imports are read from every import statement in a file (module level, functions, TYPE_CHECKING
blocks); relative imports are resolved, and `from pkg import name` points at `pkg.name` where that is
a module of the repository, else at `pkg` itself.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "model", "bench")
MAX_LINES = 300
APP_MAY_IMPORT = ("model", "model.errors")


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (resolved; may lie outside the repository)
    path: str  # file of the importing module, relative to the repository
    line: int
    text: str  # the import statement as written
    context: str  # "" at import time, else "inside a function" or "under TYPE_CHECKING"

    def where(self) -> str:
        return f"{self.path}:{self.line} `{self.text}`" + (f" ({self.context})" if self.context else "")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.lru_cache(maxsize=None)
def module_files() -> dict[str, Path]:
    files = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel = path.relative_to(REPO)
            if "__pycache__" in rel.parts or any(not p.isidentifier() for p in rel.with_suffix("").parts):
                continue  # not importable as a module (e.g. bench/results/2024-01-01/x.py)
            files[module_name(path)] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _ImportCollector(ast.NodeVisitor):
    def __init__(self, module: str, path: Path, source: str) -> None:
        self.module = module
        self.is_package = path.name == "__init__.py"
        self.rel = str(path.relative_to(REPO))
        self.source = source
        self.contexts: list[str] = []
        self.imports: list[Import] = []

    def _in_function(self, node: ast.AST) -> None:
        self.contexts.append("inside a function")
        self.generic_visit(node)
        self.contexts.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _in_function

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.contexts.append("under TYPE_CHECKING")
            for child in node.body:
                self.visit(child)
            self.contexts.pop()
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _add(self, node: ast.stmt, target: str) -> None:
        text = " ".join((ast.get_source_segment(self.source, node) or "").split())
        context = self.contexts[0] if self.contexts else ""
        self.imports.append(Import(self.module, target, self.rel, node.lineno, text, context))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            package = self.module.split(".") if self.is_package else self.module.split(".")[:-1]
            up = node.level - 1
            if up > len(package) - 1:
                base_parts: list[str] = []  # beyond the top-level package: unresolvable, kept as written
            else:
                base_parts = package[: len(package) - up] if up else package
            base = ".".join(base_parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        known = module_files()
        for alias in node.names:
            sub = f"{base}.{alias.name}" if base else alias.name
            self._add(node, sub if alias.name != "*" and sub in known else base)


@functools.lru_cache(maxsize=None)
def all_imports() -> tuple[Import, ...]:
    out: list[Import] = []
    for module, path in module_files().items():
        source = path.read_text(encoding="utf-8")
        collector = _ImportCollector(module, path, source)
        collector.visit(ast.parse(source, filename=str(path)))
        out.extend(collector.imports)
    return tuple(out)


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def report(title: str, lines: list[str]) -> str:
    return f"{title} ({len(lines)}):\n  " + "\n  ".join(lines)


# ------------------------------------------------------------------------------------------------ tests


def test_the_walk_sees_the_packages():
    files = module_files()
    assert {"app", "model", "bench", "model.engine.runtime", "app.protocol"} <= set(files)
    targets = {(i.source, i.target) for i in all_imports()}
    assert ("model.engine.runtime", "model.config") in targets  # `from ..config import ...` resolved


def test_model_never_imports_app():
    bad = [i.where() for i in all_imports() if in_package(i.source, "model") and in_package(i.target, "app")]
    assert not bad, report("model/ imports app/ (the engine is a library; app depends on model, never back)", bad)


def _cycles(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """One cycle (as a closed path of modules) per strongly connected component (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, {}))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1 or node in edges.get(node, {}):
                    components.append(sorted(comp))
    cycles = []
    for comp in components:
        members = set(comp)
        start = comp[0]
        # shortest path start -> ... -> start inside the component (BFS)
        prev: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for node in frontier:
                for child in sorted(edges.get(node, {})):
                    if child not in members:
                        continue
                    if child == start:
                        found = node
                        break
                    if child not in prev:
                        prev[child] = node
                        nxt.append(child)
                if found is not None:
                    break
            frontier = nxt
        path = [start]
        node = found
        while node is not None and node != start:
            path.append(node)
            node = prev.get(node)
        path = [start] + path[1:][::-1] + [start]
        cycles.append(path)
    return cycles


def test_no_import_cycles():
    known = module_files()
    edges: dict[str, dict[str, Import]] = {}
    for imp in all_imports():
        if imp.target in known and imp.target != imp.source:
            edges.setdefault(imp.source, {}).setdefault(imp.target, imp)
    lines = []
    for path in _cycles(edges):
        steps = [f"{a} -> {b}  [{edges[a][b].where()}]" for a, b in zip(path, path[1:])]
        lines.append(" -> ".join(path) + "\n      " + "\n      ".join(steps))
    assert not lines, report("import cycles (module path, then the import that makes each step)", lines)


def test_app_uses_only_the_public_engine_api():
    bad = [
        f"{i.where()} imports {i.target}"
        for i in all_imports()
        if in_package(i.source, "app") and in_package(i.target, "model") and i.target not in APP_MAY_IMPORT
    ]
    assert not bad, report(f"app/ imports engine internals (allowed: {', '.join(APP_MAY_IMPORT)})", bad)


def test_app_never_reaches_through_engine_engine():
    bad = []
    for module, path in module_files().items():
        if not in_package(module, "app"):
            continue
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source, filename=str(path))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "engine"
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "engine"
            ):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno} `{ast.get_source_segment(source, node)}`")
    assert not bad, report(
        "app/ reaches into the engine through `.engine.engine` (use AsyncEngine's public API)", sorted(bad)
    )


def test_no_module_over_the_line_budget():
    bad = []
    for module, path in module_files().items():
        if in_package(module, "app") or in_package(module, "model"):
            count = len(path.read_text(encoding="utf-8").splitlines())
            if count > MAX_LINES:
                bad.append(f"{path.relative_to(REPO)}: {count} lines")
    assert not bad, report(f"modules of app/ and model/ over {MAX_LINES} lines", sorted(bad))
