"""The one place that reads the environment, and the groups its knobs come in.

Build a :class:`Settings` once at the edge of a process (CLI, test fixture). Nothing else reads
``os.environ``.

The knobs come in groups, each a small frozen model: :class:`RedisSettings`,
:class:`StoreSettings`, :class:`ModelSettings`, :class:`WorkerSettings`, :class:`RoutingSettings`,
:class:`UrlFetchSettings`, :class:`AuthSettings`, :class:`LimitSettings`,
:class:`PlannerSettings`, :class:`ClientSettings` and :class:`ServeSettings` (:data:`GROUPS`).
A component takes its group (``store_from_settings(settings.store)``,
``Authenticator.from_settings(settings.auth)``), so its signature says which knobs it reads and a
test builds it from that group alone. Only the composition roots (``ControlPlane``, ``Worker``,
``create_app``, the CLI, the dev stack) hold the whole :class:`Settings` and hand each component
its group.

The environment stays flat: :class:`Settings` inherits every group's fields, so each knob keeps
one name from its variable to its group (``DUALPLANE_MAX_NODES`` → ``settings.max_nodes`` →
``settings.limits.max_nodes``), compose files stay a readable list of ``DUALPLANE_*`` lines, and
the names the seeds' contract uses (``REDIS_URL``, ``S3_*``, ``WORKER_CONCURRENCY``,
``MODEL_S3_PATH``, ``DUALPLANE_URL``…) stay what they are. ``settings.<group>`` is built from the
fields each time it is read, not cached: a ``model_copy(update=...)`` of the settings would
otherwise carry the old group along.
"""

from __future__ import annotations

import json
import socket
import uuid
from typing import Annotated, Any, TypeVar

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dualplane.common.models import BridgeConfig

#: The bucket artifacts and model weights go to when none is configured.
DEFAULT_BUCKET = "dualplane"


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        return json.loads(text) if text.startswith("[") else [e.strip() for e in text.split(",") if e.strip()]
    return value


#: A list of names from one variable: a JSON list or comma-separated (NoDecode: not JSON-decoded first).
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_comma_list)]


class _Group(BaseModel):
    # populate_by_name: a group is built by its field names, also where the env name is an alias
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class RedisSettings(_Group):
    """The Redis the planes share: the bridge's config (:meth:`bridge_config`) and how often the
    control plane repairs what Redis lost."""

    redis_url: str | None = Field(None, validation_alias="REDIS_URL")
    key_prefix: str = "dp:"
    # the keyspace's slot partitions (BridgeConfig.partitions) and whether Redis is a cluster
    redis_partitions: int = Field(1, ge=1, le=1024)
    redis_cluster: bool = Field(False, validation_alias=AliasChoices("DUALPLANE_REDIS_CLUSTER", "REDIS_CLUSTER",
                                                                       "redis_cluster"))
    redis_wait_replicas: int = Field(0, ge=0, le=16)
    redis_wait_timeout_ms: int = Field(1000, ge=1)
    lease_s: float = 30.0
    heartbeat_s: float | None = None
    max_deliveries: int = 5
    finished_job_ttl_s: int = 7 * 24 * 3600
    read_batch: int = 256
    read_block_ms: int = 1000
    # a blocking pool: past max_connections a caller waits, at most pool_timeout_s (then 503)
    redis_max_connections: int = Field(64, ge=2)
    redis_pool_timeout_s: float = Field(5.0, gt=0)
    # the control plane looks for unfinished jobs whose stream entry was lost this often (0: never)
    reconcile_interval_s: float = Field(30.0, ge=0)

    def bridge_config(self) -> BridgeConfig:
        """The Redis side of the settings, validated by the shared schema's model."""
        if not self.redis_url:
            raise ValueError("REDIS_URL is not set (dualplane up starts a local Redis for you)")
        return BridgeConfig.model_validate(
            {
                "redis_url": self.redis_url,
                "key_prefix": self.key_prefix,
                "partitions": self.redis_partitions,
                "cluster": self.redis_cluster,
                "wait_replicas": self.redis_wait_replicas,
                "wait_timeout_ms": self.redis_wait_timeout_ms,
                "lease_s": self.lease_s,
                "heartbeat_s": self.heartbeat_s,
                "max_deliveries": self.max_deliveries,
                "finished_job_ttl_s": self.finished_job_ttl_s,
                "read_batch": self.read_batch,
                "read_block_ms": self.read_block_ms,
                "max_connections": self.redis_max_connections,
                "pool_timeout_s": self.redis_pool_timeout_s,
            }
        )


