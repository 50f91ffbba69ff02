"""A content classifier for the policy tests, loaded by the policy file as
``tests.policy_classifier:no_shouting`` (a real hook, called with the texts and the context)."""

from __future__ import annotations

from collections.abc import Sequence

from dualplane.control_plane.policy import PolicyContext, PolicyText, Verdict

#: Every call's context, so a test can see what the hook was given.
CALLS: list[PolicyContext] = []


def no_shouting(texts: Sequence[PolicyText], context: PolicyContext) -> Verdict:
    """Refuse a text of at least three words written in capitals only."""
    CALLS.append(context)
    for text in texts:
        if len(text.text.split()) >= 3 and text.text.isupper():
            return Verdict(allow=False, reason=f"{text.where} is shouted (all capitals)", node=text.node)
    return Verdict(allow=True)
