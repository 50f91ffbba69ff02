"""Graph logic both planes share: validation, readiness, skips, `$ref` resolution, outcome.

Everything here is pure: it reads and mutates :class:`~dualplane.common.models.Graph`
objects and never touches Redis, so it is cheap enough for the dispatch hot path.
"""

from __future__ import annotations

import graphlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pydantic

from dualplane.common.errors import GraphValidationError
from dualplane.common.models import Graph, Node, NodeStatus
from dualplane.common.statuses import SATISFIED, TERMINAL

if TYPE_CHECKING:
    from dualplane.common.registry import TaskRegistry


GRAPH_FIELD = "_graph"
REF_KEY = "$ref"

NodeErrors = dict[str, list[dict[str, Any]]]


def status_of(node: Node) -> str:
    """The node status as a plain string (enums compare and hash as their value)."""
    status = node.status
    return status.value if hasattr(status, "value") else str(status)


def is_terminal(node: Node) -> bool:
    return node.status in TERMINAL  # a StrEnum member hashes as its value


#: The lane of ``plane: external`` nodes: no stream carries it; a job whose next nodes are external
#: waits in its hash until workers outside dualplane claim and report them over HTTP.
EXTERNAL_LANE = "external"


def lane_of(node: Node) -> str:
    """Where a node runs: ``control``, ``python:<pool>`` or ``external``."""
    plane = node.plane.value if hasattr(node.plane, "value") else str(node.plane)
    if plane == "python":
        return f"python:{node.pool}"
    return plane


def owner_of(lane: str) -> str:
    """The job's ``owner`` field while ``lane`` holds it."""
    return "python" if lane.startswith("python:") else lane


# -- validation ------------------------------------------------------------------------


def validate_graph(document: dict[str, Any] | Graph, registry: TaskRegistry) -> Graph:
    """Parse and check a graph; raise :class:`GraphValidationError` with node-scoped errors.

    Checks, in order: the schema (generated model), unique ids, known needs, no
    cycles (reporting the cycle path), known tasks on the right plane, params
    valid for the task, and ``$ref`` pointing only at upstream nodes.
    """
    graph = _parse(document)
    errors: NodeErrors = {}
    by_id = _unique_nodes(graph, errors)
    for node in graph.nodes:
        if len(set(node.needs)) != len(node.needs):
            _add(errors, node.id, "needs", "needs lists a node twice")
        for need in node.needs:
            if need not in by_id:
                _add(errors, node.id, "needs", f"unknown node {need!r} in needs")
            elif need == node.id:
                _add(errors, node.id, "needs", "a node cannot need itself")
    if not errors:
        _check_cycles(by_id, errors)
    for node in graph.nodes:
        _check_task(node, registry, errors)
    if not errors:
        _check_refs(graph, by_id, errors)
    if errors:
        raise GraphValidationError(errors)
    return graph


def _parse(document: dict[str, Any] | Graph) -> Graph:
    if isinstance(document, Graph):
        return document
    try:
        return Graph.model_validate(document)
    except pydantic.ValidationError as exc:
        raise GraphValidationError(_schema_errors(document, exc)) from None


def _schema_errors(document: Any, exc: pydantic.ValidationError) -> NodeErrors:
    """Map pydantic error locations (``nodes.3.params``) to node ids."""
    nodes = document.get("nodes") if isinstance(document, dict) else None
    errors: NodeErrors = {}
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        owner = GRAPH_FIELD
        if len(loc) >= 2 and loc[0] == "nodes" and isinstance(loc[1], int) and isinstance(nodes, list):
            raw = nodes[loc[1]] if loc[1] < len(nodes) else None
            owner = str(raw.get("id")) if isinstance(raw, dict) and raw.get("id") else f"nodes[{loc[1]}]"
            loc = loc[2:]
        _add(errors, owner, ".".join(str(p) for p in loc) or None, err["msg"])
    return errors


