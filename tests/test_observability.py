"""Observability: the metrics both planes expose, the Prometheus rules and config (promtool),
the Grafana dashboards cross-checked against what the running services expose, and a real
Prometheus scraping a real control plane and worker over HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import types
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict

from dualplane.common.context import TaskContext
from dualplane.common.registry import task
from dualplane.common.retry import NO_RETRY
from dualplane.common.settings import Settings
from dualplane.common.telemetry import PlaneMetrics, job_task
from dualplane.control_plane import ControlPlane, create_app
from dualplane.control_plane.auth import Authenticator
from dualplane.data_plane import Worker
from dualplane.data_plane import metrics as worker_metrics
from dualplane.data_plane.metrics import GpuCollector
from dualplane.devstack.services import free_port
from dualplane.tasks import default_registry
from tests.helpers import local_model_registry, unique_name

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "prometheus"
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
#: Series Prometheus itself adds to every target.
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
                        "scrape_samples_post_metric_relabeling", "scrape_series_added", "ALERTS"}


def _tool(name: str) -> str:
    """The path of a Debian `prometheus` package binary; a failure (never a skip) when missing,
    so CI cannot pass without running these checks."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: `make deps` installs the Debian package prometheus")
    return path


def _exporter_names(file: str) -> set[str]:
    text = (PROMETHEUS_DIR / "exporters" / file).read_text()
    return {line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")}


# -- PromQL: which metric names an expression uses --------------------------------------------

_NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL (or Grafana-templated PromQL) expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    expr = re.sub(r"\$\{[^}]*\}|\$\w+", "", expr)  # Grafana variables
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group(0).lower() not in _NOT_METRICS:
            names.add(match.group(0))
    return names


def _template_expr(query: Any) -> str:
    """The PromQL inside a Grafana query variable (``label_values(expr, label)``)."""
    text = query.get("query", "") if isinstance(query, dict) else str(query)
    found = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", text)
    return found.group(1) if found else re.sub(r"^\s*(query_result|metrics)\((.*)\)\s*$", r"\2", text)


def dashboard_exprs() -> dict[str, str]:
    """``where → expr`` of every panel target and query variable of every dashboard."""
    exprs = {}
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        panels = list(board["panels"])
        while panels:
            panel = panels.pop()
            panels.extend(panel.get("panels", []))
            for target in panel.get("targets", []):
                exprs[f"{path.name}: {panel['title']} ({target['refId']})"] = target["expr"]
        for variable in board.get("templating", {}).get("list", []):
            if variable.get("type") == "query":
                exprs[f"{path.name}: variable {variable['name']}"] = _template_expr(variable["query"])
    return exprs


def rule_exprs() -> dict[str, str]:
    exprs = {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                exprs[f"{path.name}: {rule.get('alert') or rule.get('record')}"] = rule["expr"]
    return exprs


def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.9, sum by (le, task) (rate(dualplane_job_duration_seconds_bucket'
            '{task=~"$task",x="a b"}[$__rate_interval]))) / on (pool) group_left max(up offset 5m) > 0.95 '
            'unless on(pool) DCGM_FI_DEV_FB_USED and bool 1e3')
    assert metric_names(expr) == {"dualplane_job_duration_seconds_bucket", "up", "DCGM_FI_DEV_FB_USED"}
    assert _template_expr({"query": 'label_values(dualplane_busy_jobs{job="w"}, pool)'}) == \
        'dualplane_busy_jobs{job="w"}'


# -- unit: the metric objects -----------------------------------------------------------------


def _graph(*nodes: dict[str, Any]) -> Any:
    return types.SimpleNamespace(nodes=[types.SimpleNamespace(needs=[], **n) for n in nodes])


def test_job_task_is_the_task_of_the_result_node() -> None:
    assert job_task(_graph({"id": "a", "task": "noop"})) == "noop"
    chain = _graph({"id": "a", "task": "plan_song"}, {"id": "b", "task": "mux_media"})
    chain.nodes[1].needs = ["a"]
    assert job_task(chain) == "mux_media"
    assert job_task(_graph({"id": "a", "task": "noop"}, {"id": "b", "task": "sleep"})) == "multi"


def _samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_throughput_outputs_go_to_histograms_by_task() -> None:
    metrics = PlaneMetrics(None, "python")
    metrics.node_finished("generate_music", "succeeded", 2.0, {"tokens_per_s": 50.0, "audio": "x"})
    metrics.node_finished("render_video", "succeeded", 3.0, {"steps_per_s": 4})
    metrics.node_finished("render_video", "succeeded", 3.0, {"steps_per_s": None})  # not reported
    metrics.node_finished("noop", "failed", 0.1, None)
    samples = _samples(metrics.registry)
    assert samples[("dualplane_task_tokens_per_second_count", frozenset({("task", "generate_music")}))] == 1
    assert samples[("dualplane_task_tokens_per_second_sum", frozenset({("task", "generate_music")}))] == 50
    assert samples[("dualplane_task_steps_per_second_count", frozenset({("task", "render_video")}))] == 1
    assert samples[("dualplane_nodes_finished_total", frozenset({("task", "noop"), ("status", "failed")}))] == 1


def test_job_finished_observes_submit_to_finish_time() -> None:
    metrics = PlaneMetrics(None, "python")
    metrics.job_finished(_graph({"id": "a", "task": "noop"}), "succeeded", time.time() - 2.0)
    samples = _samples(metrics.registry)
    labels = frozenset({("status", "succeeded"), ("task", "noop")})
    assert samples[("dualplane_jobs_finished_total", labels)] == 1
    assert 2.0 <= samples[("dualplane_job_duration_seconds_sum", labels)] < 10.0


def test_model_loads_are_counted_with_their_seconds(tmp_path: Path) -> None:
    from dualplane.data_plane.metrics import ModelMetrics
    from dualplane.ml.model_store import ModelManager, ModelRegistry, ModelStore

    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "w.bin").write_bytes(b"\0" * 1024)
    registry = ModelRegistry.from_dict({"models": {"tiny": {"kind": "test", "source": f"local:{weights}"}}})
    manager = ModelManager(ModelStore(registry, None, tmp_path / "cache"), max_bytes=1 << 30, device="cpu")
    prom = CollectorRegistry()
    ModelMetrics(prom).attach(manager)

    def loader(path: Path, device: str, dtype: Any) -> object:
        time.sleep(0.06)
        return object()

    def broken(path: Path, device: str, dtype: Any) -> object:
        raise OSError("corrupt weights")

    manager.load("tiny", loader)
    manager.load("tiny", loader)  # warm: a hit, not a load
    with pytest.raises(OSError):
        manager.load("tiny", broken)
    samples = _samples(prom)
    assert samples[("dualplane_model_loads_total", frozenset({("model", "tiny"), ("result", "ok")}))] == 1
    assert samples[("dualplane_model_loads_total", frozenset({("model", "tiny"), ("result", "error")}))] == 1
    assert samples[("dualplane_model_load_seconds_count", frozenset({("model", "tiny")}))] == 1
    assert samples[("dualplane_model_load_seconds_sum", frozenset({("model", "tiny")}))] >= 0.05
    assert samples[("dualplane_model_cache_hits_total", frozenset())] == 1
    assert samples[("dualplane_model_warm_models", frozenset())] == 1


def test_gpu_collector_declares_every_metric_it_can_export() -> None:
    """No GPU here, so the CUDA/NVML branch is not exercised (nothing is faked): the names it
    would export are read from the code and checked against what it declares."""
    source = Path(worker_metrics.__file__).read_text()
    emitted = set(re.findall(r'"(dualplane_gpu_[a-z_]+)"', source))
    assert emitted == set(GpuCollector.METRIC_NAMES)


def test_gpu_collector_is_a_noop_on_a_cpu_host() -> None:
    import torch  # the real one: this host has no CUDA device

    assert not torch.cuda.is_available()
    registry = CollectorRegistry()
    registry.register(GpuCollector())
    assert generate_latest(registry) == b""


# -- promtool ---------------------------------------------------------------------------------


def _promtool(*args: str) -> str:
    result = subprocess.run([_tool("promtool"), *args], check=False, cwd=PROMETHEUS_DIR, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_promtool_check_config() -> None:
    _promtool("check", "config", "prometheus.yml")


def test_promtool_check_rules() -> None:
    assert RULE_FILES
    out = _promtool("check", "rules", *[str(p.relative_to(PROMETHEUS_DIR)) for p in RULE_FILES])
    assert "SUCCESS" in out


def test_promtool_rule_unit_tests() -> None:
    tests = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
    assert tests
    _promtool("test", "rules", *[str(p.relative_to(PROMETHEUS_DIR)) for p in tests])


def test_every_alert_has_a_unit_test() -> None:
    alerts = {rule["alert"] for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
              for rule in group["rules"] if "alert" in rule}
    tested = {case["alertname"] for path in (PROMETHEUS_DIR / "tests").glob("*.yml")
              for test in yaml.safe_load(path.read_text())["tests"] for case in test.get("alert_rule_test", [])}
    assert alerts - tested == set()


# -- Grafana ----------------------------------------------------------------------------------


def test_dashboards_are_provisionable() -> None:
    assert {p.stem for p in DASHBOARDS} >= {"jobs", "queues", "workers", "gpu"}
    uids = set()
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] not in uids
        uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == "prometheus", (path.name, panel["title"])
            assert panel["targets"], (path.name, panel["title"])
    sources = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert [d["uid"] for d in sources["datasources"]] == ["prometheus"]
    providers = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/dualplane.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_gpu_dashboard_shows_dcgm_beside_worker_metrics() -> None:
    board = json.loads((ROOT / "grafana/dashboards/gpu.json").read_text())
    used = set().union(*(metric_names(t["expr"]) for p in board["panels"] for t in p["targets"]))
    assert {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_GPU_TEMP",
            "DCGM_FI_DEV_POWER_USAGE", "dualplane_gpu_memory_allocated_bytes"} <= used


# -- running services -------------------------------------------------------------------------


class ThroughputProbeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None


@task("throughput_probe", plane="python", params=ThroughputProbeParams, retry=NO_RETRY)
def throughput_probe(ctx: TaskContext, p: ThroughputProbeParams) -> dict[str, Any]:
    """A test task: reports fixed generation speeds, as the ML tasks report theirs, and loads a
    local model directory through the real model manager when asked (for the metric series)."""
    if p.model:
        ctx.models.load(p.model, lambda path, device, dtype: {"weights": path})
    return {"tokens_per_s": 120.5, "steps_per_s": 7.0}


@dataclass
class Stack:
    control_url: str
    worker_url: str
    control: ControlPlane
    worker: Worker
    token: str


async def _serve(app: Any, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           ws_per_message_deflate=False))
    serving = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 15
    while not server.started:
        if serving.done() or time.monotonic() > deadline:
            raise AssertionError(f"uvicorn did not start on {port}")
        await asyncio.sleep(0.02)
    return server, serving


@pytest.fixture
async def stack(settings: Settings, tmp_path: Path) -> AsyncIterator[Stack]:
    """A control plane and a worker, each served over real HTTP by uvicorn on a free port,
    with a catalog that adds ``throughput_probe`` and a model registry with one local model."""
    models_toml = local_model_registry(tmp_path)
    registry = default_registry()
    registry.add(throughput_probe.__task_spec__)  # type: ignore[attr-defined]

    settings = settings.model_copy(update={"pools": ["nobody"]})  # a pool scaled to zero, configured
    control = ControlPlane(settings, registry=registry, metrics_registry=CollectorRegistry())
    await control.start()
    control_port = free_port()
    app = create_app(settings, plane=control)
    control_server, control_serving = await _serve(app, control_port)

    worker_port = free_port()
    worker = Worker(settings.model_copy(update={
        "worker_id": unique_name("w"), "worker_host": "127.0.0.1", "worker_port": worker_port,
        "models_config": str(models_toml), "model_cache_dir": str(tmp_path / "cache")}), registry=registry)
    stop = asyncio.Event()
    worker_task = asyncio.create_task(worker.run(serve_http=True, stop=stop))
    await asyncio.wait_for(worker.consumer.started.wait(), 10)
    token = Authenticator.from_settings(settings.auth).mint("alice", "user")
    stack = Stack(f"http://127.0.0.1:{control_port}", f"http://127.0.0.1:{worker_port}", control, worker, token)
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                if (await client.get(f"{stack.worker_url}/health")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    try:
        yield stack
    finally:
        stop.set()
        await asyncio.wait_for(worker_task, 30)
        control_server.should_exit = True
        await asyncio.wait_for(control_serving, 30)
        await control.stop(grace_s=0.5)


JOBS = [
    {"nodes": [{"id": "a", "task": "noop", "plane": "python"}]},
    {"nodes": [{"id": "a", "task": "emit", "plane": "control", "params": {"value": {"x": 1}}},
               {"id": "b", "task": "noop", "plane": "python", "needs": ["a"], "params": {"value": {"$ref": "a.output.x"}}},
               {"id": "c", "task": "collect", "plane": "control", "needs": ["b"]}]},
    {"nodes": [{"id": "a", "task": "fail", "plane": "python"}]},
    {"nodes": [{"id": "a", "task": "throughput_probe", "plane": "python", "params": {"model": "tiny-local"}}]},
]


async def run_jobs(stack: Stack, jobs: list[dict[str, Any]] = JOBS) -> list[dict[str, Any]]:
    """Submit over HTTP and wait for each job to finish."""
    headers = {"Authorization": f"Bearer {stack.token}"}
    finished = []
    async with httpx.AsyncClient(base_url=stack.control_url, headers=headers, timeout=60) as client:
        for graph in jobs:
            response = await client.post("/jobs", params={"wait": 30}, json=graph)
            assert response.status_code in (200, 201), response.text
            finished.append(response.json())
    return finished


async def scrape(url: str) -> dict[str, Any]:
    """``/metrics`` of a running service: family name → family (with samples)."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{url}/metrics")
    assert response.status_code == 200
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def sample_names(*scrapes: dict[str, Any]) -> set[str]:
    return {sample.name for families in scrapes for family in families.values() for sample in family.samples}


def value(families: dict[str, Any], sample: str, **labels: str) -> float:
    for family in families.values():
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no sample {sample} {labels}")


@pytest.mark.integration
async def test_running_services_expose_job_queue_worker_and_model_metrics(stack: Stack) -> None:
    jobs = await run_jobs(stack)
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded", "failed", "succeeded"]
    # work for a pool nobody serves: it waits in that pool's stream
    async with httpx.AsyncClient(base_url=stack.control_url, headers={"Authorization": f"Bearer {stack.token}"}) as c:
        for _ in range(3):
            r = await c.post("/jobs", json={"nodes": [{"id": "a", "task": "noop", "plane": "python", "pool": "nobody"}]})
            assert r.status_code == 201, r.text
    await asyncio.sleep(1.1)  # the queue snapshot is reused for up to a second

    control, worker = await scrape(stack.control_url), await scrape(stack.worker_url)
    # jobs: submitted by task on the control plane; finished where the token was when they ended
    assert value(control, "dualplane_jobs_submitted_total", task="noop") == 4
    assert value(control, "dualplane_jobs_submitted_total", task="collect") == 1
    assert value(worker, "dualplane_jobs_finished_total", status="succeeded", task="noop") == 1
    assert value(worker, "dualplane_jobs_finished_total", status="failed", task="fail") == 1
    assert value(control, "dualplane_jobs_finished_total", status="succeeded", task="collect") == 1
    assert value(worker, "dualplane_job_duration_seconds_count", status="succeeded", task="throughput_probe") == 1
    assert value(control, "dualplane_handoffs_total", to="python:default") == 1
    assert value(worker, "dualplane_handoffs_total", to="control") == 1
    # task throughput and model loads on the worker
    assert value(worker, "dualplane_task_tokens_per_second_sum", task="throughput_probe") == 120.5
    assert value(worker, "dualplane_task_steps_per_second_count", task="throughput_probe") == 1
    assert value(worker, "dualplane_model_loads_total", model="tiny-local", result="ok") == 1
    assert value(worker, "dualplane_model_load_seconds_count", model="tiny-local") == 1
    assert value(worker, "dualplane_busy_jobs") == 0
    assert value(worker, "dualplane_concurrency_slots") == stack.worker.settings.concurrency
    # queues, read from Redis at scrape time
    assert value(control, "dualplane_redis_up") == 1
    assert value(control, "dualplane_stream_lag_messages", stream="data:nobody", pool="nobody", group="workers") == 3
    assert value(control, "dualplane_queue_messages", stream="data:nobody") == 3
    assert value(control, "dualplane_stream_lag_messages", stream="data:default", group="workers") == 0
    assert value(control, "dualplane_stream_pending_messages", stream="control", group="control") == 0
    assert value(control, "dualplane_dead_letter_messages") == 0
    assert value(control, "dualplane_live_workers", pool="default") == 1
    assert value(control, "dualplane_websocket_connections") == 0


@pytest.mark.integration
async def test_dashboards_and_alerts_use_only_exposed_metrics(stack: Stack, redis: aioredis.Redis) -> None:
    """Every metric a dashboard panel, dashboard variable or alert rule selects is exposed by
    the running control plane or worker (after real jobs, so labelled series exist), by the
    worker's GPU collector on a CUDA host, by dcgm-exporter or by redis_exporter."""
    await run_jobs(stack)
    # a message that does not parse: the worker dead-letters it (so the dead-letter series exist)
    bridge = stack.control.bridge
    await redis.xadd(bridge.keys.data_stream("default"), {"m": b"not a handoff"})
    deadline = time.monotonic() + 10
    while await bridge.stream_length(bridge.keys.dead_stream) < 1:
        assert time.monotonic() < deadline, "the poison message was not dead-lettered"
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.1)  # the queue snapshot is reused for up to a second
    control = await scrape(stack.control_url)
    assert value(control, "dualplane_dead_letter_messages") == 1
    exposed = sample_names(control, await scrape(stack.worker_url))
    known = exposed | GpuCollector.METRIC_NAMES | _exporter_names("dcgm-exporter.txt") | _exporter_names("redis-exporter.txt") \
        | PROMETHEUS_SYNTHETIC
    used = {where: metric_names(expr) for where, expr in {**dashboard_exprs(), **rule_exprs()}.items()}
    assert len(used) > 40 and all(used.values())
    unknown = {where: sorted(names - known) for where, names in used.items() if names - known}
    assert unknown == {}, f"metrics nothing exposes: {json.dumps(unknown, indent=1)}"


@pytest.mark.integration
@pytest.mark.slow
async def test_prometheus_scrapes_the_running_planes(stack: Stack, tmp_path: Path) -> None:
    """The Debian `prometheus` binary scrapes the two planes over HTTP (with the real alert
    rules loaded) and its query API returns the job metrics."""
    binary = _tool("prometheus")
    port = free_port()
    control_target, worker_target = stack.control_url.removeprefix("http://"), stack.worker_url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in RULE_FILES],
        "scrape_configs": [
            {"job_name": "dualplane-control", "static_configs": [{"targets": [control_target]}]},
            {"job_name": "dualplane-worker", "static_configs": [{"targets": [worker_target],
                                                                 "labels": {"pool": "default"}}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(  # noqa: ASYNC220 - starting a server, not waiting on it
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        await run_jobs(stack)
        api = f"http://127.0.0.1:{port}/api/v1/query"

        async def query(client: httpx.AsyncClient, promql: str) -> list[dict[str, Any]]:
            try:
                response = await client.get(api, params={"query": promql})
            except httpx.TransportError:
                return []
            body = response.json() if response.status_code == 200 else {}
            return body.get("data", {}).get("result", []) if body.get("status") == "success" else []

        wanted = {
            'sum(dualplane_jobs_submitted_total{job="dualplane-control"})': 4.0,
            'sum(dualplane_jobs_finished_total{job="dualplane-worker",status="failed"})': 1.0,
            'sum(dualplane_jobs_finished_total)': 4.0,
            'sum(up{job=~"dualplane-.*"})': 2.0,
            'sum(dualplane_task_tokens_per_second_count{job="dualplane-worker",pool="default"})': 1.0,
        }
        got: dict[str, float | None] = {}
        deadline = time.monotonic() + 45
        async with httpx.AsyncClient(timeout=5) as client:
            while time.monotonic() < deadline:
                for promql in wanted:
                    result = await query(client, promql)
                    got[promql] = float(result[0]["value"][1]) if result else None
                if got == wanted:
                    break
                await asyncio.sleep(0.5)
            assert got == wanted, (tmp_path / "prometheus.log").read_text()[-3000:]
            rules = (await client.get(f"http://127.0.0.1:{port}/api/v1/rules")).json()
            loaded = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
            assert "DualplaneNoLiveWorker" in loaded
    finally:
        process.terminate()
        try:
            code = await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        log.close()
    assert code == 0, (tmp_path / "prometheus.log").read_text()[-3000:]
