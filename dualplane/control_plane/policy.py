"""The content policy: which words and inputs a job may carry, read from a YAML file.

A policy is a list of rules (``policy.default.yaml`` is the packaged one, documented there and
in the README; ``DUALPLANE_POLICY_FILE`` names another). Each rule applies to some tasks
(generators) and/or planned goals (``*``: all) and may check, in this order:

* ``blocked_terms`` — whole words or phrases, matched case-insensitively on a folded text (see
  :func:`fold`): NFKC (fullwidth ``Ｆｏｏ``, ligatures), invisible format characters dropped
  (zero-width spaces, soft hyphens), accents stripped, a few Cyrillic/Greek look-alikes and
  digits-for-letters (``f00``, ``$``) mapped to Latin letters, and one separator repeated between
  the letters of a word (``f.o.o``, ``f o o``, ``f-o-o``) read as no separator. Mixed separators
  (``an al``) are not joined, so short words next to each other do not make a term;
* ``blocked_patterns`` — regular expressions (the ``regex`` module, case-insensitive) searched in
  the NFKC text without invisible characters. Each search is bounded (:data:`PATTERN_TIMEOUT_S`);
  a pattern that backtracks catastrophically on a probe is refused when the policy loads, and one
  that still runs out of time on a request refuses it (the policy fails closed);
* ``allowed_languages`` — the language the planner reads lyrics in
  (:func:`~dualplane.control_plane.intent_text.detect_language`) must be one of these. Only words
  to be sung or spoken are judged (:data:`WORDS_PARAMS`: lyrics, scripts, text uploads), not
  prompts, and only when long enough to tell (:data:`MIN_LANGUAGE_WORDS` words or more): the
  detector reads stop words, so "a calm piano piece" would pass for Portuguese;
* ``require_consent_for_voice_cloning`` — every clip of a voice-cloning node
  (:data:`VOICE_CLONING_TASKS`) must be one of the user's uploads indexed with ``consent: true``;
* ``classifier: "module:function"`` — called with the texts in the rule's scope and a
  :class:`PolicyContext`, sync (run in a thread) or async, within :data:`CLASSIFIER_TIMEOUT_S`;
  it returns a :class:`Verdict` (or anything with ``allow`` and ``reason``). A classifier that
  raises, times out or answers something else refuses the request (fails closed).

The first rule that fires refuses the request with its id (HTTP 422); a request no rule refuses
is allowed. The texts are the string params named in :data:`TEXT_PARAMS` (at any depth of a
node's params, lists of strings included), the /compose intent's prompt, style and lyrics, and
the content of the user's uploads of kind ``text`` that a node names by key.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import inspect
import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydantic
import regex
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dualplane.common.access import literal_keys
from dualplane.common.errors import DualplaneError, Unprocessable
from dualplane.common.models import Brief, Graph
from dualplane.common.registry import TaskRegistry
from dualplane.control_plane.intent_text import detect_language
from dualplane.control_plane.planner import GOALS, StructuredIntent, goal_of
from dualplane.control_plane.uploads import UploadRecord

log = logging.getLogger("dualplane.policy")

#: The packaged policy, used when ``DUALPLANE_POLICY_FILE`` is unset.
DEFAULT_POLICY_FILE = Path(__file__).with_name("policy.default.yaml")
#: Params (by name, at any depth) that hold a user's words.
TEXT_PARAMS = frozenset({"prompt", "negative_prompt", "lyrics", "text", "script", "title", "narrative",
                         "instance_prompt", "transcripts", "style", "mood", "moods"})
#: Of those, the ones holding words to be sung or spoken (whose language ``allowed_languages`` judges, as
#: the planner reads the language of given lyrics and scripts), and text uploads; prompts are instructions.
WORDS_PARAMS = frozenset({"lyrics", "text", "script", "transcripts", "upload"})
#: Tasks that clone a voice from clips (their ``clips`` param).
VOICE_CLONING_TASKS = frozenset({"train_voice"})
#: Longest one pattern search may take; a probe that takes longer refuses the pattern at load.
PATTERN_TIMEOUT_S = 0.05
#: Longest a classifier may take on one request.
CLASSIFIER_TIMEOUT_S = 10.0
#: Fewer words than this (or CJK characters) are too few to tell a language.
MIN_LANGUAGE_WORDS = 4
#: Uploaded text read for checking; a larger text upload is refused (lyrics and scripts are far smaller).
MAX_UPLOADED_TEXT_BYTES = 1024 * 1024
#: The rule id of the built-in limit on uploaded text (a refusal names a rule, this one included).
UPLOADED_TEXT_RULE = "uploaded-text-size"
#: Strings a catastrophically backtracking pattern chokes on (``(a+)+$``, ``(\s*)*x``, ``(\d+)+y``).
_PROBES = ("a" * 4096 + "!", " " * 4096 + "!", "1" * 4096 + "!", "ab" * 2048 + "!")
_RULE_ID = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
_CLASSIFIER_REF = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
_CJK = re.compile(r"[\u3040-\u30ff\uac00-\ud7af\u4e00-\u9fff]")
_WORD = re.compile(r"[^\W\d_]+")


# -- errors and results -------------------------------------------------------------------


class PolicyError(DualplaneError):
    """A policy file that cannot be used: the control plane does not start with it."""


class PolicyRefusal(Unprocessable):
    """A request the policy refuses (HTTP 422): ``rule`` fired, on ``node`` (None: the intent)."""

    title = "Refused by the content policy"

    def __init__(self, rule: str, detail: str, node: str | None = None) -> None:
        super().__init__(detail)
        self.rule, self.detail, self.node = rule, detail, node

    def problem_fields(self) -> dict[str, Any]:
        return {"rule": self.rule, "node": self.node}


@dataclass(frozen=True)
class PolicyText:
    """One text to check: where it is (``nodes.<id>.params.<path>``, ``intent.prompt``, ``upload <key>``),
    the param it is (one of :data:`TEXT_PARAMS`, or ``upload``) and the node and task it belongs to
    (None: the /compose intent, judged by every rule of the job)."""

    text: str
    where: str
    param: str
    node: str | None = None
    task: str | None = None


@dataclass(frozen=True)
class Clip:
    """A voice clip a voice-cloning node names (a key, a URL or a ``$ref``)."""

    value: Any
    node: str
    task: str
    index: int


@dataclass(frozen=True)
class PolicyContext:
    """What a classifier knows besides the texts."""

    user: str | None
    stage: Literal["submit", "compose"]
    goal: str | None
    tasks: frozenset[str]


class Verdict(BaseModel):
    """A classifier's answer."""

    model_config = ConfigDict(extra="ignore", from_attributes=True)
    allow: bool
    reason: str = ""
    node: str | None = None


