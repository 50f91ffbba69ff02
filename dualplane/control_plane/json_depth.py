"""Nesting depth of a JSON text, measured on its bytes, without parsing and without recursion.

The parsers behind the API each stop somewhere (orjson at 254 levels, pydantic's JSON parser
at 200, its serializer earlier still), and a job's params travel several levels deeper inside
the handoff message than they sit in the request body. A body that passes one of them and
fails a later one became a 5xx or a dead-lettered job, so the API bounds depth once, on the
raw bytes, far below all of them.

:func:`nesting_exceeds` is the cheap test every body gets (C-speed byte operations only);
:func:`locate` is the slower token scan that runs only for a body already rejected, to say
where the deep part is (which node, which field).
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass
from itertools import accumulate

import orjson

_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
_STRINGS = re.compile(_STRING, re.DOTALL)
_TOKENS = re.compile(_STRING + rb"|[\[\]{},]", re.DOTALL)
_ONE_KIND = bytes.maketrans(b"{}", b"[]")
_NOT_A_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
_STEPS = bytes.maketrans(b"[]", bytes([1, 255]))  # +1 and -1 as signed bytes
_OPENERS = frozenset(b"[{")
_CLOSERS = frozenset(b"]}")
#: Path components kept for messages (the rest of a deep path says nothing more).
PATH_KEPT = 8


def nesting_exceeds(body: bytes, limit: int) -> bool:
    """Whether arrays and objects in ``body`` nest more than ``limit`` levels deep.

    Strings are cut out (brackets inside them do not count) and both bracket kinds become
    one. Each ``replace`` pass then removes the innermost level of every pair, which is cheap
    while passes shrink the text; once one barely does (tall towers side by side), the depth
    left is read from prefix sums instead, so a 1 MiB body costs a few passes at most plus
    one linear sum. Unbalanced text (invalid JSON) is judged by its matched pairs, roughly;
    the parser rejects it anyway.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # the usual body: fewer brackets than levels allowed, whatever strings hold
    brackets = _STRINGS.sub(b"", body).translate(_ONE_KIND, _NOT_A_BRACKET)
    for removed in range(limit):
        reduced = brackets.replace(b"[]", b"")
        if len(reduced) == len(brackets):
            return False
        if len(reduced) * 4 > len(brackets) * 3:
            return removed + 1 + _max_depth(reduced) > limit
        brackets = reduced
    return b"[]" in brackets


def _max_depth(brackets: bytes) -> int:
    """The deepest prefix of ``[``/``]`` text (C loops: translate, array, accumulate)."""
    if not brackets:
        return 0
    return max(0, max(accumulate(array("b", brackets.translate(_STEPS)))))


@dataclass(frozen=True)
class DeepSpot:
    """Where a body first nests too deep: ``path`` holds the keys and indexes leading to the
    first container past the limit (the first :data:`PATH_KEPT` of them); ``ids`` the
    ``"id"`` string of each object on that path when it came before the deep part."""

    path: tuple[str | int, ...]
    ids: tuple[str | None, ...]

    def pointer(self) -> str:
        """``$.nodes[0].params.value[0]…`` for messages."""
        text = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.path)
        return text + ("…" if len(self.path) >= PATH_KEPT else "")


class _Open:
    """One open container during :func:`locate`: its current key (object) or index (array)."""

    __slots__ = ("ident", "is_object", "key", "want_key")

    def __init__(self, is_object: bool) -> None:
        self.is_object = is_object
        self.key: str | int | None = None if is_object else 0
        self.want_key = is_object
        self.ident: str | None = None


def locate(body: bytes, limit: int) -> DeepSpot | None:
    """The first container of ``body`` nested deeper than ``limit`` (None when there is none).

    One pass over strings, brackets and commas (a loop, not recursion); keys are decoded only
    along the first :data:`PATH_KEPT` levels. Only rejected bodies pay for it."""
    stack: list[_Open] = []
    for match in _TOKENS.finditer(body):
        first = body[match.start()]
        if first in _OPENERS:
            if len(stack) == limit:
                return _spot(stack)
            stack.append(_Open(first == ord("{")))
        elif first in _CLOSERS:
            if stack:
                stack.pop()
        elif not stack:
            continue
        elif first == ord(","):
            _next_member(stack[-1])
        elif len(stack) <= PATH_KEPT:
            _string(stack[-1], match.group())
    return None


def _next_member(top: _Open) -> None:
    if top.is_object:
        top.want_key = True
    elif isinstance(top.key, int):
        top.key += 1


def _string(top: _Open, token: bytes) -> None:
    if not top.is_object:
        return
    if top.want_key:
        top.key, top.want_key = _decode(token), False
    elif top.key == "id":
        top.ident = _decode(token)


def _decode(token: bytes) -> str:
    try:
        value = orjson.loads(token)
    except orjson.JSONDecodeError:
        return token[1:-1].decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


def _spot(stack: list[_Open]) -> DeepSpot:
    kept = stack[:PATH_KEPT]
    return DeepSpot(path=tuple(o.key if o.key is not None else "?" for o in kept),
                    ids=tuple(o.ident for o in kept))
