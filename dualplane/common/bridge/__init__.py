"""The Redis bridge: the only package that talks to Redis, spells keys (:mod:`.keys`) and
sends the Lua scripts (:mod:`.batching`).

:class:`Bridge` is one facade over the modules of operations, each a mixin of
:class:`~.connection.BridgeCore`: :mod:`.delivery` (the lane streams' consumer groups),
:mod:`.dead_letters` (and the audit stream), :mod:`.jobs`, :mod:`.cancels`, :mod:`.index` (the
job indexes), :mod:`.directory` (live workers), :mod:`.limits`; :mod:`.lease` keeps in-flight
messages claimed from its own thread.
"""

from __future__ import annotations

from dualplane.common.bridge.cancels import CancelOps
from dualplane.common.bridge.dead_letters import DeadLetterOps
from dualplane.common.bridge.delivery import DeliveryOps, Message
from dualplane.common.bridge.directory import DirectoryOps
from dualplane.common.bridge.index import IndexOps
from dualplane.common.bridge.jobs import Claim, JobOps, job_from_hash, parse_claim
from dualplane.common.bridge.keys import WORKER_GROUP, Keys, node_field
from dualplane.common.bridge.lease import LeaseKeeper
from dualplane.common.bridge.limits import LimitOps

__all__ = ["WORKER_GROUP", "Bridge", "Claim", "Keys", "LeaseKeeper", "Message", "job_from_hash", "node_field",
           "parse_claim"]


class Bridge(DeliveryOps, DeadLetterOps, JobOps, CancelOps, IndexOps, DirectoryOps, LimitOps):
    """Everything the planes do with Redis.

    :param config: validated bridge configuration (see ``bridge_config.schema.json``).
    :param client: an existing asyncio client (tests); one is created from the URL otherwise.
    """
