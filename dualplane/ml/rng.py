"""torch's global random generator, shared by the tasks a worker runs at once.

``torch.manual_seed`` and every draw without a ``generator=`` (``model.generate``'s sampling,
fresh module weights) use one generator per process (per device). Two jobs in two task threads
would interleave their draws: a seeded job would no longer reproduce its output, and an
unseeded one would reseed nobody knows whom. Tasks that can pass their own ``torch.Generator``
do (render_video, train_lora's noise, synthesize_voice); those that cannot hold
:data:`GLOBAL_RNG` around the draws, through :func:`seeded`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: Held while a task draws from (or seeds) the process-wide generator. Take it before
#: ``BUILD_LOCK`` when both are needed (a generation holds it for long; loads need BUILD_LOCK).
GLOBAL_RNG = threading.RLock()


@contextmanager
def seeded(seed: int | None, device: str = "cpu") -> Iterator[None]:
    """Draw from the global generator(s) seeded with ``seed`` inside the block, then put back
    the state they had (so a seeded job leaves later unseeded ones random). ``seed=None``
    draws from the current state. Hold :data:`GLOBAL_RNG` around it (``ctx.holding`` waits for
    it and stays cancellable)."""
    import torch

    if seed is None:
        yield
        return
    devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
