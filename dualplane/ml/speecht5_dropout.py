"""SpeechT5's decoder-prenet dropout drawn from a private, seeded generator (a monkeypatch of
transformers' ``SpeechT5SpeechDecoderPrenet._consistent_dropout``, installed on first use).

The rest of torch's shared generator is :mod:`dualplane.ml.rng`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

_dropout = threading.local()
_patch_lock = threading.Lock()
_patched = False


@contextlib.contextmanager
def dropout_rng(device: str, seed: int) -> Iterator[None]:
    """Run SpeechT5 with its decoder-prenet dropout drawn from a private, seeded generator.

    SpeechT5 applies that dropout at inference too (it is what varies the prosody), and draws it
    from torch's *global* generator, which every task thread of the worker shares: two jobs
    seeding it at once would interleave their draws. This installs (once) a wrapper of the
    prenet's ``_consistent_dropout`` that uses the calling thread's generator while this context
    is open, and the original behaviour otherwise.
    """
    import torch

    _install_dropout_patch()
    previous = getattr(_dropout, "generator", None)
    _dropout.generator = torch.Generator(device=device).manual_seed(seed)
    try:
        yield
    finally:
        _dropout.generator = previous


def _install_dropout_patch() -> None:
    global _patched
    with _patch_lock:
        if _patched:
            return
        import torch
        from transformers.models.speecht5 import modeling_speecht5

        prenet = modeling_speecht5.SpeechT5SpeechDecoderPrenet
        original = prenet._consistent_dropout

        def _consistent_dropout(self: Any, inputs_embeds: Any, p: float) -> Any:
            generator = getattr(_dropout, "generator", None)
            if generator is None:
                return original(self, inputs_embeds, p)
            # the same computation as transformers', with the generator
            mask = torch.bernoulli(inputs_embeds[0], p=p, generator=generator)
            all_masks = mask.unsqueeze(0).repeat(inputs_embeds.size(0), 1, 1)
            return torch.where(all_masks == 1, inputs_embeds, 0) * 1 / (1 - p)

        prenet._consistent_dropout = _consistent_dropout
        _patched = True
