"""Static checks of the deployment files (there is no Docker engine or cluster here): the compose
stack, the Dockerfiles, the dev containers and the Kubernetes manifests agree with each other,
with the Prometheus/Grafana configuration and with the settings the code reads."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from dualplane.common.bridge import WORKER_GROUP, Keys
from dualplane.common.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.dev.yml"
DUALPLANE_SERVICES = ("control-plane", "worker")


def settings_env_names() -> set[str]:
    """The environment variables Settings reads: a field's alias, else DUALPLANE_<FIELD>."""
    prefix = Settings.model_config.get("env_prefix", "")
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names.add(alias if isinstance(alias, str) else f"{prefix}{name}".upper())
    return names


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def container_ports(service: dict[str, Any]) -> set[int]:
    ports = {int(str(p).split("/")[0]) for p in service.get("expose", [])}
    for mapping in service.get("ports", []):
        ports.add(int(str(mapping).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def healthcheck_port(service: dict[str, Any]) -> int | None:
    test = service.get("healthcheck", {}).get("test")
    text = " ".join(test) if isinstance(test, list) else str(test or "")
    found = re.search(r"https?://[^/:'\"\s]+:(\d+)", text)
    return int(found.group(1)) if found else None


def test_settings_env_names_are_what_the_readme_documents() -> None:
    names = settings_env_names()
    assert {"REDIS_URL", "S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_BUCKET", "S3_SECURE",
            "DUALPLANE_POOL", "DUALPLANE_CONTROL_PORT", "DUALPLANE_WORKER_PORT", "DUALPLANE_LOG_LEVEL"} <= names


def test_compose_has_the_whole_stack(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= {"redis", "minio", "control-plane", "worker", "prometheus", "grafana",
                                         "dcgm-exporter", "redis-exporter"}
    redis_cmd = compose["services"]["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes", "Redis must run with AOF on"


def test_compose_builds_exist(compose: dict[str, Any]) -> None:
    for name in DUALPLANE_SERVICES:
        build = compose["services"][name]["build"]
        context = (COMPOSE_FILE.parent / build["context"]).resolve()
        assert context.is_dir(), name
        assert (context / build["dockerfile"]).is_file(), name
        assert (context / "pyproject.toml").is_file(), f"{name}: the context must be the repository root"


def test_compose_environment_matches_settings(compose: dict[str, Any]) -> None:
    known = settings_env_names()
    for name in DUALPLANE_SERVICES:
        env = env_of(compose["services"][name])
        assert set(env) - known == set(), f"{name} sets variables no setting reads"
        assert {"REDIS_URL", "S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY"} <= set(env), name
        settings = Settings(**_fields_from_env(env))  # the values parse as the settings' types
        redis_host = re.match(r"redis://(?:[^@]*@)?([^:/]+):(\d+)", settings.redis_url or "")
        assert redis_host and redis_host.group(1) in compose["services"], settings.redis_url
        assert int(redis_host.group(2)) in container_ports(compose["services"][redis_host.group(1)])
        s3_host, s3_port = (settings.s3_endpoint or ":").split(":")
        assert s3_host in compose["services"] and int(s3_port) in container_ports(compose["services"][s3_host])
        minio_env = env_of(compose["services"][s3_host])
        assert (settings.s3_access_key, settings.s3_secret_key) == (minio_env["MINIO_ROOT_USER"],
                                                                     minio_env["MINIO_ROOT_PASSWORD"])


def _fields_from_env(env: dict[str, str]) -> dict[str, str]:
    """Environment names → Settings field names (so the test builds Settings without os.environ)."""
    prefix = Settings.model_config.get("env_prefix", "")
    by_env = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        by_env[alias if isinstance(alias, str) else f"{prefix}{name}".upper()] = name
    return {by_env[k]: v for k, v in env.items()}


def test_compose_ports_and_healthchecks_line_up(compose: dict[str, Any]) -> None:
    services = compose["services"]
    listen = {"control-plane": "DUALPLANE_CONTROL_PORT", "worker": "DUALPLANE_WORKER_PORT"}
    for name, variable in listen.items():
        env = env_of(services[name])
        port = int(env[variable])
        assert env[variable.replace("PORT", "HOST")] == "0.0.0.0", f"{name} must listen beyond localhost"
        assert healthcheck_port(services[name]) == port, name
        assert port in container_ports(services[name]), name
    for name in ("prometheus", "grafana"):
        assert healthcheck_port(services[name]) in container_ports(services[name]), name
    # Prometheus scrapes the ports the services listen on
    scrape = yaml.safe_load((ROOT / "prometheus/prometheus.yml").read_text())
    targets: dict[str, int] = {}
    for job in scrape["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for host in sd["names"]:
                targets[host] = sd["port"]
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets[host] = int(port)
    assert targets["control-plane"] == int(env_of(services["control-plane"])["DUALPLANE_CONTROL_PORT"])
    assert targets["worker"] == int(env_of(services["worker"])["DUALPLANE_WORKER_PORT"])
    for exporter in ("dcgm-exporter", "redis-exporter"):
        assert targets[exporter] in container_ports(services[exporter]), exporter
    # Grafana's datasource is the prometheus service
    sources = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())
    url = re.match(r"http://([^:/]+):(\d+)", sources["datasources"][0]["url"])
    assert url and url.group(1) == "prometheus" and int(url.group(2)) in container_ports(services["prometheus"])


def test_compose_mounts_exist_and_gpu_is_reserved(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE_FILE.parent / source).exists(), f"{name}: {source}"
    for name in ("worker", "dcgm-exporter"):
        devices = compose["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name
    streams = env_of(compose["services"]["redis-exporter"])["REDIS_EXPORTER_CHECK_STREAMS"]
    assert re.fullmatch(streams.replace("*", ".*"), Keys(Settings.model_fields["key_prefix"].default)
                        .data_stream("default"))


def _dockerfile(name: str) -> str:
    return (ROOT / "docker" / name).read_text()


def test_control_plane_image_is_slim() -> None:
    text = _dockerfile("control-plane.Dockerfile")
    install = [line for line in text.splitlines() if "pip install" in line]
    assert install and not any("torch" in line or "[ml" in line or "cuda" in line.lower() for line in install)
    assert "FROM python:3.11-slim" in text
    assert 'CMD ["dualplane", "control-plane"]' in text


def test_worker_image_is_multistage_cuda_without_weights() -> None:
    text = _dockerfile("worker.Dockerfile")
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert len(froms) >= 2, "multi-stage"
    assert re.search(r"CUDA_IMAGE=nvidia/cuda:[\w.-]+-runtime-", text)
    assert re.search(r"download\.pytorch\.org/whl/cu\d+", text), "a CUDA build of torch"
    copies = [line for line in text.splitlines() if line.startswith(("COPY", "ADD"))]
    assert not any(re.search(r"model|weight|\.safetensors|\.bin|cache", c, re.IGNORECASE) for c in copies), copies
    assert 'CMD ["dualplane", "worker"]' in text
    ignored = (ROOT / ".dockerignore").read_text()
    assert ".venv/" in ignored and ".dualplane/" in ignored and "*.safetensors" in ignored


def test_devcontainers_point_at_compose_services(compose: dict[str, Any]) -> None:
    for kind, service in (("control-plane", "control-plane"), ("data-plane", "worker")):
        folder = ROOT / ".devcontainer" / kind
        config = json.loads((folder / "devcontainer.json").read_text())
        assert config["service"] == service
        for file in config["dockerComposeFile"]:
            assert (folder / file).is_file(), file
        override = yaml.safe_load((folder / "compose.override.yml").read_text())
        assert set(override["services"]) == {service}
        assert set(config["runServices"]) <= set(compose["services"])


# -- Kubernetes ------------------------------------------------------------------------------


def manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((ROOT / "deploy/k8s/kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s" / resource).read_text()) if d]
    return docs


def test_k8s_workers_scale_on_their_pool_stream() -> None:
    docs = manifests()
    keys = Keys(Settings.model_fields["key_prefix"].default)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    workers = {n: d for n, d in deployments.items() if "worker" in n}
    assert len(workers) >= 2, "one Deployment per GPU pool"
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled} == set(workers)
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    auths = {d["metadata"]["name"]: d for d in docs if d["kind"] == "TriggerAuthentication"}
    for obj in scaled:
        worker = workers[obj["spec"]["scaleTargetRef"]["name"]]
        (container,) = worker["spec"]["template"]["spec"]["containers"]
        pool = {e["name"]: e.get("value") for e in container["env"]}["DUALPLANE_POOL"]
        assert worker["spec"]["template"]["metadata"]["labels"]["dualplane.io/pool"] == pool
        kinds = set()
        for trigger in obj["spec"]["triggers"]:
            meta = trigger["metadata"]
            assert trigger["type"] == "redis-streams"
            assert meta["stream"] in keys.lane_streams(f"python:{pool}")
            assert meta["consumerGroup"] == WORKER_GROUP
            kinds |= {"pending" if "pendingEntriesCount" in meta else "lag" if "lagCount" in meta else "?"}
            for ref in auths[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]:
                assert ref["key"] in secrets[ref["name"]]["stringData"]
        assert kinds == {"pending", "lag"}, "pending entries, plus lag to scale up from zero"


def test_k8s_environment_matches_settings_and_secrets() -> None:
    docs = manifests()
    known = settings_env_names()
    secrets = {d["metadata"]["name"]: d["stringData"] for d in docs if d["kind"] == "Secret"}
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            names = {e["name"] for e in container.get("env", [])}
            for source in container.get("envFrom", []):
                data = secrets[source["secretRef"]["name"]]
                names |= {k for k in data if k.isupper()}
            assert names - known == set(), deployment["metadata"]["name"]
            assert {"REDIS_URL", "S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY"} <= names
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            port = int(env.get("DUALPLANE_CONTROL_PORT") or env["DUALPLANE_WORKER_PORT"])
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert port in ports.values()
            annotations = deployment["spec"]["template"]["metadata"]["annotations"]
            assert int(annotations["prometheus.io/port"]) == port
            assert container["readinessProbe"]["httpGet"]["path"] == "/health"
            assert container["livenessProbe"]["httpGet"]["path"] == "/livez"  # outages must not restart pods
            assert ports[container["readinessProbe"]["httpGet"]["port"]] == port


# -- the reverse proxy (Traefik) and the Compose specification ---------------------------------

TRAEFIK_DIR = ROOT / "deploy" / "traefik"
#: Where a request lands: (path, router, compose service). Host is the default PUBLIC_HOST.
ROUTES = [
    ("/", "dualplane-ui", "control-plane"),
    ("/ui/app.js", "dualplane-ui", "control-plane"),
    ("/ws", "dualplane-ws", "control-plane"),
    ("/jobs", "dualplane-api", "control-plane"),
    ("/jobs/abc/events", "dualplane-api", "control-plane"),
    ("/compose", "dualplane-api", "control-plane"),
    ("/auth/login", "dualplane-api", "control-plane"),
    ("/docs", "dualplane-api", "control-plane"),
    ("/metrics", "dualplane-metrics", "control-plane"),
    ("/grafana", "grafana", "grafana"),
    ("/grafana/d/jobs", "grafana", "grafana"),
]


def compose_spec_schema() -> dict[str, Any]:
    """The Compose specification's JSON Schema (compose-spec/compose-spec, Apache-2.0), as the
    check-jsonschema package ships it (its `vendor.compose-spec` schema, with the license)."""
    from importlib import resources

    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendor.joinpath("compose-spec.json").read_text())


def interpolate(text: str) -> str:
    """Compose's ${VAR:-default} with every variable unset (the file's defaults)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def labels_of(service: dict[str, Any]) -> dict[str, str]:
    labels = service.get("labels", {})
    if isinstance(labels, list):
        labels = dict(item.split("=", 1) for item in labels)
    return {k: interpolate(str(v)) for k, v in labels.items()}


def traefik_config(compose: dict[str, Any]) -> tuple[dict[str, dict[str, str]], dict[str, tuple[str, int]], set[str]]:
    """(routers: name -> settings plus the compose service carrying them, services: name ->
    (compose service, port), middleware names) from every service's labels."""
    routers: dict[str, dict[str, str]] = {}
    services: dict[str, tuple[str, int]] = {}
    middlewares: set[str] = set()
    for owner, service in compose["services"].items():
        labels = labels_of(service)
        if labels.get("traefik.enable") != "true":
            assert not any(k.startswith("traefik.") for k in labels), f"{owner}: traefik labels without traefik.enable"
            continue
        for key, value in labels.items():
            if found := re.fullmatch(r"traefik\.http\.routers\.([\w-]+)\.(\w+)", key):
                routers.setdefault(found.group(1), {"owner": owner})[found.group(2)] = value
            elif found := re.fullmatch(r"traefik\.http\.services\.([\w-]+)\.loadbalancer\.server\.port", key):
                services[found.group(1)] = (owner, int(value))
            elif found := re.fullmatch(r"traefik\.http\.middlewares\.([\w-]+)\..+", key):
                middlewares.add(found.group(1))
    return routers, services, middlewares


def rule_matches(rule: str, host: str, path: str) -> bool:
    """Traefik's Host / Path / PathPrefix matchers joined by && || and parentheses."""
    matchers = {"Host": lambda v: host == v, "Path": lambda v: path == v, "PathPrefix": lambda v: path.startswith(v)}
    expression = re.sub(r"(Host|PathPrefix|Path)\(`([^`]*)`\)", lambda m: str(matchers[m.group(1)](m.group(2))), rule)
    expression = expression.replace("&&", " and ").replace("||", " or ")
    assert re.fullmatch(r"(\s|True|False|and|or|\(|\))*", expression), f"a matcher this test does not know: {rule}"
    return bool(eval(expression, {"__builtins__": {}}))


def route(routers: dict[str, dict[str, str]], host: str, path: str) -> str | None:
    """The router Traefik picks for an HTTPS request: the matching one of highest priority."""
    matching = [(int(r["priority"]), name) for name, r in routers.items()
                if "websecure" in r["entrypoints"].split(",") and rule_matches(r["rule"], host, path)]
    assert len({p for p, _ in matching}) == len(matching), f"routers of equal priority both match {path}: {matching}"
    return max(matching)[1] if matching else None


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(compose_spec_schema())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)
    # the schema is strict enough to catch a mistyped key
    assert not validator.is_valid({"services": {"web": {"imagee": "nginx"}}})


def test_docker_compose_accepts_the_file() -> None:
    """`docker compose config -q` where Compose v2 is installed (it interpolates, merges and
    checks references the schema cannot)."""
    command = None
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True,
                                                 check=False).returncode == 0:
        command = ["docker", "compose"]
    if command is None:
        pytest.skip("no Docker Compose v2 here (`docker compose` missing): the schema test checks the file instead")
    result = subprocess.run([*command, "-f", str(COMPOSE_FILE), "config", "-q"], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stderr


def test_traefik_routes_the_api_websocket_ui_and_grafana(compose: dict[str, Any]) -> None:
    routers, services, middlewares = traefik_config(compose)
    for path, router, owner in ROUTES:
        assert route(routers, "localhost", path) == router, path
        service, port = services[routers[router]["service"]]
        assert service == owner and routers[router]["owner"] == owner, path
        assert port in container_ports(compose["services"][owner]), f"{path}: port {port}"
    assert route(routers, "elsewhere.example", "/jobs") is None, "routers match the public host only"
    for name, router in routers.items():
        assert router["entrypoints"] == "websecure" and router["tls"] == "true", f"{name}: TLS only"
        for middleware in filter(None, router.get("middlewares", "").split(",")):
            assert middleware in middlewares, f"{name}: no middleware {middleware}"
    labels = labels_of(compose["services"]["control-plane"])
    assert labels["traefik.http.middlewares.inside-only.ipallowlist.sourcerange"] == "127.0.0.1/32"  # /metrics
    assert "compress" not in routers["dualplane-ws"].get("middlewares", ""), "the WebSocket is passed through"
    for name in ("control-plane", "grafana"):
        assert "ports" not in compose["services"][name], f"{name} is reached through Traefik only"
    assert env_of(compose["services"]["control-plane"])["DUALPLANE_FORWARDED_ALLOW_IPS"], "client addresses"


def test_traefik_serves_tls_with_the_generated_certificate(compose: dict[str, Any]) -> None:
    services = compose["services"]
    traefik, certs = services["traefik"], services["certs"]
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in traefik["command"])
    assert flags["entrypoints.websecure.address"] == ":443" and flags["entrypoints.websecure.http.tls"] == "true"
    assert flags["entrypoints.web.http.redirections.entrypoint.to"] == "websecure"  # http -> https
    assert flags["providers.docker.exposedbydefault"] == "false"
    assert {"80:80", "443:443"} <= set(traefik["ports"])
    mounts = {target.split(":")[0]: source for source, target in (v.split(":", 1) for v in traefik["volumes"])}
    dynamic_file = flags["providers.file.filename"]
    assert (COMPOSE_FILE.parent / mounts[dynamic_file]).resolve() == TRAEFIK_DIR / "dynamic.yml"
    store = yaml.safe_load((TRAEFIK_DIR / "dynamic.yml").read_text())["tls"]["stores"]["default"]["defaultCertificate"]
    cert_dir = str(Path(store["certFile"]).parent)
    assert Path(store["keyFile"]).parent == Path(cert_dir) and cert_dir in mounts
    volume = mounts[cert_dir]
    assert volume in compose["volumes"] and traefik["depends_on"]["certs"]["condition"] == \
        "service_completed_successfully"
    # the one-shot service writes that volume with the script, whose file names Traefik reads
    cert_mounts = {source: target for source, target in (v.split(":", 1) for v in certs["volumes"])}
    script_target = cert_mounts["./deploy/traefik/make-local-cert.sh"].removesuffix(":ro")
    assert cert_mounts[volume] == cert_dir and f"sh {script_target} {cert_dir}" in " ".join(certs["command"])
    script = (TRAEFIK_DIR / "make-local-cert.sh").read_text()
    assert Path(store["certFile"]).name in script and Path(store["keyFile"]).name in script