class StoreSettings(_Group):
    """The S3 object store of artifacts and model weights (``common/artifacts.py``)."""

    s3_endpoint: str | None = Field(None, validation_alias="S3_ENDPOINT")
    s3_access_key: str | None = Field(None, validation_alias="S3_ACCESS_KEY")
    s3_secret_key: str | None = Field(None, validation_alias="S3_SECRET_KEY")
    s3_bucket: str = Field(DEFAULT_BUCKET, validation_alias="S3_BUCKET")
    s3_secure: bool = Field(False, validation_alias="S3_SECURE")
    # every store call is bounded: a request waits at most connect + read timeout (read: between
    # two chunks of the answer), a call at most 1 + s3_retries requests. A frozen store (it
    # accepts connections and never answers) costs one read timeout: timed-out reads are not retried
    s3_connect_timeout_s: float = Field(10.0, gt=0)
    s3_read_timeout_s: float = Field(60.0, gt=0)
    s3_retries: int = Field(2, ge=0)  # refused connections and 5xx answers, 0.4 s backoff at most


class ModelSettings(_Group):
    """The model registry and the worker's weight cache (``ml/model_store``)."""

    model_cache_dir: str = ".dualplane/model-cache"
    models_config: str | None = None  # a TOML registry; None for the packaged one
    # where model weights live in the bucket: the packaged registry's entries, `models make-tiny`
    # and `models pull` of unregistered names; MODEL_S3_PATH is the seeds' name ("weights" or
    # "s3://<S3_BUCKET>/weights", which Settings checks against the store's bucket)
    model_prefix: str = Field("models", validation_alias=AliasChoices("DUALPLANE_MODEL_PREFIX", "MODEL_S3_PATH"))
    model_cache_max_bytes: int = 8 * 1024**3


class WorkerSettings(_Group):
    """How a plane consumes its lane: the data-plane worker's knobs, of which the control plane's
    own consumer (its control tasks) takes the id, concurrency, cancel poll and grace too."""

    pool: str = "default"
    # nodes a worker runs at once; WORKER_CONCURRENCY is the seeds' name for it
    concurrency: int = Field(4, validation_alias=AliasChoices("DUALPLANE_CONCURRENCY", "WORKER_CONCURRENCY"))
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
    shutdown_grace_s: float = 30.0
    # cancel requests are pushed; in-flight jobs' flags are also read this often (a request
    # published while a plane's subscription was down)
    cancel_poll_s: float = 2.0
    # torch intra-op threads of each task thread; 0: on CPU the cores shared among the
    # concurrent tasks (at least 1), on CUDA torch's own default
    torch_threads: int = Field(0, ge=0)
    # worker processes `dualplane worker` runs (its --processes): 1 runs the worker in this
    # process; more, a supervisor of that many; 0, one per NVIDIA GPU, else one per CPU core
    worker_processes: int = Field(1, ge=0)


class RoutingSettings(_Group):
    """Where the control plane sends nodes (``common/routing.py``) besides live workers' pools."""

    gpu_pool: str = "gpu"  # where GPU nodes wait when no live worker can run them
    # pools a graph may name besides those of live workers (a pool scaled to zero must be here);
    # the default pool and gpu_pool always are
    pools: CommaList = []


class UrlFetchSettings(_Group):
    """What URL inputs may reach (``common/url_policy.py``)."""

    # destinations exempt from the loopback/private/metadata denial. Entries are networks
    # (10.0.0.0/8), addresses, host names, each with an optional :port (127.0.0.1:9000,
    # [::1]:9000, files.internal:8080); a JSON list or comma-separated
    url_fetch_allow: CommaList = []
    url_fetch_timeout_s: float = Field(60.0, gt=0)  # one URL in all: redirects and body included


class AuthSettings(_Group):
    """Tokens and accounts of the control plane (``control_plane/auth.py``, ``routes_auth.py``)."""

    jwt_algorithm: str = "HS256"  # HS256 (shared secret) or RS256 (key pair)
    jwt_secret: str | None = None  # HS256; `dualplane up` generates one per stack
    jwt_private_key_file: str | None = None  # RS256: signs tokens (`dualplane token`)
    jwt_public_key_file: str | None = None  # RS256: verifies tokens
    jwt_issuer: str = "dualplane"
    token_ttl_s: int = 12 * 3600
    # accounts (control_plane/accounts.py): /auth/login's tokens, their revocation, login limits
    access_token_ttl_s: int = Field(15 * 60, ge=60)
    refresh_token_ttl_s: int = Field(14 * 24 * 3600, ge=60)  # sliding: each refresh starts it again
    revocation_check_s: float = Field(30.0, ge=0)  # a disabled account's tokens fail within this
    login_failures_per_user: int = Field(5, ge=0)  # per login_window_s; 0: no limit
    login_failures_per_ip: int = Field(20, ge=0)  # an IPv6 client counts by its /64
    login_window_s: float = Field(60.0, gt=0)


