"""Structured logs: every line logged while a job runs carries its job_id and request_id."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from dualplane.common import logs
from dualplane.control_plane import ControlPlane
from tests.helpers import RunningWorker, wait_for_job


@pytest.fixture
def captured():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logs.configure("INFO", json=True, stream=stream)
    yield stream
    root.handlers[:], level = saved
    root.setLevel(level)


async def test_every_line_of_a_running_job_carries_job_and_request_ids(
    captured: io.StringIO, control_plane: ControlPlane, worker: RunningWorker
):
    graph = {"nodes": [
        {"id": "prep", "task": "emit", "plane": "control", "params": {"value": {"text": "hello"}}},
        {"id": "sum", "task": "checksum", "plane": "python", "needs": ["prep"],
         "params": {"text": {"$ref": "prep.output.text"}}},
        {"id": "bad", "task": "fail", "plane": "python", "needs": ["prep"]},
    ]}
    job_id = (await control_plane.submit(graph, request_id="req-log-1", user="alice")).job_id
    await wait_for_job(control_plane, job_id)

    lines = [orjson.loads(line) for line in captured.getvalue().splitlines()]
    about_job = [line for line in lines if job_id in line["message"] or line.get("job_id") == job_id
                 or line["logger"].startswith("dualplane.task.")]
    assert len(about_job) >= 5  # submitted, three node ends, a handoff, the task's own line...
    for line in about_job:
        assert line.get("job_id") == job_id and line.get("request_id") == "req-log-1", line
    task_line = next(line for line in about_job if line["logger"] == "dualplane.task.checksum")
    assert task_line["node_id"] == "sum" and task_line["plane"] == "python"  # from the task's worker thread
    assert {line["plane"] for line in about_job} == {"control", "python"}
    # a failed task leaves its traceback in the worker's log, under the node's ids
    (failure,) = [line for line in about_job if line.get("node_id") == "bad" and "exception" in line]
    assert failure["level"] == "error" and "attempt 1 raised ValueError" in failure["message"]
    assert 'basic.py", line' in failure["exception"] and "in fail" in failure["exception"]


def test_text_format_for_a_terminal_names_the_ids():
    record = logging.LogRecord("dualplane.x", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    with logs.bound(job_id="j1", request_id="r1"):
        logs.ContextFilter().filter(record)
    text = logs.TextFormatter().format(record)
    assert "job=j1" in text and "req=r1" in text and text.endswith("hello there")