def _unique_nodes(graph: Graph, errors: NodeErrors) -> dict[str, Node]:
    by_id: dict[str, Node] = {}
    for node in graph.nodes:
        if node.id in by_id:
            _add(errors, node.id, "id", f"duplicate node id {node.id!r}")
        by_id[node.id] = node
    return by_id


def _check_cycles(by_id: dict[str, Node], errors: NodeErrors) -> None:
    # graphlib's prepare() costs more than the rest of validation together on small
    # graphs (it runs on every submission), so a cycle-free graph is checked with one
    # pass in the usual order and graphlib only looks for the cycle path.
    seen: set[str] = set()
    for node in by_id.values():
        if not seen.issuperset(node.needs):
            break
        seen.add(node.id)
    else:
        return
    sorter = graphlib.TopologicalSorter({nid: node.needs for nid, node in by_id.items()})
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle = list(reversed(exc.args[1]))  # graphlib lists it against the edge direction
        path = " -> ".join(cycle)
        for nid in dict.fromkeys(cycle):
            _add(errors, nid, "needs", f"dependency cycle: {path}")


def _check_task(node: Node, registry: TaskRegistry, errors: NodeErrors) -> None:
    spec = registry.get(node.task)
    plane = node.plane.value if hasattr(node.plane, "value") else str(node.plane)
    if spec is None and plane == EXTERNAL_LANE:
        return  # what an external worker does is its own: only its name and the params' size are ours
    if spec is None:
        _add(errors, node.id, "task", f"unknown task {node.task!r}")
        return
    if spec.plane != plane and plane != EXTERNAL_LANE:  # an external worker may implement a registered task
        _add(errors, node.id, "plane", f"task {node.task!r} runs on the {spec.plane} plane, not {plane}")
    try:
        spec.params.model_validate(node.params)
    except pydantic.ValidationError as exc:
        for err in exc.errors(include_url=False):
            # An unknown key is wrong whatever its value; only a `$ref` above it excuses it.
            loc = err["loc"][:-1] if err["type"] == "extra_forbidden" else err["loc"]
            if not _points_into_ref(node.params, loc):
                _add(errors, node.id, ".".join(str(p) for p in err["loc"]) or "params", err["msg"])


def _points_into_ref(params: Any, loc: Iterable[Any]) -> bool:
    """True when a params error is about a ``$ref`` value, which is only known at run time."""
    value = params
    for part in loc:
        if is_ref(value):
            return True
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return False
    return is_ref(value)


def _check_refs(graph: Graph, by_id: dict[str, Node], errors: NodeErrors) -> None:
    refs = [(node, field, ref) for node in graph.nodes for field, ref in iter_refs(node.params)]
    if not refs:
        return  # the usual graph: no reachability to compute at all
    known = [source for source in dict.fromkeys(_source(ref) for _, _, ref in refs) if source in by_id]
    bits = {source: 1 << i for i, source in enumerate(known)}
    upstream = _upstream_sources(graph, bits)
    for node, field, ref in refs:
        source = _source(ref)
        if source not in by_id:
            _add(errors, node.id, field, f"$ref {ref!r} names unknown node {source!r}")
        elif not upstream[node.id] & bits[source]:
            _add(errors, node.id, field, f"$ref {ref!r} points at {source!r}, which is not upstream (add it to needs)")
        elif not _ref_shape_ok(ref):
            _add(errors, node.id, field, f"$ref {ref!r} must look like 'node.output' or 'node.output.field'")


def _source(ref: str) -> str:
    return ref.split(".", 1)[0]


def _upstream_sources(graph: Graph, bits: dict[str, int]) -> dict[str, int]:
    """Per node, which ref sources are among its transitive needs, as a bitset over ``bits``.

    Full ancestor sets cost O(nodes²) on a long chain (10k nodes: seconds and gigabytes);
    only the nodes some ``$ref`` names matter, so each node carries just those, one int of
    ``len(bits)`` bits: O((nodes + edges) * refs / 64) word operations in all."""
    found: dict[str, int] = {}
    for node in topological(graph):
        mask = 0
        for need in node.needs:
            mask |= bits.get(need, 0) | found[need]
        found[node.id] = mask
    return found


