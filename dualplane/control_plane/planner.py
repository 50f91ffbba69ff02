"""The planner: an intent (free text, the UI's structured form, or a brief) → a brief → a graph.

It is a small LangGraph graph::

    START ─(a chat model is configured)─> llm ─(a valid brief)──> compose ──> END
      │                                    └─(garbage/failure)─┐     ▲
      └──────────────────────────────────> rules <─────────────┘ ────┘

``rules`` reads the brief from the words (:mod:`intent_text`); ``llm`` asks a langchain-core
chat model (Ollama when ``OLLAMA_URL`` is set) to fill the same brief through structured output,
and falls back to the rules with a note when the answer is not a brief. ``compose``
(:mod:`composer`) builds the graph from the brief by capability, against the catalog and the
live workers' manifests. Either path can be tested alone: they share one brief schema.

Every difference between what was asked and what will run is a note (``kind``: clamped,
substituted, ignored, impossible, assumed, random_weights, unavailable, fallback); with
``strict`` a plan with a substituted or impossible note is refused instead.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypedDict

import orjson
import pydantic
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, ConfigDict, Field

from dualplane.common.models.brief import Brief
from dualplane.common.registry import TaskRegistry
from dualplane.common.settings import PlannerSettings
from dualplane.control_plane.composer import Capabilities, Composer, Unplannable
from dualplane.control_plane.intent_text import NotUnderstood, brief_from_text
from dualplane.tasks.song import SongParams, make_plan

#: Note kinds ``strict`` refuses: the job would not be the one asked for.
STRICT_KINDS = frozenset({"substituted", "impossible"})
Goal = Literal["music", "song", "music_video", "lora_video", "voice_track"]


class Inputs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: list[str] = Field(default_factory=list, max_length=64,
                              description="Object keys or URLs of style/subject images (a trained style, LoRA).")
    voice_clips: list[str] = Field(default_factory=list, max_length=64,
                                   description="Object keys or URLs of voice recordings (a trained voice).")
    lyrics: str | None = Field(None, max_length=10_000, description="Words to sing or speak; written if absent.")


class StructuredIntent(BaseModel):
    """What a user wants, from a form: the words plus uploads and settings (the UI sends this)."""

    model_config = ConfigDict(extra="forbid")
    goal: Goal | None = Field(None, description="A hint of the parts (older clients); read from the words if absent.")
    prompt: str = Field(..., min_length=1, max_length=4000)
    duration_s: float | None = Field(None, gt=0, le=3600, description="Longer than the generators allow is clamped, "
                                                                      "with a note.")
    style: str | None = Field(None, max_length=200)
    inputs: Inputs = Field(default_factory=Inputs)
    options: dict[str, Any] = Field(default_factory=dict, description="{'mode': 'melody-only' | 'lyrics-first'}, "
                                                                      "and per-node params, e.g. {'music': {...}}.")


class Plan(BaseModel):
    """What the planner made: the brief it read, the graph it composed, and every note."""

    brief: dict[str, Any]
    graph: dict[str, Any]
    planner: Literal["rules", "llm", "brief"]
    goal: str = Field(description="A label of the parts, e.g. music_video.")
    notes: list[dict[str, Any]] = Field(default_factory=list)
    song: dict[str, Any] | None = Field(None, description="The song plan_song will write (title, key, sections, "
                                                          "lyrics), shown before the job runs.")


class StrictRefusal(ValueError):
    """``strict``: the plan would differ from the request; the notes say how."""

    def __init__(self, notes: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(n["message"] for n in notes))
        self.notes = notes


class _State(TypedDict, total=False):
    intent: StructuredIntent
    brief: Brief
    planner: str
    notes: list[dict[str, Any]]
    plan: Plan


CapabilitySource = Callable[[], Awaitable[Capabilities]]


class Planner:
    """Turns intents into plans.

    :param registry: the task catalog plans are composed and validated against.
    :param chat_model: an optional langchain-core chat model; None plans with rules only.
    :param capabilities: returns what the live data plane offers (None: nothing known).
    """

    def __init__(self, registry: TaskRegistry, *, chat_model: Any = None,
                 capabilities: CapabilitySource | None = None) -> None:
        self._registry = registry
        self._composer = Composer(registry)
        self._chat_model = chat_model
        self._capabilities = capabilities
        self._graph = self._compile()

    def _compile(self) -> Any:
        builder = StateGraph(_State)
        builder.add_node("rules", self._rules)
        builder.add_node("llm", self._llm)
        builder.add_conditional_edges(START, lambda s: "llm" if self._chat_model is not None else "rules",
                                      ["llm", "rules"])
        builder.add_conditional_edges("llm", lambda s: END if s.get("brief") else "rules", ["rules", END])
        builder.add_edge("rules", END)
        return builder.compile()

    async def plan(self, intent: str | StructuredIntent | Brief | dict[str, Any], *, strict: bool = False) -> Plan:
        """A plan whose graph validates; raises :class:`NotUnderstood` (nothing to make),
        :class:`StrictRefusal`, or pydantic's ValidationError (a malformed intent or brief)."""
        if isinstance(intent, Brief):
            brief, planner, notes, structured = intent, "brief", [], None
        else:
            structured = interpret(intent)
            state = await self._graph.ainvoke({"intent": structured, "notes": []})
            brief, planner, notes = state["brief"], state["planner"], state.get("notes", [])
        caps = await self._capabilities() if self._capabilities else Capabilities()
        try:
            composition = self._composer.compose(brief, caps)
        except Unplannable as exc:
            exc.notes[:0] = notes
            raise
        graph = composition.graph
        if structured is not None:
            _apply_node_options(graph, structured.options, self._registry)
        all_notes = notes + composition.notes
        refused = [n for n in all_notes if n["kind"] in STRICT_KINDS]
        if refused and (strict or brief.constraints.strict):
            raise StrictRefusal(refused)
        graph["metadata"]["planner"] = planner
        return Plan(brief=brief.model_dump(mode="json"), graph=graph, planner=planner, goal=goal_of(brief),
                    notes=all_notes, song=_song_preview(graph))

    async def _rules(self, state: _State) -> _State:
        intent = state["intent"]
        brief = brief_from_intent(intent)
        return {"brief": brief, "planner": "rules", "notes": state.get("notes", [])}

    async def _llm(self, state: _State) -> _State:
        intent = state["intent"]
        notes = list(state.get("notes", []))
        try:
            brief = await self._brief_from_model(intent)
            brief = _keep_given_inputs(brief, intent, notes)
        except Exception as exc:  # an unreachable model or an answer that is not a brief: say why, use rules
            reason = exc.errors(include_url=False)[0]["msg"] if isinstance(exc, pydantic.ValidationError) else exc
            notes.append({"kind": "fallback", "part": None,
                          "message": f"the chat model's brief was unusable ({type(exc).__name__}: "
                                     f"{str(reason)[:200]}); planned with rules"})
            return {"notes": notes}
        return {"brief": brief, "planner": "llm", "notes": notes}

    async def _brief_from_model(self, intent: StructuredIntent) -> Brief:
        messages = [("system", _SYSTEM_PROMPT), ("human", intent.model_dump_json())]
        try:
            structured = self._chat_model.with_structured_output(Brief)
        except NotImplementedError:
            structured = None  # no tool calling: ask for the JSON and parse it with langchain's parser
        if structured is not None:
            answer = await structured.ainvoke(messages)
            brief = answer if isinstance(answer, Brief) else Brief.model_validate(answer)
        else:
            from langchain_core.output_parsers import PydanticOutputParser

            parser: PydanticOutputParser[Brief] = PydanticOutputParser(pydantic_object=Brief)
            reply = await self._chat_model.ainvoke(
                [messages[0], ("system", parser.get_format_instructions()), messages[1]])
            content = getattr(reply, "content", reply)
            brief = parser.parse(_json_text(content))
        if not any(getattr(brief, part) for part in _PARTS):
            raise ValueError("the brief names no part")
        return brief.model_copy(update={"prompt": intent.prompt})