@dataclass(frozen=True)
class Decision:
    """An allowed request: what the audit event on its job says."""

    policy: str
    digest: str
    stage: str
    rules: tuple[str, ...]
    texts: int
    clips: int

    def audit_data(self) -> dict[str, Any]:
        return {"decision": "allowed", "policy": self.policy, "digest": self.digest, "stage": self.stage,
                "rules": list(self.rules), "texts": self.texts, "clips": self.clips}


#: ``async (user, key) -> record`` of one of the user's uploads (the upload index).
UploadLookup = Callable[[str, str], Awaitable[UploadRecord | None]]
#: ``async (key) -> bytes`` of an object (the artifact store).
ObjectReader = Callable[[str], Awaitable[bytes]]


# -- the file -----------------------------------------------------------------------------


class AppliesTo(BaseModel):
    """Tasks (generators) and planned goals a rule judges; ``*`` in ``tasks`` means every task."""

    model_config = ConfigDict(extra="forbid")
    tasks: list[str] = Field(default_factory=list)
    goals: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _star(cls, value: Any) -> Any:
        return {"tasks": ["*"]} if value == "*" else value

    @model_validator(mode="after")
    def _something(self) -> AppliesTo:
        if not self.tasks and not self.goals:
            raise ValueError("applies_to names no task and no goal (use '*' for everything)")
        unknown = sorted(set(self.goals) - set(GOALS))
        if unknown:
            raise ValueError(f"unknown goals {unknown}; planned goals are {', '.join(GOALS)}")
        return self

    def covers(self, task: str | None, goal: str | None, tasks: Iterable[str]) -> bool:
        """Whether a text of ``task`` (None: of the intent, so of every task of the job) is in scope."""
        if "*" in self.tasks or (goal is not None and goal in self.goals):
            return True
        return task in self.tasks if task is not None else any(t in self.tasks for t in tasks)


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=_RULE_ID)
    description: str = ""
    applies_to: AppliesTo = Field(default_factory=lambda: AppliesTo(tasks=["*"]))
    blocked_terms: list[str] = Field(default_factory=list)
    blocked_patterns: list[str] = Field(default_factory=list)
    allowed_languages: list[str] | None = None
    require_consent_for_voice_cloning: bool = False
    classifier: str | None = Field(None, pattern=_CLASSIFIER_REF)

    @field_validator("allowed_languages")
    @classmethod
    def _codes(cls, codes: list[str] | None) -> list[str] | None:
        if codes is not None and not all(re.fullmatch(r"[a-z]{2}", c) for c in codes):
            raise ValueError("languages are two-letter codes (en, es, fr, ...)")
        return codes

    @field_validator("blocked_terms")
    @classmethod
    def _terms(cls, terms: list[str]) -> list[str]:
        for term in terms:
            if not re.search(r"[^\W_]", fold(term)):
                raise ValueError(f"blocked term {term!r} has no letters or digits")
        return terms

    @model_validator(mode="after")
    def _checks_something(self) -> Rule:
        if not (self.blocked_terms or self.blocked_patterns or self.allowed_languages is not None
                or self.require_consent_for_voice_cloning or self.classifier):
            raise ValueError("the rule checks nothing")
        return self


