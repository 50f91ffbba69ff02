"""Unit tests of the pure graph core (no servers): validation, lanes, skips, outcome, `$ref`."""

from __future__ import annotations

import itertools
import tracemalloc
from typing import Any

import pytest

from dualplane.common.errors import GraphValidationError
from dualplane.common.graph import (
    ancestors,
    iter_refs,
    job_outcome,
    next_lane,
    plan_for_lane,
    progress_of,
    propagate_skips,
    resolve_refs,
    validate_graph,
)
from dualplane.common.models import ArtifactRef, Graph, Node, NodeStatus
from dualplane.tasks import default_registry

REGISTRY = default_registry()


# -- builders ----------------------------------------------------------------------------


def py(nid: str, *needs: str, task: str = "noop", **fields: Any) -> dict[str, Any]:
    """A python-plane node document."""
    return {"id": nid, "task": task, "plane": "python", "needs": list(needs), **fields}


def ctl(nid: str, *needs: str, task: str = "emit", **fields: Any) -> dict[str, Any]:
    """A control-plane node document."""
    return {"id": nid, "task": task, "plane": "control", "needs": list(needs), **fields}


def ref(path: str) -> dict[str, str]:
    return {"$ref": path}


def graph(*nodes: dict[str, Any]) -> Graph:
    """A parsed graph (schema only, no registry checks)."""
    return Graph.model_validate({"nodes": list(nodes)})


def errors_of(*nodes: dict[str, Any], document: Any = None) -> dict[str, list[dict[str, Any]]]:
    """The node errors validation raises for these nodes (or a raw document)."""
    with pytest.raises(GraphValidationError) as info:
        validate_graph(document if document is not None else {"nodes": list(nodes)}, REGISTRY)
    return info.value.node_errors


def messages(errors: dict[str, list[dict[str, Any]]], nid: str) -> str:
    return " | ".join(e["message"] for e in errors.get(nid, []))


def fields(errors: dict[str, list[dict[str, Any]]], nid: str) -> list[Any]:
    return [e["field"] for e in errors.get(nid, [])]


def mark(g: Graph, **statuses: str) -> Graph:
    """Set node statuses by id (as NodeStatus members)."""
    by_id = {n.id: n for n in g.nodes}
    for nid, status in statuses.items():
        by_id[nid].status = NodeStatus(status)
    return g


def ids(nodes: list[Node]) -> list[str]:
    return [n.id for n in nodes]


def by_id(g: Graph) -> dict[str, Node]:
    return {n.id: n for n in g.nodes}


# -- validation: structure ---------------------------------------------------------------


def test_valid_graph_is_returned_as_a_graph():
    g = validate_graph(
        {
            "nodes": [
                ctl("a", params={"value": {"x": 1}}),
                py("b", "a", params={"value": ref("a.output.x")}),
            ]
        },
        REGISTRY,
    )
    assert isinstance(g, Graph)
    assert ids(g.nodes) == ["a", "b"]
    assert g.nodes[1].status == NodeStatus.pending


def test_validate_accepts_an_already_parsed_graph():
    g = graph(py("a"), py("b", "a"))
    assert validate_graph(g, REGISTRY) is g


def test_error_message_of_the_exception_names_the_node():
    with pytest.raises(GraphValidationError) as info:
        validate_graph({"nodes": [py("a", task="nope")]}, REGISTRY)
    assert "a" in str(info.value) and "nope" in str(info.value)


def test_duplicate_node_ids_are_reported_on_that_id():
    errors = errors_of(py("a"), py("a"))
    assert "duplicate" in messages(errors, "a")
    assert "id" in fields(errors, "a")


def test_unknown_need_is_reported_on_the_needing_node():
    errors = errors_of(py("a"), py("b", "ghost"))
    assert list(errors) == ["b"]
    assert errors["b"][0]["field"] == "needs"
    assert "ghost" in errors["b"][0]["message"]


