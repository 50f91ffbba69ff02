"""The Redis bridge: the only package that talks to Redis, spells keys (:mod:`.keys`), sends
the Lua scripts (:mod:`.batching`) and sees Redis's errors (:mod:`.translation`).

:class:`Bridge` is one facade over the modules of operations, each a mixin of
:class:`~.connection.BridgeCore`: :mod:`.delivery` (the lane streams' consumer groups),
:mod:`.dead_letters` (and the audit stream), :mod:`.jobs`, :mod:`.cancels`,
:mod:`.subscriptions` (Pub/Sub), :mod:`.index` (the job indexes), :mod:`.directory` (live
workers), :mod:`.limits` (preferences, rate windows, failed logins), :mod:`.accounts`,
:mod:`.uploads`; :mod:`.lease` keeps in-flight messages claimed from its own thread.
"""

from __future__ import annotations

from dualplane.common.bridge.accounts import AccountOps
from dualplane.common.bridge.cancels import CancelOps
from dualplane.common.bridge.dead_letters import DeadLetterOps
from dualplane.common.bridge.delivery import DeliveryOps, Message
from dualplane.common.bridge.directory import DirectoryOps
from dualplane.common.bridge.index import IndexOps
from dualplane.common.bridge.jobs import Claim, JobOps, job_from_hash, parse_claim
from dualplane.common.bridge.keys import WORKER_GROUP, Keys, node_field
from dualplane.common.bridge.lease import LeaseKeeper
from dualplane.common.bridge.limits import LimitOps
from dualplane.common.bridge.subscriptions import SubscriptionOps
from dualplane.common.bridge.translation import translating_errors
from dualplane.common.bridge.uploads import UploadOps

__all__ = ["WORKER_GROUP", "Bridge", "Claim", "Keys", "LeaseKeeper", "Message", "job_from_hash", "node_field",
           "parse_claim"]


@translating_errors
class Bridge(DeliveryOps, DeadLetterOps, JobOps, CancelOps, SubscriptionOps, IndexOps, DirectoryOps, LimitOps,
             AccountOps, UploadOps):
    """Everything the planes do with Redis. A Redis error never leaves it: each becomes a
    :class:`~dualplane.common.errors.BridgeError` (:mod:`.translation`).

    :param config: validated bridge configuration (see ``bridge_config.schema.json``).
    :param client: an existing asyncio client (tests); one is created from the URL otherwise.
    """