class PolicyFile(BaseModel):
    """The YAML document."""

    model_config = ConfigDict(extra="forbid")
    version: Literal[1] = 1
    name: str = Field(min_length=1, max_length=100)
    description: str = ""
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> PolicyFile:
        ids = [r.id for r in self.rules]
        duplicated = sorted({i for i in ids if ids.count(i) > 1} | ({UPLOADED_TEXT_RULE} & set(ids)))
        if duplicated:
            raise ValueError(f"rule ids must be unique and not {UPLOADED_TEXT_RULE!r}: {duplicated}")
        return self


# -- matching -----------------------------------------------------------------------------

_LOOKALIKES = str.maketrans({
    # Cyrillic and Greek letters drawn like Latin ones (after casefold)
    "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t",
    "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "α": "a", "β": "b", "ε": "e", "ι": "i",
    "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x",
    # digits and signs written for letters
    "0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s",
})


def clean(text: str) -> str:
    """NFKC without invisible format characters (what patterns are searched in)."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")


def fold(text: str) -> str:
    """:func:`clean`, casefolded, accents stripped and look-alikes mapped (what terms are matched in)."""
    text = unicodedata.normalize("NFKD", clean(text).casefold())
    return "".join(ch for ch in text if not unicodedata.combining(ch)).translate(_LOOKALIKES)


class Term:
    """A blocked term, matched as whole words in a folded text: within each word one separator
    sequence (up to two characters, the same each time) may stand between the letters; words are
    apart by any separators (none included). A spaced-out word must not go on past the term with
    its separator ("f-o-o-d" is not "foo"; "you are f o o" is)."""

    def __init__(self, term: str) -> None:
        self.term = term
        words = re.findall(r"[^\W_]+", fold(term))
        parts = []
        for w, word in enumerate(words):
            letters = [re.escape(ch) for ch in word]
            if len(letters) == 1:
                parts.append(letters[0])
            else:
                parts.append(letters[0] + rf"(?P<s{w}>[\W_]{{0,2}})" + letters[1]
                             + "".join(f"(?P=s{w})" + c for c in letters[2:]))
        self._regex = re.compile(r"(?<![^\W_])" + r"[\W_]*".join(parts) + r"(?![^\W_])")
        self._first = "s0" if len(words[0]) > 1 else None
        self._last = f"s{len(words) - 1}" if len(words[-1]) > 1 else None

    def found_in(self, folded: str) -> bool:
        for match in self._regex.finditer(folded):
            before = match.group(self._first) if self._first else ""
            after = match.group(self._last) if self._last else ""
            start, end = match.start(), match.end()
            if before and folded[:start].endswith(before) and _lone_letter(folded, start - len(before) - 1):
                continue
            if after and folded.startswith(after, end) and _lone_letter(folded, end + len(after)):
                continue
            return True
        return False


def _lone_letter(text: str, index: int) -> bool:
    """Whether ``text[index]`` is a letter or digit standing alone (a spelled-out word goes on)."""
    return (0 <= index < len(text) and text[index].isalnum()
            and not (index > 0 and text[index - 1].isalnum()) and not text[index + 1:index + 2].isalnum())


def _compile_pattern(rule_id: str, pattern: str) -> regex.Pattern[str]:
    try:
        compiled = regex.compile(pattern, regex.IGNORECASE | regex.V0)
    except regex.error as exc:
        raise PolicyError(f"rule {rule_id!r}: blocked pattern {pattern!r} is not a valid regex: {exc}") from None
    for probe in _PROBES:
        try:
            compiled.search(probe, timeout=PATTERN_TIMEOUT_S)
        except TimeoutError:
            raise PolicyError(f"rule {rule_id!r}: blocked pattern {pattern!r} backtracks catastrophically (it ran "
                              f"past {PATTERN_TIMEOUT_S} s on a {len(probe)}-character probe); rewrite it without "
                              "nested or overlapping repeats") from None
    return compiled


def _load_classifier(rule_id: str, ref: str) -> Callable[..., Any]:
    module_name, _, name = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raises while it loads
        raise PolicyError(f"rule {rule_id!r}: classifier {ref!r}: cannot import {module_name!r}: "
                          f"{type(exc).__name__}: {exc}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise PolicyError(f"rule {rule_id!r}: classifier {ref!r}: {module_name} has no function {name!r}")
    return fn


@dataclass
class _CompiledRule:
    rule: Rule
    terms: list[Term]
    patterns: list[tuple[str, regex.Pattern[str]]]
    classifier: Callable[..., Any] | None = None
    in_scope: list[PolicyText] = field(default_factory=list)


# -- the policy ---------------------------------------------------------------------------


class Policy:
    """A loaded policy: rules compiled, classifiers imported.

    :param document: the parsed file.
    :param source: where it came from (logs, errors).
    :param digest: sha256 of the file's bytes (the audit events name the policy by it).
    """

    def __init__(self, document: PolicyFile, *, source: str, digest: str) -> None:
        self.name, self.source, self.digest = document.name, source, digest
        self._rules = [
            _CompiledRule(
                rule=rule,
                terms=[Term(term) for term in rule.blocked_terms],
                patterns=[(p, _compile_pattern(rule.id, p)) for p in rule.blocked_patterns],
                classifier=_load_classifier(rule.id, rule.classifier) if rule.classifier else None,
            )
            for rule in document.rules
        ]

    @property
    def rules(self) -> list[Rule]:
        return [compiled.rule for compiled in self._rules]

    @classmethod
    def load(cls, path: str | Path | None = None, *, registry: TaskRegistry | None = None) -> Policy:
        """Read, validate and compile a policy file (the packaged one when ``path`` is None).
        Raises :class:`PolicyError` saying what is wrong and where; ``registry`` checks task names."""
        path = Path(path) if path else DEFAULT_POLICY_FILE
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise PolicyError(f"policy file {path}: {exc.strerror or exc}") from None
        try:
            document = PolicyFile.model_validate(yaml.safe_load(raw))
        except yaml.YAMLError as exc:
            raise PolicyError(f"policy file {path} is not valid YAML: {exc}") from None
        except pydantic.ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'document'}: {e['msg']}"
                                 for e in exc.errors(include_url=False))
            raise PolicyError(f"policy file {path}: {problems}") from None
        if registry is not None:
            known = {spec.name for spec in registry.for_plane("control") + registry.for_plane("python")}
            for rule in document.rules:
                unknown = sorted(set(rule.applies_to.tasks) - known - {"*"})
                if unknown:
                    raise PolicyError(f"policy file {path}: rule {rule.id!r} names unknown tasks {unknown}")
        try:
            policy = cls(document, source=str(path), digest=hashlib.sha256(raw).hexdigest()[:16])
        except PolicyError as exc:
            raise PolicyError(f"policy file {path}: {exc}") from None
        log.info("content policy %r (%s, %d rules) from %s", policy.name, policy.digest, len(policy._rules), path)
        return policy

    async def evaluate(self, texts: Sequence[PolicyText], clips: Sequence[Clip], context: PolicyContext, *,
                       uploads: UploadLookup) -> Decision:
        """Allow (the :class:`Decision`) or refuse (raises :class:`PolicyRefusal`) a request."""
        applied = []
        for compiled in self._rules:
            rule = compiled.rule
            scope = [t for t in texts if rule.applies_to.covers(t.task, context.goal, context.tasks)]
            scoped_clips = [c for c in clips if rule.applies_to.covers(c.task, context.goal, context.tasks)]
            if not scope and not (rule.require_consent_for_voice_cloning and scoped_clips):
                continue
            applied.append(rule.id)
            for text in scope:
                self._check_text(compiled, text)
            if rule.require_consent_for_voice_cloning:
                for clip in scoped_clips:
                    await _check_consent(rule.id, clip, context.user, uploads)
            if compiled.classifier is not None and scope:
                await _classify(rule.id, compiled.classifier, scope, context)
        return Decision(policy=self.name, digest=self.digest, stage=context.stage, rules=tuple(applied),
                        texts=len(texts), clips=len(clips))

    def _check_text(self, compiled: _CompiledRule, text: PolicyText) -> None:
        rule = compiled.rule
        if compiled.terms:
            folded = fold(text.text)
            for term in compiled.terms:
                if term.found_in(folded):
                    raise PolicyRefusal(rule.id, f"{text.where} contains the blocked term {term.term!r}", text.node)
        if compiled.patterns:
            cleaned = clean(text.text)
            for source, pattern in compiled.patterns:
                try:
                    found = pattern.search(cleaned, timeout=PATTERN_TIMEOUT_S)
                except TimeoutError:
                    log.warning("rule %s: pattern %r ran out of time on %s", rule.id, source, text.where)
                    raise PolicyRefusal(rule.id, f"{text.where} could not be checked against a blocked pattern "
                                                 "in time", text.node) from None
                if found:
                    raise PolicyRefusal(rule.id, f"{text.where} matches a blocked pattern ({found.group(0)!r})",
                                        text.node)
        if rule.allowed_languages is not None and text.param in WORDS_PARAMS and _judgeable(text.text):
            language = detect_language(text.text)
            if language not in rule.allowed_languages:
                raise PolicyRefusal(rule.id, f"{text.where} is in a language this service does not take "
                                             f"({language}; allowed: {', '.join(rule.allowed_languages)})",
                                    text.node)


def _judgeable(text: str) -> bool:
    return len(_WORD.findall(text)) >= MIN_LANGUAGE_WORDS or len(_CJK.findall(text)) >= MIN_LANGUAGE_WORDS


async def _check_consent(rule_id: str, clip: Clip, user: str | None, uploads: UploadLookup) -> None:
    """A clip must be one of the user's uploads, indexed with consent. What is wrong with another
    user's key reads exactly as with a missing one (nothing tells whether it exists)."""
    record = None
    if user is not None and isinstance(clip.value, str) and clip.value.startswith(f"uploads/{user}/"):
        record = await uploads(user, clip.value)
    if record is None or not record.consent:
        shown = clip.value if isinstance(clip.value, str) else "a $ref"
        raise PolicyRefusal(rule_id, f"voice cloning needs the speaker's consent: clip {clip.index} ({shown!r}) "
                                     "is not one of your uploads made with consent=true", clip.node)