def test_grafana_is_served_under_its_sub_path(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    env = {k: interpolate(v) for k, v in env_of(grafana).items()}
    assert re.fullmatch(r"https://localhost/grafana/", env["GF_SERVER_ROOT_URL"])
    assert env["GF_SERVER_SERVE_FROM_SUB_PATH"] == "true"
    routers, _, _ = traefik_config(compose)
    assert "PathPrefix(`/grafana`)" in routers["grafana"]["rule"]
    assert "/grafana/api/health" in " ".join(grafana["healthcheck"]["test"]), "the health check takes the sub-path"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the certificate script needs openssl")
def test_local_certificate_script_makes_a_ca_and_a_server_certificate(tmp_path: Path) -> None:
    def make(*args: str) -> str:
        return subprocess.run(["sh", str(TRAEFIK_DIR / "make-local-cert.sh"), str(tmp_path), *args],
                              capture_output=True, text=True, check=True, timeout=60).stdout

    def openssl(*args: str) -> str:
        return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True).stdout

    assert "made a certificate for localhost" in make()
    assert "OK" in openssl("verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "local.crt"))
    names = openssl("x509", "-in", str(tmp_path / "local.crt"), "-noout", "-ext", "subjectAltName,extendedKeyUsage")
    assert "DNS:localhost" in names and "IP Address:127.0.0.1" in names and "TLS Web Server Authentication" in names
    for key in ("ca.key", "local.key"):
        assert (tmp_path / key).stat().st_mode & 0o077 == 0, key
    first, ca = (tmp_path / "local.crt").read_bytes(), (tmp_path / "ca.crt").read_bytes()
    assert "kept" in make() and (tmp_path / "local.crt").read_bytes() == first  # a restart keeps it
    assert "made a certificate for dualplane.example.org" in make("dualplane.example.org")  # another name
    assert "DNS:dualplane.example.org" in openssl("x509", "-in", str(tmp_path / "local.crt"), "-noout", "-ext",
                                                  "subjectAltName")
    assert (tmp_path / "ca.crt").read_bytes() == ca, "the same CA signs it: nothing new to trust"


def test_the_cluster_overlay_scales_every_pool_on_each_of_its_partitions_streams() -> None:
    overlay = ROOT / "deploy" / "k8s-cluster"
    env_patch = yaml.safe_load((overlay / "cluster-env.yaml").read_text())
    env = {op["value"]["name"]: op["value"]["value"] for op in env_patch}
    partitions = int(env["DUALPLANE_REDIS_PARTITIONS"])
    keys = Keys(Settings.model_fields["key_prefix"].default, partitions)
    scaled = [d for d in yaml.safe_load_all((overlay / "scaledobjects.yaml").read_text()) if d]
    base = {d["metadata"]["name"] for d in manifests() if d["kind"] == "ScaledObject"}

    assert env["DUALPLANE_REDIS_CLUSTER"] == "1" and int(env["DUALPLANE_REDIS_WAIT_REPLICAS"]) >= 1
    assert {s["metadata"]["name"] for s in scaled} == base  # each replaces its base ScaledObject
    for obj in scaled:
        pool = obj["metadata"]["name"].removeprefix("dualplane-worker-")
        triggers = obj["spec"]["triggers"]
        assert {t["type"] for t in triggers} == {"redis-cluster-streams"}
        for kind in ("pendingEntriesCount", "lagCount"):
            streams = [t["metadata"]["stream"] for t in triggers if kind in t["metadata"]]
            assert streams == keys.lane_streams(f"python:{pool}"), (pool, kind)
        assert {t["metadata"]["consumerGroup"] for t in triggers} == {WORKER_GROUP}
