"""Key, stream, group and channel names: the only place that spells them.

Key layout under the configurable prefix ``P`` (default ``dp:``). ``{t}`` is a *partition tag*:
the keyspace is cut into ``partitions`` partitions (BridgeConfig), a job lives in the one its id
hashes to (:meth:`Keys.partition`), and every key of that job *and* the lane streams that carry
its messages carry that partition's tag, so they share one Redis Cluster slot and every script
(create, claim, emit, hand-on, requeue) stays one atomic step on one primary. The tags are
chosen so the partitions' slots spread evenly over the 16384 (:func:`partition_tags`).

==================================  =====================================================
``P job:{t}:<id>``                  hash: job fields, ``spec`` (graph JSON as submitted) and
                                    one ``n:<node>`` field per node with its runtime state
                                    (JSON); ``x:<node>``: an external node's claim
``P job:{t}:<id>:events``           stream of events; entry id ``<seq>-0``, field ``e`` (JSON)
``P status|progress|data|audit:<id>``  Pub/Sub channels (single Redis), a wake-up copy of each
                                    event: the hub's one PSUBSCRIBE reads them all
``P live:{t}:<id>``                 sharded Pub/Sub channel (cluster): the job's every event, in
                                    its partition's slot; a hub SSUBSCRIBEs to the jobs it follows
``P cancels``                       Pub/Sub channel: the id of each job whose cancel was requested
``P stream:control:{t}``            control-plane stream of partition t, group ``control``
``P stream:data:<pool>:{t}``        data-plane stream of a worker pool's partition t, group
                                    ``workers``
``P stream:dead``                   dead-letter stream (reason, source stream and id, fields):
                                    one key, so dead-lettering and replay are two steps (the
                                    entry, then the job's side; see dead_letter.lua)
``P stream:audit``                  requests the content policy refused (capped)
``P jobs:{t}``                      sorted set of the partition's jobs (by created_at)
``P jobs:user:{t}:<user>``          sorted set of a user's jobs in the partition
``P jobs:active:{t}``               sorted set of the partition's unfinished jobs: the
                                    reconciler's list
``P instance``                      a marker set at start-up: when it is gone, Redis lost its data
``P worker:{directory}:<id>``       capability manifest of a live worker (TTL)
``P workers:{directory}``          sorted set of worker ids by their key's expiry: the
                                    directory read instead of a keyspace scan (directory.py)
``P pools``                         set of the pools jobs were queued on (noted once per pool by
                                    each control plane): the queue metrics list their streams
``P account:{auth}:<name>``        hash: an account (role, argon2id hash, disabled, gen, times)
``P accounts:{auth}``              set of account names
``P auth:markers:{auth}``          hash: name -> ``"<gen> <disabled>"`` of accounts whose tokens
                                    may be revoked; ``P auth:markers:version:{auth}`` counts its changes
``P refresh:{auth}:<session>``     hash: a refresh session (user, gen, hash of its current
                                    token; TTL)
``P refresh-of:{auth}:<name>``     sorted set of an account's refresh sessions by expiry
``P login-fail:{auth}:user|ip:<x>``sorted set of an account's or address's recent failed logins
``P uploads:<user>``                hash: object key -> upload record (JSON) of a user's uploads
==================================  =====================================================
"""

from __future__ import annotations

import functools
import zlib

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

CONTROL_GROUP = "control"
WORKER_GROUP = "workers"
#: Prefix of the job-hash field that holds a node's runtime state (``n:<id>``).
NODE_FIELD_PREFIX = "n:"
#: The hash tags of the keys written together outside any job: the worker directory (a manifest
#: and the directory's sorted set), and accounts, sessions and login counters (their transactions
#: and login_admit.lua): each group in one slot of its own.
DIRECTORY_TAG = "{directory}"
AUTH_TAG = "{auth}"


def node_field(node_id: str) -> str:
    return NODE_FIELD_PREFIX + node_id