async def _classify(rule_id: str, classifier: Callable[..., Any], texts: list[PolicyText],
                    context: PolicyContext) -> None:
    try:
        if inspect.iscoroutinefunction(classifier):
            answer = await asyncio.wait_for(classifier(texts, context), CLASSIFIER_TIMEOUT_S)
        else:
            answer = await asyncio.wait_for(asyncio.to_thread(classifier, texts, context), CLASSIFIER_TIMEOUT_S)
        verdict = Verdict.model_validate(answer)
    except Exception as exc:  # fails closed: a policy that cannot decide does not let the request through
        log.error("rule %s: the classifier failed: %s: %s", rule_id, type(exc).__name__, exc)
        raise PolicyRefusal(rule_id, "the content classifier could not judge the request") from None
    if not verdict.allow:
        raise PolicyRefusal(rule_id, verdict.reason or "refused by the content classifier", verdict.node)


# -- what a request carries ---------------------------------------------------------------


def graph_texts(graph: Graph) -> list[PolicyText]:
    """Every user text in the nodes' params (by :data:`TEXT_PARAMS`, at any depth)."""
    return [PolicyText(text, f"nodes.{node.id}.params.{path}", param, node.id, node.task)
            for node in graph.nodes for path, text, param in _texts_in(node.params, "", None)]