_PARTS = ("music", "vocals", "narration", "voice_training", "style_training", "video", "stills")
_SYSTEM_PROMPT = (
    "You read a user's request for generative media and fill a brief: which parts they want (music, vocals "
    "(words over music), narration (spoken words), voice_training (a voice of their own from their clips), "
    "style_training (a LoRA from their images), video, stills) and each part's parameters. Leave a part null "
    "when it is not wanted; honour negations ('no vocals'); lengths in seconds; use only the object keys the "
    "request lists as inputs; keep the user's lyrics verbatim. Add a note (kind: ignored) for anything you "
    "cannot place.")


def interpret(intent: str | StructuredIntent | dict[str, Any]) -> StructuredIntent:
    if isinstance(intent, StructuredIntent):
        return intent
    if isinstance(intent, dict):
        return StructuredIntent.model_validate(intent)
    return StructuredIntent(prompt=intent)


def brief_from_intent(intent: StructuredIntent) -> Brief:
    """The rules' brief of a structured intent (raises :class:`NotUnderstood`)."""
    mode = intent.options.get("mode")
    return brief_from_text(intent.prompt, images=intent.inputs.images, voice_clips=intent.inputs.voice_clips,
                           lyrics=intent.inputs.lyrics, duration_s=intent.duration_s, style=intent.style,
                           mode=mode if isinstance(mode, str) else None, goal=intent.goal)