@functools.cache
def partition_tags(partitions: int) -> tuple[str, ...]:
    """The hash tag of each partition (``{p<i>}``, or ``{p<i>.<k>}`` with the first ``k`` that
    lands it there): partition ``i``'s slot is in the i-th of ``partitions`` equal slices of the
    slot space, so a cluster's primaries (which own contiguous slot ranges) get equal shares."""
    tags = []
    for i in range(partitions):
        low, high = (i * REDIS_CLUSTER_HASH_SLOTS // partitions, (i + 1) * REDIS_CLUSTER_HASH_SLOTS // partitions)
        tag, k = f"p{i}", 0
        while not low <= key_slot(tag.encode()) < high:
            tag, k = f"p{i}.{k}", k + 1
        tags.append("{" + tag + "}")
    return tuple(tags)


class Keys:
    """Key, stream and channel names under one prefix, in ``partitions`` slot partitions."""

    def __init__(self, prefix: str, partitions: int = 1) -> None:
        self.prefix = prefix
        self.partitions = partitions
        self.tags = partition_tags(partitions)
        #: What every stream's name starts with.
        self.stream_prefix = f"{prefix}stream:"
        self._control_prefix = f"{prefix}stream:control:"
        self._data_prefix = f"{prefix}stream:data:"
        self.dead_stream = f"{prefix}stream:dead"
        self.audit_stream = f"{prefix}stream:audit"
        self.instance = f"{prefix}instance"
        self.workers = f"{prefix}workers:{DIRECTORY_TAG}"
        self.pools = f"{prefix}pools"
        self.cancels_channel = f"{prefix}cancels"
        self.accounts = f"{prefix}accounts:{AUTH_TAG}"
        self.auth_markers = f"{prefix}auth:markers:{AUTH_TAG}"
        self.auth_markers_version = f"{prefix}auth:markers:version:{AUTH_TAG}"

    # -- partitions ----------------------------------------------------------------------

    def partition(self, job_id: str) -> int:
        """The partition of a job: its keys and every message about it live there."""
        return zlib.crc32(job_id.encode()) % self.partitions if self.partitions > 1 else 0

    def jobs_index(self, partition: int) -> str:
        return f"{self.prefix}jobs:{self.tags[partition]}"

    def active_jobs(self, partition: int) -> str:
        return f"{self.prefix}jobs:active:{self.tags[partition]}"

    def user_jobs(self, user: str, partition: int) -> str:
        return f"{self.prefix}jobs:user:{self.tags[partition]}:{user}"

    def preferences(self, user: str) -> str:
        return f"{self.prefix}prefs:{user}"

    def rate(self, user: str, window: int) -> str:
        return f"{self.prefix}rate:{user}:{window}"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{self.tags[self.partition(job_id)]}:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}job:{self.tags[self.partition(job_id)]}:{job_id}:events"

    def channel_pattern(self, kind: str) -> str:
        """PSUBSCRIBE pattern for one kind of event of every job (one subscription per hub)."""
        return f"{self.prefix}{kind}:*"

    def live_channel(self, job_id: str) -> str:
        """The sharded channel of one job's events (cluster): SPUBLISHed by ``_events.lua``, which
        spells it from the events key's tag, so keep the two together."""
        return f"{self.prefix}live:{self.tags[self.partition(job_id)]}:{job_id}"

    @staticmethod
    def job_id_of_channel(channel: str) -> str:
        """Job ids contain no ':' (graph.schema.json), so the id is the last segment."""
        return channel.rsplit(":", 1)[1]

    def control_stream(self, partition: int = 0) -> str:
        return f"{self._control_prefix}{self.tags[partition]}"

    def data_stream(self, pool: str, partition: int = 0) -> str:
        return f"{self._data_prefix}{pool}:{self.tags[partition]}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}worker:{DIRECTORY_TAG}:{worker_id}"

    def lane_stream(self, lane: str, partition: int) -> str:
        """``control`` → that partition of the control stream; ``python:<pool>`` → of that pool's."""
        if lane == "control":
            return self.control_stream(partition)
        return self.data_stream(lane.split(":", 1)[1], partition)

    def stream_for_job(self, lane: str, job_id: str) -> str:
        """The stream of ``lane`` that carries ``job_id``'s messages (its partition's)."""
        return self.lane_stream(lane, self.partition(job_id))

    def lane_streams(self, lane: str) -> list[str]:
        """Every partition's stream of a lane: what its consumers read."""
        return [self.lane_stream(lane, p) for p in range(self.partitions)]

    def stream_partition(self, stream: str) -> int | None:
        """The partition of one of this deployment's lane streams; None for any other name."""
        if not stream.startswith((self._control_prefix, self._data_prefix)):
            return None
        tag = stream[stream.rfind(":") + 1:]
        try:
            return self.tags.index(tag)
        except ValueError:
            return None

    def lane_of_stream(self, stream: str) -> str:
        """The lane a stream carries (the inverse of :meth:`lane_stream`)."""
        if stream.startswith(self._control_prefix):
            return "control"
        return "python:" + stream.removeprefix(self._data_prefix).rsplit(":", 1)[0]

    def pool_of_stream(self, stream: str) -> str | None:
        """The pool of a data stream, None for the control stream."""
        lane = self.lane_of_stream(stream)
        return None if lane == "control" else lane.split(":", 1)[1]

    def group_for_stream(self, stream: str) -> str:
        return CONTROL_GROUP if stream.startswith(self._control_prefix) else WORKER_GROUP

    def uploads(self, user: str) -> str:
        return f"{self.prefix}uploads:{user}"

    # -- accounts (bridge/accounts.py, bridge/limits.py) ---------------------------------

    def account(self, name: str) -> str:
        return f"{self.prefix}account:{AUTH_TAG}:{name}"

    def refresh_session(self, session_id: str) -> str:
        return f"{self.prefix}refresh:{AUTH_TAG}:{session_id}"

    def refresh_sessions(self, name: str) -> str:
        return f"{self.prefix}refresh-of:{AUTH_TAG}:{name}"

    def login_failures(self, kind: str, who: str) -> str:
        return f"{self.prefix}login-fail:{AUTH_TAG}:{kind}:{who}"