def _texts_in(value: Any, path: str, param: str | None) -> Iterator[tuple[str, str, str]]:
    """``(path, text, param)`` of the strings under a :data:`TEXT_PARAMS` key (``param``: the nearest)."""
    if isinstance(value, str):
        if param is not None and value.strip():
            yield path, value, param
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and key != "$ref":
                yield from _texts_in(item, f"{path}.{key}" if path else key, key if key in TEXT_PARAMS else None)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _texts_in(item, f"{path}.{index}", param)


def voice_clips(graph: Graph) -> list[Clip]:
    clips = []
    for node in graph.nodes:
        if node.task in VOICE_CLONING_TASKS:
            values = node.params.get("clips")
            for index, value in enumerate(values if isinstance(values, list) else [values]):
                clips.append(Clip(value=value, node=node.id, task=node.task, index=index))
    return clips


async def uploaded_texts(graph: Graph, registry: TaskRegistry, user: str, *, uploads: UploadLookup,
                         read: ObjectReader) -> list[PolicyText]:
    """The content of the user's text uploads the nodes name by key (others' keys are not read)."""
    texts, seen = [], set()
    for node in graph.nodes:
        spec = registry.get(node.task)
        if spec is None:
            continue
        for _, key in literal_keys(spec.params, node.params):
            if key in seen or not key.startswith(f"uploads/{user}/"):
                continue
            seen.add(key)
            record = await uploads(user, key)
            if record is None or record.kind != "text":
                continue
            if record.size > MAX_UPLOADED_TEXT_BYTES:
                raise PolicyRefusal(UPLOADED_TEXT_RULE, f"upload {key} is {record.size} bytes of text; at most "
                                                        f"{MAX_UPLOADED_TEXT_BYTES} are taken", node.id)
            data = await read(key)
            texts.append(PolicyText(data[:MAX_UPLOADED_TEXT_BYTES].decode("utf-8", "replace"), f"upload {key}",
                                    "upload", node.id, node.task))
    return texts