def test_node_needing_itself_is_rejected():
    errors = errors_of(py("a", "a"))
    assert "itself" in messages(errors, "a")
    assert fields(errors, "a") == ["needs"]


def test_needs_listing_a_node_twice_is_rejected():
    errors = errors_of(py("a"), py("b", "a", "a"))
    assert "twice" in messages(errors, "b")
    assert "a" not in errors


def _cycle_path(message: str) -> list[str]:
    return message.split("dependency cycle:", 1)[1].strip().split(" -> ")


def test_cycle_is_reported_with_its_closed_path_on_every_node_of_the_cycle():
    errors = errors_of(py("a", "c"), py("b", "a"), py("c", "b"), py("outside"), py("down", "a"))
    assert set(errors) == {"a", "b", "c"}
    for nid in ("a", "b", "c"):
        (err,) = errors[nid]
        assert err["field"] == "needs"
        path = _cycle_path(err["message"])
        assert path[0] == path[-1], "the cycle path is closed"
        assert sorted(path[:-1]) == ["a", "b", "c"], "every node of the cycle is named once"


def test_cycle_path_follows_the_needs_direction():
    # a needs b, b needs c, c needs a: each node in the path needs the next one.
    errors = errors_of(py("a", "b"), py("b", "c"), py("c", "a"))
    path = _cycle_path(errors["a"][0]["message"])
    needs = {"a": "b", "b": "c", "c": "a"}
    for here, there in itertools.pairwise(path):
        assert needs[here] == there


def test_two_node_cycle_is_reported():
    errors = errors_of(py("a", "b"), py("b", "a"))
    assert set(errors) == {"a", "b"}
    assert "cycle" in messages(errors, "a")


# -- validation: tasks and params --------------------------------------------------------


def test_unknown_task_is_reported_on_field_task():
    errors = errors_of(py("a", task="no_such_task"))
    assert fields(errors, "a") == ["task"]
    assert "no_such_task" in messages(errors, "a")


def test_task_on_the_wrong_plane_is_rejected():
    errors = errors_of(ctl("a", task="noop"), py("b", task="emit"))
    assert fields(errors, "a") == ["plane"]
    assert "python" in messages(errors, "a")
    assert fields(errors, "b") == ["plane"]
    assert "control" in messages(errors, "b")


def test_params_out_of_range_are_reported_on_the_param_field():
    errors = errors_of(py("a", task="sleep", params={"seconds": -1}))
    assert fields(errors, "a") == ["seconds"]


def test_unknown_param_is_rejected_because_params_models_forbid_extras():
    errors = errors_of(py("a", task="sleep", params={"secs": 1}))
    assert fields(errors, "a") == ["secs"]


def test_missing_required_param_is_rejected():
    errors = errors_of(py("a", task="checksum"))
    assert fields(errors, "a") == ["text"]


def test_errors_of_several_nodes_are_all_reported():
    errors = errors_of(
        py("a", task="sleep", params={"seconds": -1}), py("b", task="nope"), py("ok")
    )
    assert set(errors) == {"a", "b"}


# -- validation: schema ------------------------------------------------------------------


def test_bad_node_id_is_a_schema_error_on_that_id():
    errors = errors_of(py("a.b"))
    assert "id" in fields(errors, "a.b")


def test_missing_task_is_a_schema_error_on_that_node():
    errors = errors_of({"id": "a", "plane": "python"})
    assert fields(errors, "a") == ["task"]


def test_unknown_plane_is_a_schema_error_on_that_node():
    errors = errors_of(py("a", plane="gpu"))
    assert fields(errors, "a") == ["plane"]


def test_schema_error_on_a_node_without_id_is_named_by_index():
    errors = errors_of(py("a"), {"task": "noop", "plane": "python"})
    assert "nodes[1]" in errors
    assert "id" in fields(errors, "nodes[1]")


def test_empty_nodes_is_a_graph_error():
    errors = errors_of(document={"nodes": []})
    assert list(errors) == ["_graph"]
    assert fields(errors, "_graph") == ["nodes"]