def _ref_shape_ok(ref: str) -> bool:
    parts = ref.split(".")
    return len(parts) >= 2 and parts[1] in ("output", "artifacts") and all(parts)


def _add(errors: NodeErrors, owner: str, field: str | None, message: str) -> None:
    errors.setdefault(owner, []).append({"field": field, "message": message})


# -- structure -------------------------------------------------------------------------


def ancestors(graph: Graph) -> dict[str, set[str]]:
    """Every node's transitive needs (the graph must be acyclic)."""
    result: dict[str, set[str]] = {}
    for node in topological(graph):
        found: set[str] = set()
        for need in node.needs:
            found.add(need)
            found |= result.get(need, set())
        result[node.id] = found
    return result


def structure_problem(graph: Graph) -> str | None:
    """What makes a graph unrunnable — a duplicate id, an unknown or self ``need``, a cycle —
    or None. Linear (Kahn's algorithm): planes check every graph a message carries, because
    the graph algorithms below assume a well-formed one and a message is not trusted input."""
    seen: set[str] = set()
    for node in graph.nodes:  # the usual graph, needs listed before their nodes: one pass
        if node.id in seen or not seen.issuperset(node.needs):
            break
        seen.add(node.id)
    else:
        return None
    by_id: dict[str, Node] = {}
    for node in graph.nodes:
        if node.id in by_id:
            return f"duplicate node id {node.id!r}"
        by_id[node.id] = node
    waiting: dict[str, int] = {}
    dependents: dict[str, list[str]] = {}
    for node in graph.nodes:
        for need in node.needs:
            if need not in by_id:
                return f"node {node.id!r} needs unknown node {need!r}"
            dependents.setdefault(need, []).append(node.id)
        waiting[node.id] = len(node.needs)
    ready = [nid for nid, count in waiting.items() if count == 0]
    done = 0
    while ready:
        nid = ready.pop()
        done += 1
        for child in dependents.get(nid, ()):
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    if done != len(by_id):
        stuck = sorted(nid for nid, count in waiting.items() if count > 0)
        return f"dependency cycle among {', '.join(map(repr, stuck[:5]))}"
    return None


def topological(graph: Graph) -> list[Node]:
    """Nodes in an order where every node comes after its needs (the graph is acyclic).

    This runs several times per job on the dispatch hot path, so the usual case — nodes
    already listed after their needs — is a single pass without graphlib.
    """
    seen: set[str] = set()
    for node in graph.nodes:
        if not seen.issuperset(node.needs):
            break
        seen.add(node.id)
    else:
        return list(graph.nodes)
    by_id = {node.id: node for node in graph.nodes}
    order = graphlib.TopologicalSorter({n.id: n.needs for n in graph.nodes}).static_order()
    return [by_id[nid] for nid in order]


def plan_for_lane(graph: Graph, lane: str) -> list[Node]:
    """The nodes a lane can run now without the other plane: non-terminal nodes of the
    lane whose every need is terminal or itself in the plan (topological order)."""
    by_id = {node.id: node for node in graph.nodes}
    planned: set[str] = set()
    result: list[Node] = []
    for node in topological(graph):
        if is_terminal(node) or lane_of(node) != lane:
            continue
        if all(is_terminal(by_id[n]) or n in planned for n in node.needs):
            planned.add(node.id)
            result.append(node)
    return result


def blocked_reason(node: Node, by_id: dict[str, Node]) -> str | None:
    """Why a node whose needs are all terminal must be skipped, or None if it may run."""
    for need in node.needs:
        status = status_of(by_id[need])
        if status not in SATISFIED:
            return f"needs {need!r}, which {'was ' if status != 'failed' else ''}{status}"
    return None