def intent_texts(intent: str | StructuredIntent | None, brief: Brief | None) -> list[PolicyText]:
    """The words of a /compose request itself (the graph's params are checked apart)."""
    if isinstance(intent, str):
        return [PolicyText(intent, "intent", "prompt")]
    texts = []
    if intent is not None:
        for where, param, value in (("intent.prompt", "prompt", intent.prompt), ("intent.style", "style", intent.style),
                                    ("intent.inputs.lyrics", "lyrics", intent.inputs.lyrics)):
            if value:
                texts.append(PolicyText(value, where, param))
    if brief is not None and brief.prompt:
        texts.append(PolicyText(brief.prompt, "brief.prompt", "prompt"))
    return texts


def planned_goal(graph: Graph) -> str | None:
    """The goal of a graph the planner composed (it carries its brief), else None."""
    brief = (graph.metadata or {}).get("brief")
    if not isinstance(brief, dict):
        return None
    try:
        return goal_of(Brief.model_validate(brief))
    except pydantic.ValidationError:
        return None


__all__ = [
    "CLASSIFIER_TIMEOUT_S",
    "DEFAULT_POLICY_FILE",
    "TEXT_PARAMS",
    "VOICE_CLONING_TASKS",
    "WORDS_PARAMS",
    "Clip",
    "Decision",
    "Policy",
    "PolicyContext",
    "PolicyError",
    "PolicyRefusal",
    "PolicyText",
    "Term",
    "Verdict",
    "clean",
    "fold",
    "graph_texts",
    "intent_texts",
    "planned_goal",
    "uploaded_texts",
    "voice_clips",
]
