"""The floors of dualplane: every import points down (or stays on its floor), and none goes in a circle.

The map below is the one docs/architecture.md opens with. The walk reads every module of
``dualplane/`` and ``bench/`` with ``ast`` (no import runs), and counts every import statement:
at the top of a module, inside a function, and under ``if TYPE_CHECKING:`` alike. A type-only
import executes nothing, but it still says that the lower module knows the higher one's class,
which is the coupling the floors are there to prevent; keeping it legal would let an upward
arrow come back as an annotation.

An import names the module it names: ``from a.b import c`` is an edge to ``a.b.c`` when that is a
module, else to ``a.b``; a package's ``__init__`` is a module of its own (importing ``a.b.c`` also
runs ``a/b/__init__.py``, but that implicit edge is not counted: a package may import its own
submodules). Bench scripts import each other by bare name (``import gpu_worker``: bench/ is their
directory); those are edges between ``bench.*`` modules.

Edges still to remove are listed in ``KNOWN_EDGES`` with why; the test fails on any other bad
edge, and on a listed edge that is gone (so the list only shrinks).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Bottom to top: (floor, module prefixes). A module is on the floor of its longest matching
#: prefix; a module may import its own floor and the floors below it.
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    # what everything is written in: the generated models, graph logic, the job state machine and the
    # event wire format, errors, settings, the task declaration (registry, retry policy), access
    # rules, log context; pure (no Redis, no asyncio)
    ("foundation", (
        "dualplane.common", "dualplane.common.models", "dualplane.common.errors", "dualplane.common.settings",
        "dualplane.common.graph", "dualplane.common.job_state", "dualplane.common.statuses", "dualplane.common.wire",
        "dualplane.common.registry", "dualplane.common.retry", "dualplane.common.access",
        "dualplane.common.media_types", "dualplane.common.url_policy", "dualplane.common.quiet",
        "dualplane.common.logs", "dualplane.common.digest", "dualplane.common.version",
    )),
    # the clients of the outside: the bridge (Redis: the only one that spells keys), the object
    # store, URL fetches
    ("stores", ("dualplane.common.bridge", "dualplane.common.artifacts", "dualplane.common.inputs")),
    # one plane's run loop: consume, execute (LangGraph behind one adapter), the hooks, the cancel
    # watch, the task context, metrics, routing
    ("runtime", (
        "dualplane.common.consumer", "dualplane.common.executor", "dualplane.common.langgraph_batch",
        "dualplane.common.hooks", "dualplane.common.cancel_watch", "dualplane.common.context",
        "dualplane.common.telemetry", "dualplane.common.routing",
    )),
    # what tasks build on: the model store, rng, device, tiny builders, pulls, the audio codec
    ("ml", ("dualplane.ml",)),
    ("tasks", ("dualplane.tasks",)),
    # the two planes (neither imports the other: see PEERS) and the HTTP client of the control plane
    ("planes", ("dualplane.control_plane", "dualplane.data_plane", "dualplane.client")),
    # starting redis-server / SeaweedFS and the local stack (`dualplane up`), for people and tests
    ("devstack", ("dualplane.devstack",)),
    # the composition root (builds the task catalog, hands it to both planes), the public API
    # package (`dualplane/__init__.py`), and the benchmark and code generation scripts beside it
    ("top", ("dualplane", "dualplane.cli", "dualplane.__main__", "bench", "codegen")),
]

#: Rooms on one floor that must not import each other (either way).
PEERS = [("dualplane.control_plane", "dualplane.data_plane")]

#: Bad edges not removed yet: (importer, imported) → why, and what removes it.
KNOWN_EDGES: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    where: str  # path:line

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported}  ({self.where})"


def _sources() -> dict[str, Path]:
    """Module name → file, for dualplane/, bench/ and codegen/."""
    modules = {}
    for top in ("dualplane", "bench", "codegen"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    for alias in node.names:
        submodule = f"{source}.{alias.name}"
        yield submodule if submodule in known else source


@functools.cache
def _edges() -> list[Edge]:
    sources = _sources()
    known = set(sources)
    bench = {name.removeprefix("bench.") for name in known if name.startswith("bench.")}
    edges = []
    for module, path in sources.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _targets(node, module, path.name == "__init__.py", known):
                if module.startswith("bench.") and target.split(".")[0] in bench:
                    target = f"bench.{target}"
                if target.split(".")[0] in ("dualplane", "bench", "codegen") and target != module:
                    edges.append(Edge(module, target, f"{path.relative_to(ROOT)}:{node.lineno}"))
    return edges


def _floor(module: str) -> int | None:
    best, floor = -1, None
    for index, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, floor = len(prefix), index
    # dualplane.common.<anything> must be placed by name: the bare "dualplane.common" prefix
    # holds only the package itself
    if floor == 0 and module.startswith("dualplane.common.") and not any(
            module == p or module.startswith(p + ".") for p in FLOORS[0][1] if p != "dualplane.common"):
        return None
    if floor == len(FLOORS) - 1 and module.startswith("dualplane.") and not any(
            module == p or module.startswith(p + ".") for p in FLOORS[-1][1] if p != "dualplane"):
        return None  # a new room under dualplane/ is put on a floor on purpose
    return floor


def _room(module: str) -> str | None:
    for peer in (p for pair in PEERS for p in pair):
        if module == peer or module.startswith(peer + "."):
            return peer
    return None


def _bad_edges(edges: list[Edge]) -> dict[tuple[str, str], Edge]:
    bad: dict[tuple[str, str], Edge] = {}
    for edge in edges:
        low, high = _floor(edge.importer), _floor(edge.imported)
        if low is None or high is None:
            continue  # test_every_module_is_on_a_floor names it
        rooms = {_room(edge.importer), _room(edge.imported)}
        peers = any(rooms == set(pair) for pair in PEERS)
        if high > low or peers:
            bad.setdefault((edge.importer, edge.imported), edge)
    return bad


def _describe(edge: Edge) -> str:
    low, high = _floor(edge.importer), _floor(edge.imported)
    assert low is not None and high is not None
    return f"{edge}: floor {FLOORS[low][0]} imports floor {FLOORS[high][0]}"


def test_every_module_is_on_a_floor():
    unplaced = sorted(m for m in _sources() if _floor(m) is None)
    assert not unplaced, f"modules on no floor (add them to FLOORS in tests/test_floors.py): {unplaced}"


def test_every_import_points_down():
    bad = _bad_edges(_edges())
    new = [_describe(edge) for key, edge in sorted(bad.items()) if key not in KNOWN_EDGES]
    assert not new, "imports that point up, or between the planes:\n  " + "\n  ".join(new)


def test_the_known_bad_edges_are_still_there():
    gone = sorted(set(KNOWN_EDGES) - set(_bad_edges(_edges())))
    assert not gone, f"removed: take them off KNOWN_EDGES in tests/test_floors.py: {gone}"


def test_the_control_plane_imports_nothing_of_the_data_plane():
    edges = [str(e) for e in _edges()
             if e.importer.startswith("dualplane.control_plane") and e.imported.startswith("dualplane.data_plane")]
    assert not edges, "\n  ".join(["the control plane imports the data plane:", *edges])


def test_no_import_cycle():
    edges = _edges()
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, set()).add(edge.imported)
    cycles = [cycle for cycle in _strongly_connected(graph) if len(cycle) > 1]
    where = {(e.importer, e.imported): e for e in edges}
    lines = []
    for cycle in cycles:
        members = set(cycle)
        lines.append("cycle: " + ", ".join(sorted(cycle)))
        lines += [f"  {where[(a, b)]}" for a in sorted(members) for b in sorted(graph.get(a, ()) & members)]
    assert not cycles, "\n".join(lines)


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the module graph is deep enough for Python's recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
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
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
    return components


def test_mypy_is_strict_on_every_module_of_the_three_bottom_floors():
    """pyproject's strict override names each module of the foundation, the stores and the runtime
    (a new module there must join it, or it would be checked without the strict flags)."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    strict = next(o["module"] for o in config["tool"]["mypy"]["overrides"] if o.get("disallow_untyped_defs"))

    def covered(module: str) -> bool:
        return any(module == p or (p.endswith(".*") and module.startswith(p[:-1])) for p in strict)

    bottom = [m for m in _sources() if m.startswith("dualplane.") and (_floor(m) or 0) <= 2
              and _floor(m) is not None]
    assert len(bottom) > 30
    assert [m for m in bottom if not covered(m)] == []


def test_no_bench_script_shadows_the_standard_library():
    """A bench script runs with bench/ first on sys.path: one named like a standard module
    (http.py) would be imported in its place by every library of that process."""
    import sys

    scripts = {path.stem for folder in (ROOT / "bench", ROOT / "bench" / "peers") for path in folder.glob("*.py")}
    assert scripts & sys.stdlib_module_names == set()
