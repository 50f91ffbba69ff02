"""Which statuses end a job or a node: the sets, spelled once, from the generated enums.

Plain strings (the members' values): a StrEnum member and its value find each other in them.

The web UI imports them from ``/ui/statuses.js``, which the control plane writes from these sets
(``control_plane/ui.py``). Code that cannot import this module mirrors it and says so next to
its copy; tests compare each copy with these sets (``tests/test_job_state.py``):
``lua/dead_letter.lua`` and ``lua/requeue.lua`` (:data:`FINISHED`).
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