def test_missing_nodes_and_unknown_keys_are_graph_errors():
    errors = errors_of(document={"bogus": 1})
    assert set(fields(errors, "_graph")) == {"nodes", "bogus"}


# -- validation: $ref --------------------------------------------------------------------


def test_ref_to_a_transitive_upstream_node_is_accepted():
    validate_graph(
        {"nodes": [ctl("a"), py("b", "a"), py("c", "b", params={"value": ref("a.output.x")})]},
        REGISTRY,
    )


def test_ref_to_a_node_that_is_not_upstream_is_rejected():
    errors = errors_of(ctl("a"), py("b", params={"value": ref("a.output.x")}))
    assert fields(errors, "b") == ["value"]
    assert "not upstream" in messages(errors, "b")


def test_ref_to_a_downstream_node_is_rejected():
    errors = errors_of(py("a", params={"value": ref("b.output")}), py("b", "a"))
    assert "not upstream" in messages(errors, "a")


def test_ref_to_an_unknown_node_is_rejected():
    errors = errors_of(py("a", params={"value": ref("ghost.output")}))
    assert "unknown node 'ghost'" in messages(errors, "a")


def test_nested_ref_is_reported_with_its_param_path():
    errors = errors_of(
        ctl("a"), ctl("b", task="collect", params={"values": {"x": [1, ref("z.output")]}})
    )
    assert fields(errors, "b") == ["values.x.1"]


def test_ref_with_a_bad_shape_is_rejected():
    errors = errors_of(ctl("a"), py("b", "a", params={"value": ref("a.outputs.x")}))
    assert "must look like" in messages(errors, "b")


def test_ref_where_a_str_is_expected_is_accepted_at_validation_time():
    g = validate_graph(
        {"nodes": [ctl("a"), py("b", "a", task="checksum", params={"text": ref("a.output.text")})]},
        REGISTRY,
    )
    assert g.nodes[1].params["text"] == ref("a.output.text")


def test_ref_where_a_number_is_expected_is_accepted_at_validation_time():
    validate_graph(
        {"nodes": [ctl("a"), py("b", "a", task="sleep", params={"seconds": ref("a.output.s")})]},
        REGISTRY,
    )


def test_artifact_ref_is_accepted():
    validate_graph(
        {
            "nodes": [
                py("a", task="checksum", params={"text": "x"}),
                py("b", "a", task="checksum", params={"text": ref("a.artifacts.checksum.txt.key")}),
            ]
        },
        REGISTRY,
    )


def test_unknown_param_holding_a_ref_is_still_rejected():
    errors = errors_of(ctl("a"), py("b", "a", task="sleep", params={"secs": ref("a.output.s")}))
    assert fields(errors, "b") == ["secs"]


def test_iter_refs_yields_param_paths():
    params = {"a": ref("x.output"), "b": {"c": [0, ref("y.output.z")]}, "d": 3}
    assert list(iter_refs(params)) == [("a", "x.output"), ("b.c.1", "y.output.z")]


def chain_of(length: int, refs: dict[int, int] | None = None, *, reverse: bool = False) -> dict[str, Any]:
    """A chain n0 → n1 → … ; ``refs`` maps a node's index to the index its `$ref` names."""
    nodes = [py(f"n{i}", *([f"n{i - 1}"] if i else [])) for i in range(length)]
    for node_index, source in (refs or {}).items():
        nodes[node_index]["params"] = {"value": ref(f"n{source}.output")}
    return {"nodes": nodes[::-1] if reverse else nodes}


def validation_peak_bytes(document: dict[str, Any]) -> tuple[int, Graph | dict[str, Any]]:
    """Peak memory validating ``document`` (tracemalloc), with the graph or the node errors."""
    tracemalloc.start()
    try:
        result: Graph | dict[str, Any] = validate_graph(document, REGISTRY)
    except GraphValidationError as exc:
        result = exc.node_errors
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, result


