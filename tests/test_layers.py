"""Fast tier (no Redis): the layers point one way, read from the source's import statements.

ml <- core <- api / worker <- devstack; digitq (the client) stands alone. Every `import` in the
tree counts, at module level and inside functions (a lazy import is still a dependency), and
module-level imports must form no cycle. The standard library's `ast` reads the tree: nothing
is imported to check it.
"""

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVER = ("ml", "core", "api", "worker", "devstack")
PACKAGES = (*SERVER, "digitq")
# Lower layers first: a module may import its own layer and those below it, never one above.
RANK = {"ml": 0, "core": 1, "api": 2, "worker": 2, "devstack": 3}
# `python -m ml` is an application (training, the registry, promotion): its commands reach the
# service's store and configuration, lazily, inside the command functions. The rest of ml/ (the
# model) knows nothing of core; nothing imports these three.
ML_APPLICATION = {"ml.cli", "ml.candidates", "ml.__main__"}
SCIKIT_LEARN = ("sklearn", "joblib")


@dataclass(frozen=True)
class Edge:
    source: str  # module that imports
    target: str  # module (or package) imported; outside the tree: its top-level name
    line: int
    module_level: bool
    type_only: bool = False  # under `if TYPE_CHECKING:`: read by mypy, never run

    def __str__(self) -> str:
        return f"{self.source}:{self.line} imports {self.target}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str:
    return name if name in known or name.split(".")[0] in PACKAGES else name.split(".")[0]


def _function_level(tree: ast.Module) -> set[int]:
    """The ids of import nodes inside a function (run when it is called, not on import)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            inside |= {id(n) for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)}
    return inside


def _type_checking(tree: ast.Module) -> set[int]:
    """The ids of import nodes under `if TYPE_CHECKING:`."""
    typed: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                typed |= {id(n) for n in ast.walk(child) if isinstance(n, ast.Import | ast.ImportFrom)}
    return typed


def _edges(module: str, path: Path, known: dict[str, Path]) -> Iterator[Edge]:
    tree = ast.parse(path.read_text(), str(path))
    lazy, typed = _function_level(tree), _type_checking(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, known)
                yield Edge(module, target, node.lineno, id(node) not in lazy, id(node) in typed)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, `level - 1` packages up
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"  # `from core import jobs` imports core.jobs
                target = submodule if submodule in known else _resolve(base, known)
                yield Edge(module, target, node.lineno, id(node) not in lazy, id(node) in typed)


def import_graph() -> list[Edge]:
    known = _modules()
    return [edge for module, path in known.items() for edge in _edges(module, path, known)]


def _package(module: str) -> str:
    return module.split(".")[0]


def _rank(module: str) -> float:
    if module in ML_APPLICATION:
        return 1.5  # above core (it may import core), below api/worker
    return RANK[_package(module)]


def layer_violations(edges: list[Edge]) -> list[str]:
    found = []
    for edge in edges:
        source, target = _package(edge.source), _package(edge.target)
        if source == "digitq":
            if target in SERVER:
                found.append(f"{edge}: the client imports the server")
            continue
        if target == "digitq" and source in SERVER:
            found.append(f"{edge}: the server imports the client")
        elif target in SERVER and _rank(edge.target) > _rank(edge.source):
            found.append(f"{edge}: a lower layer imports a higher one")
        elif {source, target} == {"api", "worker"}:
            found.append(f"{edge}: api and worker are separate processes that share core only")
        elif source == "api" and target in SCIKIT_LEARN:
            found.append(f"{edge}: the API never imports scikit-learn")
    return found


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The import cycles among the tree's modules (module-level imports), by Tarjan's algorithm."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if edge.module_level and _package(edge.target) in PACKAGES and edge.target != edge.source:
            graph.setdefault(edge.source, set()).add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def imported_on_import(edges: list[Edge], roots: set[str]) -> set[str]:
    """Every module (and outside name) importing `roots` runs: module-level imports, followed
    through the tree, each module's parent packages included (importing ml.views runs ml/__init__)."""
    runtime: dict[str, set[str]] = {}
    for edge in edges:
        if edge.module_level and not edge.type_only:
            runtime.setdefault(edge.source, set()).add(edge.target)
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:n]) for n in range(1, len(parts))]
        todo += runtime.get(module, ())
    return seen


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return import_graph()


def test_the_graph_sees_lazy_and_relative_imports(edges: list[Edge]) -> None:
    """The reader itself: the imports the checks below rely on are seen (a blind graph passes)."""
    seen = {(e.source, e.target, e.module_level) for e in edges}
    assert ("api.main", "api.problems", True) in seen  # `from api import problems`
    assert ("ml.hog", "sklearn", True) in seen  # outside the tree: by its top-level name
    assert any(src in ML_APPLICATION and _package(dst) == "core" and not top for src, dst, top in seen)


def test_layers_point_one_way(edges: list[Edge]) -> None:
    found = layer_violations(edges)
    assert not found, "\n".join(found)


def test_the_api_process_never_loads_scikit_learn(edges: list[Edge]) -> None:
    """Not even through ml/: importing the API (all of api/) runs no import of scikit-learn or
    joblib (ml/__init__.py loads its names on first use for this)."""
    api = {edge.source for edge in edges if _package(edge.source) == "api"}
    loaded = imported_on_import(edges, api)
    assert not loaded & set(SCIKIT_LEARN), sorted(m for m in loaded if _package(m) == "ml")


def test_the_checks_catch_each_kind_of_violation() -> None:
    """Each rule, attacked: an edge that breaks it is reported."""
    bad = [
        Edge("worker.stuck_jobs", "api.uploads", 1, True),
        Edge("api.items", "worker.reading", 1, True),
        Edge("core.jobs", "api.schemas", 1, False),
        Edge("ml.feedback", "core.blobs", 1, False),
        Edge("api.routes.predict", "sklearn", 1, False),
        Edge("digitq.client", "core.config", 1, False),
    ]
    assert len(layer_violations(bad)) == len(bad)
    assert layer_violations([Edge("ml.cli", "core.config", 1, False), Edge("api.deps", "ml", 1, True)]) == []
    assert cycles([Edge("core.a", "core.b", 1, True), Edge("core.b", "core.a", 1, True)]) == [
        ["core.a", "core.b"]
    ]
    assert cycles([Edge("core.a", "core.b", 1, True), Edge("core.b", "core.a", 1, False)]) == []


def test_no_import_cycle(edges: list[Edge]) -> None:
    assert cycles(edges) == []
