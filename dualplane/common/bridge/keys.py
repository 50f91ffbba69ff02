"""Key, stream, group and channel names: the only place that spells them.

Key layout under the configurable prefix ``P`` (default ``dp:``):

============================  ===========================================================
``P job:<id>``                hash: job fields, ``spec`` (graph JSON as submitted) and one
                              ``n:<node>`` field per node with its runtime state (JSON);
                              ``x:<node>``: an external node's claim (token, lease deadline)
``P job:<id>:events``         stream of events; entry id ``<seq>-0``, field ``e`` (JSON)
``P status|progress|data:<id>``  Pub/Sub channels, a wake-up copy of each event
``P cancels``                 Pub/Sub channel: the id of each job whose cancel was requested
``P stream:control``          control-plane stream, group ``control``
``P stream:data:<pool>``      data-plane stream of a worker pool, group ``workers``
``P stream:dead``             dead-letter stream (reason, source stream and id, fields)
``P stream:audit``            requests the content policy refused (user, rule, node, detail; capped)
``P jobs:active``             sorted set of unfinished jobs (by created_at): the reconciler's list
``P instance``                a marker set at start-up: when it is gone, Redis lost its data
``P worker:<id>``             capability manifest of a live worker (TTL)
``P workers``                 sorted set of worker ids by their key's expiry: the directory
                              read instead of a keyspace scan (bridge/directory.py)
``P pools``                   set of the pools jobs were queued on (noted once per pool by each
                              control plane): the queue metrics list their streams from it
``P account:<name>``          hash: an account (role, argon2id hash, disabled, gen, times)
``P accounts``                set of account names
``P auth:markers``            hash: name -> ``"<gen> <disabled>"`` of accounts whose tokens
                              may be revoked; ``P auth:markers:version`` counts its changes
``P refresh:<session>``       hash: a refresh session (user, gen, hash of its current token; TTL)
``P refresh-of:<name>``       sorted set of an account's refresh sessions by expiry
``P login-fail:user|ip:<x>``  sorted set of an account's or address's recent failed logins
``P uploads:<user>``          hash: object key -> upload record (JSON) of a user's uploads
============================  ===========================================================
"""

from __future__ import annotations

CONTROL_GROUP = "control"
WORKER_GROUP = "workers"
#: Prefix of the job-hash field that holds a node's runtime state (``n:<id>``).
NODE_FIELD_PREFIX = "n:"


def node_field(node_id: str) -> str:
    return NODE_FIELD_PREFIX + node_id


class Keys:
    """Key, stream and channel names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        #: What every stream's name starts with.
        self.stream_prefix = f"{prefix}stream:"
        self.control_stream = f"{prefix}stream:control"
        self.dead_stream = f"{prefix}stream:dead"
        self.audit_stream = f"{prefix}stream:audit"
        self.jobs_index = f"{prefix}jobs"
        self.active_jobs = f"{prefix}jobs:active"
        self.instance = f"{prefix}instance"
        self.workers = f"{prefix}workers"
        self.pools = f"{prefix}pools"
        self.cancels_channel = f"{prefix}cancels"
        self.accounts = f"{prefix}accounts"
        self.auth_markers = f"{prefix}auth:markers"
        self.auth_markers_version = f"{prefix}auth:markers:version"

    def user_jobs(self, user: str) -> str:
        return f"{self.prefix}jobs:user:{user}"

    def preferences(self, user: str) -> str:
        return f"{self.prefix}prefs:{user}"

    def rate(self, user: str, window: int) -> str:
        return f"{self.prefix}rate:{user}:{window}"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}:events"

    def channel_pattern(self, kind: str) -> str:
        """PSUBSCRIBE pattern for one kind of event of every job (one subscription per hub)."""
        return f"{self.prefix}{kind}:*"

    @staticmethod
    def job_id_of_channel(channel: str) -> str:
        """Job ids contain no ':' (graph.schema.json), so the id is the last segment."""
        return channel.rsplit(":", 1)[1]

    def data_stream(self, pool: str) -> str:
        return f"{self.prefix}stream:data:{pool}"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}worker:{worker_id}"

    def stream_for_lane(self, lane: str) -> str:
        """``control`` → the control stream; ``python:<pool>`` → that pool's data stream."""
        if lane == "control":
            return self.control_stream
        return self.data_stream(lane.split(":", 1)[1])

    def lane_of_stream(self, stream: str) -> str:
        """The lane a stream carries (the inverse of :meth:`stream_for_lane`)."""
        if stream == self.control_stream:
            return "control"
        return "python:" + stream.removeprefix(self.data_stream(""))

    def group_for_stream(self, stream: str) -> str:
        return CONTROL_GROUP if stream == self.control_stream else WORKER_GROUP

    def uploads(self, user: str) -> str:
        return f"{self.prefix}uploads:{user}"

    # -- accounts (bridge/accounts.py, bridge/limits.py) ---------------------------------

    def account(self, name: str) -> str:
        return f"{self.prefix}account:{name}"

    def refresh_session(self, session_id: str) -> str:
        return f"{self.prefix}refresh:{session_id}"

    def refresh_sessions(self, name: str) -> str:
        return f"{self.prefix}refresh-of:{name}"

    def login_failures(self, kind: str, who: str) -> str:
        return f"{self.prefix}login-fail:{kind}:{who}"