@pytest.mark.parametrize("refs", [None, {9_999: 0, 5_000: 4_999, 200: 100}], ids=["no refs", "three refs"])
@pytest.mark.parametrize("reverse", [False, True], ids=["in order", "leaves first"])
def test_a_10k_node_chain_validates_in_memory_linear_in_its_size(refs, reverse):
    """Ancestor sets of every node are O(n²): 2.4 GB for this chain. Parsing it alone takes
    about 10 MB (10k Node models); reachability may add little to that."""
    peak, result = validation_peak_bytes(chain_of(10_000, refs, reverse=reverse))
    assert isinstance(result, Graph) and len(result.nodes) == 10_000
    assert peak < 40 * 1024 * 1024, f"validation peaked at {peak / 1e6:.0f} MB"


def test_a_ref_to_a_downstream_node_of_a_long_chain_is_still_rejected():
    peak, errors = validation_peak_bytes(chain_of(10_000, {100: 9_000, 9_999: 0}))
    assert isinstance(errors, dict) and list(errors) == ["n100"]
    assert "not upstream" in messages(errors, "n100")
    assert peak < 40 * 1024 * 1024


def test_refs_check_each_source_against_its_own_node():
    """Bitsets over the referenced sources: each ref is judged by its own source's bit."""
    errors = errors_of(py("a"), py("b"), py("c", "a", params={"value": [ref("a.output"), ref("b.output")]}),
                       py("d", "b", params={"value": ref("b.output")}))
    assert list(errors) == ["c"] and fields(errors, "c") == ["value.1"]


def test_iter_refs_does_not_recurse_into_deep_params():
    value: Any = ref("a.output")
    for _ in range(5_000):  # far past Python's recursion limit
        value = {"k": [value]}
    ((path, found),) = iter_refs(value)
    assert found == "a.output" and path.startswith("k.0.k.0") and path.count(".") == 9_999


def test_ancestors_are_transitive():
    g = graph(py("a"), py("b", "a"), py("c", "b"), py("d"))
    assert ancestors(g) == {"a": set(), "b": {"a"}, "c": {"a", "b"}, "d": set()}


# -- plan_for_lane -----------------------------------------------------------------------


def mixed() -> Graph:
    """control `start` → python chain `p1 → p2` → control `join` → python `after`."""
    return graph(
        ctl("start"), py("p1", "start"), py("p2", "p1"), ctl("join", "p2"), py("after", "join")
    )


def test_control_lane_plan_is_only_the_first_control_node_while_nothing_ran():
    g = mixed()
    assert ids(plan_for_lane(g, "control")) == ["start"]
    assert plan_for_lane(g, "python:default") == []


def test_python_lane_plan_holds_the_python_chain_but_not_nodes_behind_pending_control():
    g = mark(mixed(), start="succeeded")
    assert ids(plan_for_lane(g, "python:default")) == ["p1", "p2"]
    assert plan_for_lane(g, "control") == []


def test_control_lane_plan_after_the_python_chain_finished():
    g = mark(mixed(), start="succeeded", p1="succeeded", p2="succeeded")
    assert ids(plan_for_lane(g, "control")) == ["join"]
    assert plan_for_lane(g, "python:default") == []


def test_plan_skips_terminal_nodes_of_the_lane():
    g = mark(mixed(), start="succeeded", p1="succeeded")
    assert ids(plan_for_lane(g, "python:default")) == ["p2"]


def test_plan_is_in_topological_order():
    g = graph(py("c", "b"), py("b", "a"), py("a"))
    assert ids(plan_for_lane(g, "python:default")) == ["a", "b", "c"]


def test_pool_node_is_only_in_its_pool_lane():
    g = graph(py("cpu"), py("gpu_node", pool="gpu"), py("after", "gpu_node"))
    assert ids(plan_for_lane(g, "python:gpu")) == ["gpu_node"]
    assert ids(plan_for_lane(g, "python:default")) == ["cpu"]
    mark(g, gpu_node="succeeded")
    assert ids(plan_for_lane(g, "python:default")) == ["cpu", "after"]


