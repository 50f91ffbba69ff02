"""Silence third-party output that reads like an error but is expected here.

Only the messages listed below are dropped, each for a stated reason; every other warning of
these libraries, and every line of our own, still shows. Progress bars go entirely: a model is
many small files and each drew its own bar (``Writing model shards``, ``Loading weights``,
``Loading pipeline components``), in the terminal of `dualplane up` and in the worker's log.
"""

from __future__ import annotations

import logging
import re
import sys

#: logger -> what it says that is expected in dualplane's use
EXPECTED: dict[str, tuple[re.Pattern[str], ...]] = {
    "transformers": (
        # the tiny random models (dualplane up without real weights) have a 64-entry vocabulary
        # and keep MusicGen's special token ids past it; generation never looks those ids up
        re.compile(r"^Model config: \w+ must be `None` or an integer within the vocabulary"),
        # torchvision is not a dependency: the PIL image processors it falls back to do the same work
        re.compile(r"requires torchvision \(not installed\); falling back to"),
    ),
}


class DropExpected(logging.Filter):
    """Drops records whose message matches one of `patterns`."""

    def __init__(self, patterns: tuple[re.Pattern[str], ...]) -> None:
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(pattern.search(message) for pattern in self.patterns)


def quiet_model_libraries(*, load: bool = False) -> None:
    """Turn off transformers' and diffusers' progress bars and drop their expected warnings.

    Only the libraries already imported are touched, since importing one takes seconds (a worker
    that only speaks with Piper never needs them): call it where they are about to be used and
    again right after. ``load``: import both first, for a caller that is about to use both.
    Idempotent. transformers logs through its own handler, so the filter goes on that handler (a
    filter on a parent logger never sees its children's records).
    """
    if load:
        import diffusers.utils.logging  # noqa: F401
        import transformers.utils.logging  # noqa: F401
    if "transformers" in sys.modules:
        import transformers.utils.logging as transformers_logging

        transformers_logging.disable_progress_bar()  # huggingface_hub's too
        transformers_logging.get_logger()  # makes sure transformers has installed its handler
    if "diffusers" in sys.modules:
        import diffusers.utils.logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    for name, patterns in EXPECTED.items():
        for handler in (*logging.getLogger(name).handlers, *logging.getLogger().handlers):
            if not any(isinstance(f, DropExpected) and f.patterns is patterns for f in handler.filters):
                handler.addFilter(DropExpected(patterns))