def propagate_skips(graph: Graph) -> list[Node]:
    """Skip every non-terminal node that can never run because a need did not succeed.

    Any plane may do this bookkeeping (it needs no task code), which is what keeps
    a join from stalling when a branch failed on the other plane.
    """
    by_id = {node.id: node for node in graph.nodes}
    skipped: list[Node] = []
    for node in topological(graph):
        if is_terminal(node) or not all(is_terminal(by_id[n]) for n in node.needs):
            continue
        reason = blocked_reason(node, by_id)
        if reason is not None:
            node.status = NodeStatus.skipped
            node.reason = reason
            skipped.append(node)
    return skipped


def next_lane(graph: Graph) -> str | None:
    """The lane that should own the graph next: the lane of the first ready node."""
    by_id = {node.id: node for node in graph.nodes}
    for node in topological(graph):
        if not is_terminal(node) and all(is_terminal(by_id[n]) for n in node.needs):
            return lane_of(node)
    return None


def job_outcome(graph: Graph) -> str | None:
    """The final job status once every node is terminal, else None.

    ``partial`` means something failed but an independent branch still produced a
    result (a leaf node succeeded); ``cancelled`` wins over both.
    """
    statuses = [status_of(n) for n in graph.nodes]
    if any(s not in TERMINAL for s in statuses):
        return None
    if all(s == "succeeded" for s in statuses):
        return "succeeded"
    if "cancelled" in statuses:
        return "cancelled"
    needed = {need for node in graph.nodes for need in node.needs}
    leaves_ok = any(status_of(n) == "succeeded" for n in graph.nodes if n.id not in needed)
    return "partial" if leaves_ok else "failed"


def progress_of(graph: Graph) -> float:
    """Mean node progress, terminal nodes counting as done."""
    total = 0.0
    for node in graph.nodes:
        total += 1.0 if is_terminal(node) else float(node.progress or 0.0)
    return round(total / len(graph.nodes), 4)


# -- $ref ------------------------------------------------------------------------------


def is_ref(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(REF_KEY), str)


def iter_refs(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Yield ``(param path, ref)`` for every ``{"$ref": ...}`` inside params, in document order.

    A loop over an explicit stack: validation must not depend on how deep params nest, and
    skipping scalars makes it cheaper than a recursive generator on the submission path."""
    if not value:
        return
    stack = [(path, value)]
    while stack:
        path, value = stack.pop()
        if is_ref(value):
            yield path or "params", value[REF_KEY]
            continue
        items = reversed(value.items()) if isinstance(value, dict) else reversed(list(enumerate(value)))
        for key, item in items:
            if isinstance(item, (dict, list)):
                stack.append((f"{path}.{key}" if path else str(key), item))


def resolve_refs(value: Any, by_id: dict[str, Node]) -> Any:
    """Replace every ``{"$ref": "node.output.a.b"}`` with the upstream value."""
    if is_ref(value):
        return _lookup(value[REF_KEY], by_id)
    if isinstance(value, dict):
        return {key: resolve_refs(item, by_id) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve_refs(item, by_id) for item in value]
    return value


def _lookup(ref: str, by_id: dict[str, Node]) -> Any:
    source, kind, *path = ref.split(".")
    node = by_id[source]
    current: Any = node.output if kind == "output" else _artifacts_by_name(node)
    walked = f"{source}.{kind}"
    if kind == "artifacts" and path:
        # Artifact names may hold dots (`music.wav`): match the longest name first.
        for cut in range(len(path), 0, -1):
            name = ".".join(path[:cut])
            if name in current:
                current, walked, path = current[name], f"{walked}.{name}", path[cut:]
                break
    for part in path:
        walked += f".{part}"
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            raise KeyError(f"$ref {ref!r}: {walked!r} is not in the upstream output")
    return current


def _artifacts_by_name(node: Node) -> dict[str, Any]:
    return {a.name: a.model_dump() for a in node.artifacts}
