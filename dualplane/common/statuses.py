"""Which statuses end a job or a node: the sets, spelled once, from the generated enums.

Plain strings (the members' values): a StrEnum member and its value find each other in them.

Nothing else spells them: the Lua scripts get :data:`FINISHED` as a table written at their head
(``common/bridge/batching.py``), and the web UI imports the sets from ``/ui/statuses.js``, which
the control plane writes from them (``control_plane/ui.py``); ``tests/test_job_state.py`` checks
that no script or UI module writes a copy.
"""

from __future__ import annotations

from dualplane.common.models import JobStatus, NodeStatus

#: Job statuses after which nothing changes any more.
FINISHED: frozenset[str] = frozenset(
    s.value for s in (JobStatus.succeeded, JobStatus.failed, JobStatus.partial, JobStatus.cancelled))
#: Node statuses after which a node never runs again.
TERMINAL: frozenset[str] = frozenset(
    s.value for s in (NodeStatus.succeeded, NodeStatus.failed, NodeStatus.skipped, NodeStatus.cancelled))
#: Node statuses that let a dependent run.
SATISFIED: frozenset[str] = frozenset({NodeStatus.succeeded.value})