#: Every label :func:`goal_of` gives (content policy rules are scoped by them).
GOALS = ("lora_video", "music_video", "voice_track", "song", "music", "narration_over_music", "narration", "video",
         "stills")


def goal_of(brief: Brief) -> str:
    """A short label of the plan's parts (what the UI titles it with)."""
    if brief.style_training and brief.video:
        return "lora_video"
    if brief.video and (brief.music or brief.vocals or brief.narration):
        return "music_video"
    if brief.voice_training:
        return "voice_track"
    if brief.vocals:
        return "song"
    if brief.music:
        return "music" if not brief.narration else "narration_over_music"
    if brief.narration:
        return "narration"
    return "video" if brief.video else "stills"


def _keep_given_inputs(brief: Brief, intent: StructuredIntent, notes: list[dict[str, Any]]) -> Brief:
    """A chat model may only wire the inputs the user gave: anything else is dropped, with a note."""
    update: dict[str, Any] = {}
    for part, field, given in (("voice_training", "clips", intent.inputs.voice_clips),
                               ("style_training", "images", intent.inputs.images)):
        value = getattr(brief, part)
        if value is None:
            continue
        keys = getattr(value, field)
        kept = [k for k in keys if k in given]
        if len(kept) != len(keys):
            notes.append({"kind": "ignored", "part": part,
                          "message": f"the chat model named inputs that were not uploaded: "
                                     f"{sorted(set(keys) - set(kept))}"})
            update[part] = value.model_copy(update={field: kept})
    return brief.model_copy(update=update) if update else brief


def _apply_node_options(graph: dict[str, Any], options: dict[str, Any], registry: TaskRegistry) -> None:
    """Per-node params a form sends as ``options: {"<node id>": {...}}`` (validated with the graph)."""
    from dualplane.common.graph import validate_graph

    changed = False
    for node in graph["nodes"]:
        value = options.get(node["id"])
        if isinstance(value, dict):
            node["params"].update(value)
            changed = True
    if changed:
        validate_graph(graph, registry)


def _song_preview(graph: dict[str, Any]) -> dict[str, Any] | None:
    """plan_song is deterministic: what it will write can be shown before the job runs."""
    for node in graph["nodes"]:
        if node["task"] == "plan_song" and node["id"] == "song":
            return make_plan(SongParams.model_validate(node["params"]))
    return None


def _json_text(content: Any) -> str:
    text = orjson.dumps(content).decode() if isinstance(content, dict) else str(content)
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if not match:
        raise ValueError("no JSON object in the answer")
    return match.group(0)


def chat_model_from_settings(planner: PlannerSettings) -> Any:
    """An Ollama chat model when ``OLLAMA_URL`` is set and the ``llm`` extra is installed, else None."""
    if not planner.ollama_url:
        return None
    try:
        from langchain_ollama import ChatOllama
    except ImportError:
        return None
    return ChatOllama(base_url=planner.ollama_url, model=planner.ollama_model, temperature=0)


__all__ = [
    "GOALS",
    "STRICT_KINDS",
    "Goal",
    "Inputs",
    "NotUnderstood",
    "Plan",
    "Planner",
    "StrictRefusal",
    "StructuredIntent",
    "Unplannable",
    "brief_from_intent",
    "chat_model_from_settings",
    "goal_of",
    "interpret",
]