def test_next_lane_is_the_lane_of_the_first_ready_node():
    g = mixed()
    assert next_lane(g) == "control"
    mark(g, start="succeeded")
    assert next_lane(g) == "python:default"
    mark(g, p1="succeeded", p2="succeeded")
    assert next_lane(g) == "control"
    mark(g, join="succeeded", after="succeeded")
    assert next_lane(g) is None


def test_next_lane_names_the_pool():
    assert next_lane(graph(py("a", pool="gpu"))) == "python:gpu"


# -- propagate_skips ---------------------------------------------------------------------


def test_failure_skips_dependents_transitively_with_the_failed_need_as_reason():
    g = graph(py("a"), py("b", "a"), py("c", "b"), py("x"), py("y", "x"))
    mark(g, a="failed")
    skipped = propagate_skips(g)
    nodes = by_id(g)
    assert ids(skipped) == ["b", "c"]
    assert nodes["b"].status == NodeStatus.skipped
    assert nodes["c"].status == NodeStatus.skipped
    assert "'a'" in nodes["b"].reason and "failed" in nodes["b"].reason
    assert "'b'" in nodes["c"].reason and "skipped" in nodes["c"].reason
    # the independent branch is untouched
    assert nodes["x"].status == NodeStatus.pending
    assert nodes["y"].status == NodeStatus.pending
    assert nodes["y"].reason is None


def test_join_with_a_skipped_parent_becomes_skipped_once_the_other_parent_is_done():
    g = graph(py("a"), py("b", "a"), py("c"), ctl("join", "b", "c", task="collect"))
    mark(g, a="failed", c="succeeded")
    propagate_skips(g)
    nodes = by_id(g)
    assert nodes["join"].status == NodeStatus.skipped
    assert "'b'" in nodes["join"].reason
    assert job_outcome(g) == "failed"
    assert next_lane(g) is None


def test_join_waits_while_the_other_parent_still_runs():
    g = graph(py("a"), py("c"), ctl("join", "a", "c"))
    mark(g, a="failed", c="running")
    assert propagate_skips(g) == []
    assert by_id(g)["join"].status == NodeStatus.pending


def test_cancelled_need_skips_dependents():
    g = mark(graph(py("a"), py("b", "a")), a="cancelled")
    propagate_skips(g)
    assert by_id(g)["b"].status == NodeStatus.skipped
    assert "cancelled" in by_id(g)["b"].reason


def test_propagate_skips_leaves_a_healthy_graph_alone():
    g = mark(graph(py("a"), py("b", "a")), a="succeeded")
    assert propagate_skips(g) == []
    assert by_id(g)["b"].status == NodeStatus.pending


def test_propagate_skips_is_idempotent():
    g = mark(graph(py("a"), py("b", "a")), a="failed")
    assert ids(propagate_skips(g)) == ["b"]
    assert propagate_skips(g) == []


# -- job_outcome and progress ------------------------------------------------------------


def test_outcome_is_none_while_any_node_is_not_terminal():
    for status in ("pending", "queued", "running"):
        g = mark(graph(py("a"), py("b")), a="succeeded", b=status)
        assert job_outcome(g) is None


def test_outcome_succeeded_when_all_succeeded():
    g = mark(graph(py("a"), py("b", "a")), a="succeeded", b="succeeded")
    assert job_outcome(g) == "succeeded"


def test_outcome_failed_when_the_only_leaf_failed():
    g = mark(graph(py("a"), py("b", "a")), a="succeeded", b="failed")
    assert job_outcome(g) == "failed"


def test_outcome_failed_when_the_only_leaf_was_skipped():
    g = mark(graph(py("a"), py("b", "a")), a="failed", b="skipped")
    assert job_outcome(g) == "failed"


def test_outcome_partial_when_an_independent_leaf_succeeded():
    g = mark(graph(py("a"), py("b", "a"), py("c")), a="failed", b="skipped", c="succeeded")
    assert job_outcome(g) == "partial"


