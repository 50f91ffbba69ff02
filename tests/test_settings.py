"""The settings' groups: together they are every knob, each knob in one of them, each group read
from the environment's flat names, and a component built from its group alone."""

from __future__ import annotations

import pytest

from dualplane.client import Client
from dualplane.common.artifacts import store_from_settings
from dualplane.common.errors import GraphValidationError
from dualplane.common.settings import GROUPS, LimitSettings, ModelSettings, Settings, StoreSettings
from dualplane.control_plane.limits import Limits
from dualplane.ml.model_store import ModelRegistry


def test_every_field_is_in_exactly_one_group():
    owners: dict[str, list[str]] = {}
    for name, group in GROUPS.items():
        for field in group.model_fields:
            owners.setdefault(field, []).append(name)
    assert {f: groups for f, groups in owners.items() if len(groups) > 1} == {}
    assert set(owners) == set(Settings.model_fields)
    settings = Settings()
    for name, group in GROUPS.items():
        assert type(getattr(settings, name)) is group  # the property of each group builds that group


def test_each_group_is_read_from_the_names_people_use(monkeypatch: pytest.MonkeyPatch):
    for name in ("DUALPLANE_CONCURRENCY", "DUALPLANE_MODEL_PREFIX"):
        monkeypatch.delenv(name, raising=False)  # the project's own names would win over the seeds'
    env = {
        "REDIS_URL": "redis://redis.internal:6380/2", "DUALPLANE_LEASE_S": "12",
        "S3_ENDPOINT": "store.internal:9000", "S3_BUCKET": "media", "S3_SECURE": "true", "DUALPLANE_S3_RETRIES": "0",
        "MODEL_S3_PATH": "s3://media/weights", "DUALPLANE_MODEL_CACHE_DIR": "/cache",
        "WORKER_CONCURRENCY": "7", "DUALPLANE_POOL": "render",
        "DUALPLANE_GPU_POOL": "a100", "DUALPLANE_POOLS": "cold, spot",
        "DUALPLANE_URL_FETCH_ALLOW": '["10.0.0.0/8"]',
        "DUALPLANE_JWT_SECRET": "s" * 32, "DUALPLANE_LOGIN_WINDOW_S": "5",
        "DUALPLANE_MAX_NODES": "9", "DUALPLANE_POLICY_FILE": "/etc/policy.yaml",
        "OLLAMA_URL": "http://llm:11434",
        "DUALPLANE_URL": "http://api:8000", "DUALPLANE_TOKEN": "tok",
        "DUALPLANE_CONTROL_PORT": "9100", "DUALPLANE_LOG_LEVEL": "DEBUG",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()

    bridge = settings.redis.bridge_config()
    assert (bridge.redis_url, bridge.lease_s) == ("redis://redis.internal:6380/2", 12.0)
    assert settings.bridge_config() == bridge  # the planes' spelling, on the whole settings
    store = settings.store
    assert (store.s3_endpoint, store.s3_bucket, store.s3_secure, store.s3_retries) == (
        "store.internal:9000", "media", True, 0)
    assert (settings.models.model_prefix, settings.models.model_cache_dir) == ("weights", "/cache")  # s3:// form read
    assert (settings.worker.concurrency, settings.worker.pool) == (7, "render")
    assert (settings.routing.gpu_pool, settings.routing.pools) == ("a100", ["cold", "spot"])
    assert settings.url_fetch.url_fetch_allow == ["10.0.0.0/8"]
    assert (settings.auth.jwt_secret, settings.auth.login_window_s) == ("s" * 32, 5.0)
    assert (settings.limits.max_nodes, settings.limits.policy_file) == (9, "/etc/policy.yaml")
    assert settings.planner.ollama_url == "http://llm:11434"
    assert (settings.client.api_url, settings.client.token) == ("http://api:8000", "tok")
    assert (settings.serve.control_port, settings.serve.log_level) == (9100, "DEBUG")


def test_a_group_follows_a_copy_of_the_settings():
    settings = Settings(max_nodes=5)
    assert settings.limits.max_nodes == 5
    assert settings.model_copy(update={"max_nodes": 6}).limits.max_nodes == 6  # built anew, not cached


def test_groups_are_frozen_and_refuse_unknown_knobs():
    limits = Settings().limits
    with pytest.raises(ValueError, match="frozen"):
        limits.max_nodes = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="Extra inputs"):
        LimitSettings(max_node=3)  # type: ignore[call-arg]


def test_components_are_built_from_their_group_alone():
    limits = Limits.from_settings(LimitSettings(max_nodes=2, max_params_bytes=10))
    assert (limits.max_nodes, limits.max_params_bytes) == (2, 10)
    with pytest.raises(GraphValidationError, match="at most 2"):
        limits.check_graph({"nodes": [{"id": f"n{i}", "task": "t", "params": {}} for i in range(3)]})

    assert store_from_settings(StoreSettings()) is None  # no endpoint: no store
    store = store_from_settings(StoreSettings(s3_endpoint="127.0.0.1:9", s3_bucket="media", s3_retries=0))
    assert store is not None and store.bucket == "media"

    registry = ModelRegistry.from_settings(ModelSettings(model_prefix="weights"))
    assert registry.get("musicgen-small").source == "s3:weights/musicgen-small"

    with Client.from_settings(Settings(api_url="http://api:8000/", token="tok").client) as client:
        assert (client.base_url, client.token) == ("http://api:8000", "tok")