class LimitSettings(_Group):
    """What the API takes from one client: sizes, rates, waits, connections, and the content
    policy its submissions are checked against (``control_plane/limits.py``, the hub, ``policy.py``)."""

    submit_rate_per_min: int = 600  # per user; 0 disables
    max_body_bytes: int = 1024 * 1024
    max_nodes: int = 256
    max_params_bytes: int = 64 * 1024
    max_wait_s: float = 300.0
    max_waits_per_user: int = Field(32, ge=1)  # concurrent `?wait=` requests of one user (429 past it)
    max_upload_bytes: int = 64 * 1024 * 1024
    hub_buffer_messages: int = 1000  # per WebSocket connection before a slow client is closed
    # the content policy (control_plane/policy.py): a YAML file; None: the packaged policy.default.yaml
    policy_file: str | None = None


class PlannerSettings(_Group):
    """The LLM the planner composes graphs with (``control_plane/planner.py``); none: rules only."""

    ollama_url: str | None = Field(None, validation_alias="OLLAMA_URL")
    ollama_model: str = "llama3.1"


class ClientSettings(_Group):
    """Where CLI commands and :class:`dualplane.client.Client` find a running control plane."""

    api_url: str = Field("http://127.0.0.1:8000", validation_alias="DUALPLANE_URL")
    token: str | None = Field(None, validation_alias="DUALPLANE_TOKEN")


class ServeSettings(_Group):
    """The planes' HTTP listeners and logging (``cli/planes.py``)."""

    control_host: str = "127.0.0.1"
    control_port: int = 8000
    # peers whose X-Forwarded-For / -Proto the control plane believes (a reverse proxy); comma-separated, * for any
    forwarded_allow_ips: str = "127.0.0.1,::1"
    worker_host: str = "127.0.0.1"
    worker_port: int = 8001
    log_level: str = "INFO"
    # one INFO line per HTTP request (uvicorn's access log): off, it cost a fifth of the submit rate;
    # errors, submissions and refusals are logged either way
    access_log: bool = False


#: Every group, by the :class:`Settings` property that builds it; together they are all its fields.
GROUPS: dict[str, type[BaseModel]] = {
    "redis": RedisSettings, "store": StoreSettings, "models": ModelSettings, "worker": WorkerSettings,
    "routing": RoutingSettings, "url_fetch": UrlFetchSettings, "auth": AuthSettings, "limits": LimitSettings,
    "planner": PlannerSettings, "client": ClientSettings, "serve": ServeSettings,
}

G = TypeVar("G", bound=BaseModel)


class Settings(BaseSettings, RedisSettings, StoreSettings, ModelSettings, WorkerSettings, RoutingSettings,
               UrlFetchSettings, AuthSettings, LimitSettings, PlannerSettings, ClientSettings, ServeSettings):
    """Every knob of both planes, read from ``DUALPLANE_*`` variables (and the usual unprefixed
    ``REDIS_URL`` / ``S3_*`` ones, and the seeds' aliases); each group is a property."""

    # the groups' frozen/forbid are theirs: the settings stay as pydantic-settings has them
    model_config = SettingsConfigDict(env_prefix="DUALPLANE_", extra="ignore", populate_by_name=True, frozen=False)

    @model_validator(mode="after")
    def _model_prefix_in_the_bucket(self) -> Settings:
        """``s3://<bucket>/<prefix>`` (the seeds' form) to the prefix; the bucket must be ours.
        Here rather than in ModelSettings: it reads the store's bucket too."""
        prefix = self.model_prefix.strip()
        if prefix.startswith("s3://"):
            bucket, _, prefix = prefix.removeprefix("s3://").partition("/")
            if bucket != self.s3_bucket:
                raise ValueError(f"MODEL_S3_PATH names the bucket {bucket!r}, but the object store's bucket "
                                 f"(S3_BUCKET) is {self.s3_bucket!r}: models and artifacts share one bucket")
        prefix = prefix.strip("/")
        if not prefix or any(part in ("", ".", "..") for part in prefix.split("/")):
            raise ValueError(f"the model prefix (MODEL_S3_PATH) must be a key prefix such as 'models', "
                             f"got {self.model_prefix!r}")
        self.model_prefix = prefix
        return self

    def _group(self, group: type[G]) -> G:
        return group.model_validate({name: getattr(self, name) for name in group.model_fields})

    @property
    def redis(self) -> RedisSettings:
        return self._group(RedisSettings)

    @property
    def store(self) -> StoreSettings:
        return self._group(StoreSettings)

    @property
    def models(self) -> ModelSettings:
        return self._group(ModelSettings)

    @property
    def worker(self) -> WorkerSettings:
        return self._group(WorkerSettings)

    @property
    def routing(self) -> RoutingSettings:
        return self._group(RoutingSettings)

    @property
    def url_fetch(self) -> UrlFetchSettings:
        return self._group(UrlFetchSettings)

    @property
    def auth(self) -> AuthSettings:
        return self._group(AuthSettings)

    @property
    def limits(self) -> LimitSettings:
        return self._group(LimitSettings)

    @property
    def planner(self) -> PlannerSettings:
        return self._group(PlannerSettings)

    @property
    def client(self) -> ClientSettings:
        return self._group(ClientSettings)

    @property
    def serve(self) -> ServeSettings:
        return self._group(ServeSettings)
