#!/usr/bin/env python3
"""Sizes and import cycles of the project's packages, against its layout targets.

``layout.py [--check] [--root DIR]`` reads every module of ``peer/`` (with its
subpackages) and ``transports/`` without importing any, and prints:

- every module over :data:`MODULE_LIMIT` lines (lines as ``wc -l`` counts them);
- every class over :data:`CLASS_LIMIT` lines, from its ``class`` line to its
  last line (``ast`` ``end_lineno``), nested classes included;
- every import cycle among those modules. An import counts when it runs at
  import time: at module level, in a class body, or under ``if
  TYPE_CHECKING:`` (a cycle there is still a cycle of dependency). Imports
  inside a function run later and are listed apart as *deferred*; they make
  no cycle. ``from pkg import name`` depends on ``pkg.name`` when that is a
  module, else on ``pkg``; a package's ``__init__`` is not added as a
  dependency of its submodules.

Each finding is marked ``allowed`` when the allowlist (:data:`ALLOWED_MODULES`,
:data:`ALLOWED_CLASSES`, :data:`ALLOWED_CYCLES`) lists it at or
above its current size, ``GREW`` when it is listed smaller, ``NEW`` when it
is not listed. Allowlisted items now within the limits are named too, so
the list can shrink. The exit status is 0, or with ``--check`` 1 when any
finding is ``GREW`` or ``NEW``. tests/test_layout.py runs the same checks.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# -- the allowlist: today's offenders, each at its current size ----------------
# Shrink it as modules are split; never raise a number.

ALLOWED_MODULES: dict[str, int] = {}
"""Modules over MODULE_LIMIT lines: path -> the most lines it may have."""

ALLOWED_CLASSES: dict[str, int] = {}
"""Classes over CLASS_LIMIT lines: module.Class -> the most lines it may have."""

ALLOWED_CYCLES: set[frozenset[str]] = set()
"""Import cycles, each as the set of modules in it (a strongly connected component)."""

MODULE_LIMIT = 500
CLASS_LIMIT = 300
PACKAGES = ("peer", "transports")
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Import:
    """One import of a project module by another, at ``line`` of ``source``."""

    source: str
    target: str
    line: int
    deferred: bool
    """True inside a function (it runs when called, not at import time)."""


@dataclass(slots=True)
class Layout:
    """What :func:`measure` found under one root."""

    module_lines: dict[str, int] = field(default_factory=dict)
    """Every module's path (relative to the root, with ``/``) -> its line count."""
    class_lines: dict[str, int] = field(default_factory=dict)
    """Every class, ``module.Class`` (``module.Outer.Inner``) -> its line count."""
    imports: list[Import] = field(default_factory=list)

    def large_modules(self, limit: int = MODULE_LIMIT) -> dict[str, int]:
        return {path: n for path, n in sorted(self.module_lines.items()) if n > limit}

    def large_classes(self, limit: int = CLASS_LIMIT) -> dict[str, int]:
        return {name: n for name, n in sorted(self.class_lines.items()) if n > limit}

    def deferred_imports(self) -> list[Import]:
        return [i for i in self.imports if i.deferred]

    def cycles(self) -> list[frozenset[str]]:
        """The import cycles: each strongly connected component of the
        import-time graph with more than one module, or a module importing itself."""
        graph: dict[str, set[str]] = {name: set() for name in self.modules()}
        for i in self.imports:
            if not i.deferred:
                graph[i.source].add(i.target)
        found = [
            frozenset(c)
            for c in strongly_connected(graph)
            if len(c) > 1 or next(iter(c)) in graph[next(iter(c))]
        ]
        return sorted(found, key=sorted)

    def cycle_path(self, cycle: frozenset[str]) -> list[str]:
        """One closed path through ``cycle`` (first module repeated at the end),
        with the line of each import, for the report."""
        graph: dict[str, dict[str, int]] = {name: {} for name in cycle}
        for i in self.imports:
            if not i.deferred and i.source in cycle and i.target in cycle:
                graph[i.source].setdefault(i.target, i.line)
        start = min(cycle)
        # Breadth-first from start back to start: a shortest cycle through it.
        paths: list[list[str]] = [[start]]
        seen = {start}
        while paths:
            path = paths.pop(0)
            for target in sorted(graph[path[-1]]):
                if target == start:
                    return self._with_lines([*path, start], graph)
                if target not in seen:
                    seen.add(target)
                    paths.append([*path, target])
        return sorted(cycle)  # unreachable for a strongly connected component

    @staticmethod
    def _with_lines(path: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
        return [
            f"{a} (line {graph[a][b]})" if i < len(path) - 1 else a
            for i, (a, b) in enumerate(zip(path, [*path[1:], path[0]], strict=True))
        ]

    def modules(self) -> list[str]:
        return sorted(module_name(Path(path)) for path in self.module_lines)


def module_name(relative: Path) -> str:
    """``peer/store/__init__.py`` -> ``peer.store``; ``peer/store.py`` -> ``peer.store``."""
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def python_files(root: Path, packages: Iterable[str] = PACKAGES) -> Iterator[Path]:
    for package in packages:
        yield from sorted((root / package).rglob("*.py"))


def measure(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> Layout:
    """Read (never import) every module of ``packages`` under ``root``.

    Raises SyntaxError for a module that does not parse.
    """
    layout = Layout()
    trees: dict[str, tuple[ast.Module, bool]] = {}
    for path in python_files(root, packages):
        relative = path.relative_to(root)
        text = path.read_text(encoding="utf-8")
        layout.module_lines[relative.as_posix()] = text.count("\n")  # as wc -l counts
        name = module_name(relative)
        trees[name] = (ast.parse(text, filename=str(path)), path.name == "__init__.py")
    known = set(trees)
    for name, (tree, is_package) in trees.items():
        for qualified, cls in _classes(tree, name):
            assert cls.end_lineno is not None
            layout.class_lines[qualified] = cls.end_lineno - cls.lineno + 1
        for statement, deferred in _imports(tree.body, deferred=False):
            for target in _targets(statement, name, is_package, known):
                if target != name or isinstance(statement, ast.Import):
                    layout.imports.append(Import(name, target, statement.lineno, deferred))
    return layout


def _classes(parent: ast.AST, prefix: str) -> Iterator[tuple[str, ast.ClassDef]]:
    """Every class under ``parent``, named as ``__qualname__`` names it."""
    for node in ast.iter_child_nodes(parent):
        if isinstance(node, ast.ClassDef):
            yield f"{prefix}.{node.name}", node
            yield from _classes(node, f"{prefix}.{node.name}")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _classes(node, f"{prefix}.{node.name}.<locals>")
        else:
            yield from _classes(node, prefix)


def _imports(
    body: Iterable[ast.AST], *, deferred: bool
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under ``body``, and whether it runs only when a
    function is called."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, deferred
            continue
        inner = deferred or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from _imports(ast.iter_child_nodes(node), deferred=inner)


def _targets(
    statement: ast.Import | ast.ImportFrom, source: str, is_package: bool, known: set[str]
) -> Iterator[str]:
    """The project modules ``statement`` in module ``source`` depends on."""
    if isinstance(statement, ast.Import):
        for alias in statement.names:
            target = _deepest_known(alias.name, known)
            if target is not None:
                yield target
        return
    base = statement.module or ""
    if statement.level:
        package = source.split(".") if is_package else source.split(".")[:-1]
        package = package[: len(package) - (statement.level - 1)]
        base = ".".join([*package, *([base] if base else [])])
    for alias in statement.names:
        submodule = f"{base}.{alias.name}"
        if submodule in known:
            yield submodule
        else:
            target = _deepest_known(base, known)
            if target is not None:
                yield target


def _deepest_known(dotted: str, known: set[str]) -> str | None:
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components of ``graph`` (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return components


# -- judging against the allowlist ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    """``module``, ``class`` or ``cycle``."""
    name: str
    size: int
    """Lines (0 for a cycle)."""
    verdict: str
    """``allowed``, ``GREW`` or ``NEW``."""
    allowed_size: int | None = None

    @property
    def failed(self) -> bool:
        return self.verdict != "allowed"


def judge(
    layout: Layout,
    *,
    modules: dict[str, int] | None = None,
    classes: dict[str, int] | None = None,
    cycles: set[frozenset[str]] | None = None,
    module_limit: int = MODULE_LIMIT,
    class_limit: int = CLASS_LIMIT,
) -> list[Finding]:
    """Every module, class and cycle over the limits, judged against the
    allowlist (by default ``ALLOWED_MODULES``, ``ALLOWED_CLASSES``, ``ALLOWED_CYCLES``)."""
    modules = ALLOWED_MODULES if modules is None else modules
    classes = ALLOWED_CLASSES if classes is None else classes
    cycles = ALLOWED_CYCLES if cycles is None else cycles
    findings: list[Finding] = []
    for kind, found, allowed in (
        ("module", layout.large_modules(module_limit), modules),
        ("class", layout.large_classes(class_limit), classes),
    ):
        for name, size in found.items():
            limit = allowed.get(name)
            verdict = "NEW" if limit is None else "GREW" if size > limit else "allowed"
            findings.append(Finding(kind, name, size, verdict, limit))
    for cycle in layout.cycles():
        verdict = "allowed" if cycle in cycles else "NEW"
        findings.append(Finding("cycle", " <-> ".join(sorted(cycle)), 0, verdict))
    return findings


def stale(layout: Layout) -> list[str]:
    """Allowlist entries that are now within the limits (or gone): remove them."""
    large_modules, large_classes = layout.large_modules(), layout.large_classes()
    cycles = set(layout.cycles())
    return [
        *(f"module {m}" for m in sorted(ALLOWED_MODULES) if m not in large_modules),
        *(f"class {c}" for c in sorted(ALLOWED_CLASSES) if c not in large_classes),
        *(
            f"cycle {' <-> '.join(sorted(c))}"
            for c in sorted(ALLOWED_CYCLES, key=sorted)
            if c not in cycles
        ),
    ]


def report(layout: Layout) -> tuple[str, bool]:
    """The printed report and whether it has a GREW or NEW finding."""
    findings = judge(layout)
    lines = [f"modules over {MODULE_LIMIT} lines:"]
    lines += _rows(f for f in findings if f.kind == "module") or ["  none"]
    lines += [f"classes over {CLASS_LIMIT} lines:"]
    lines += _rows(f for f in findings if f.kind == "class") or ["  none"]
    lines += ["import cycles (module level, class bodies, if TYPE_CHECKING):"]
    cycle_findings = {f.name: f for f in findings if f.kind == "cycle"}
    for cycle in layout.cycles():
        finding = cycle_findings[" <-> ".join(sorted(cycle))]
        lines.append(f"  {finding.verdict:8} {' -> '.join(layout.cycle_path(cycle))}")
    if not cycle_findings:
        lines.append("  none")
    deferred = layout.deferred_imports()
    lines.append("deferred imports (inside functions; not counted):")
    lines += [f"  {i.source}:{i.line} -> {i.target}" for i in deferred] or ["  none"]
    gone = stale(layout)
    if gone:
        lines.append("allowlisted but now within the limits (remove from the allowlist):")
        lines += [f"  {entry}" for entry in gone]
    failed = any(f.failed for f in findings)
    lines.append("result: " + ("over the limits (GREW or NEW above)" if failed else "ok"))
    return "\n".join(lines), failed


def _rows(findings: Iterable[Finding]) -> list[str]:
    rows = []
    for f in findings:
        limit = "" if f.allowed_size is None else f" (allowlist: {f.allowed_size})"
        rows.append(f"  {f.verdict:8} {f.size:5}  {f.name}{limit}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="exit 1 on a GREW or NEW finding")
    parser.add_argument("--root", type=Path, default=ROOT, help="the source tree (default: ours)")
    args = parser.parse_args(argv)
    text, failed = report(measure(args.root))
    print(text)
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