def test_outcome_cancelled_wins():
    g = mark(graph(py("a"), py("b"), py("c")), a="cancelled", b="failed", c="succeeded")
    assert job_outcome(g) == "cancelled"


def test_progress_counts_terminal_nodes_as_one():
    g = graph(py("a"), py("b"), py("c"), py("d"))
    mark(g, a="succeeded", b="failed")
    nodes = by_id(g)
    nodes["a"].progress = 0.0  # terminal: counts as done regardless
    nodes["c"].progress = 0.5
    assert progress_of(g) == pytest.approx((1 + 1 + 0.5 + 0) / 4)


def test_progress_is_one_when_everything_is_terminal():
    g = mark(graph(py("a"), py("b")), a="skipped", b="cancelled")
    assert progress_of(g) == 1.0


# -- resolve_refs ------------------------------------------------------------------------


def _artifact(name: str) -> ArtifactRef:
    return ArtifactRef(
        name=name,
        bucket="bkt",
        key=f"jobs/j/a/{name}",
        size=3,
        sha256="0" * 64,
        content_type="text/plain",
    )


def done() -> dict[str, Node]:
    g = graph(py("a", task="checksum"), py("b"))
    nodes = by_id(g)
    nodes["a"].status = NodeStatus.succeeded
    nodes["a"].output = {"x": {"y": [10, {"z": "deep"}]}, "n": 3}
    nodes["a"].artifacts = [_artifact("out.bin"), _artifact("checksum.txt")]
    return nodes


def test_resolve_nested_fields_and_list_indexes():
    nodes = done()
    assert resolve_refs(ref("a.output.n"), nodes) == 3
    assert resolve_refs(ref("a.output.x.y.0"), nodes) == 10
    assert resolve_refs(ref("a.output.x.y.1.z"), nodes) == "deep"


def test_resolve_whole_output():
    nodes = done()
    assert resolve_refs(ref("a.output"), nodes) == {"x": {"y": [10, {"z": "deep"}]}, "n": 3}


def test_resolve_refs_inside_params_and_leaves_other_values_alone():
    nodes = done()
    params = {"text": ref("a.output.x.y.1.z"), "list": [1, ref("a.output.n")], "plain": {"k": "v"}}
    assert resolve_refs(params, nodes) == {"text": "deep", "list": [1, 3], "plain": {"k": "v"}}


def test_resolve_artifact_refs_by_name():
    nodes = done()
    assert resolve_refs(ref("a.artifacts.out.bin.key"), nodes) == "jobs/j/a/out.bin"
    whole = resolve_refs(ref("a.artifacts.checksum.txt"), nodes)
    assert whole["bucket"] == "bkt" and whole["name"] == "checksum.txt"
    assert set(resolve_refs(ref("a.artifacts"), nodes)) == {"out.bin", "checksum.txt"}


def test_resolve_artifact_ref_without_a_dot_in_the_name():
    nodes = done()
    nodes["a"].artifacts = [_artifact("plain")]
    assert resolve_refs(ref("a.artifacts.plain.size"), nodes) == 3


def test_missing_field_raises_keyerror_naming_the_ref_and_where_it_stopped():
    nodes = done()
    with pytest.raises(KeyError) as info:
        resolve_refs(ref("a.output.x.missing.more"), nodes)
    message = str(info.value)
    assert "a.output.x.missing.more" in message
    assert "'a.output.x.missing'" in message


def test_list_index_out_of_range_raises_keyerror():
    with pytest.raises(KeyError, match="a.output.x.y.5"):
        resolve_refs(ref("a.output.x.y.5"), done())


def test_missing_artifact_raises_keyerror():
    with pytest.raises(KeyError, match="a.artifacts.nope"):
        resolve_refs(ref("a.artifacts.nope.key"), done())


def test_ref_into_a_node_without_output_raises_keyerror():
    with pytest.raises(KeyError, match="not in the upstream output"):
        resolve_refs(ref("b.output.x"), done())
