"""The planner: intent (free text or structured) → a validated job graph.

It is itself a small LangGraph graph::

    START ─(a chat model is configured)─> llm ─(valid)──────────> END
      │                                    └─(invalid/failed)─┐
      └──────────────────────────────────> rules <────────────┘ ──> END

``rules`` reads the goal, duration and style from the text with plain rules and fills
one of the templates below; ``llm`` asks a langchain-core chat model (e.g. Ollama when
``OLLAMA_URL`` is set) for a graph and keeps it only if it validates exactly like a
submitted graph. Every plan that leaves the planner has passed ``validate_graph``.
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypedDict

import orjson
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, ConfigDict, Field

from dualplane.common.errors import GraphValidationError
from dualplane.common.graph import validate_graph
from dualplane.common.registry import TaskRegistry

Goal = Literal["music", "song", "music_video", "lora_video", "voice_track"]
#: Default length of a planned piece when the intent names none.
DEFAULT_DURATION_S = 30.0


class Inputs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: list[str] = Field(default_factory=list, description="Object keys or URLs of style images (LoRA).")
    voice_clips: list[str] = Field(default_factory=list, description="Object keys or URLs of voice samples.")
    lyrics: str | None = Field(None, max_length=10_000, description="Text to sing or speak; planned if absent.")


class StructuredIntent(BaseModel):
    """What a user wants, already broken down (a UI form sends this)."""

    model_config = ConfigDict(extra="forbid")
    goal: Goal | None = Field(None, description="Guessed from the prompt when absent.")
    prompt: str = Field(..., min_length=1, max_length=4000)
    duration_s: float | None = Field(None, gt=0, le=600)
    style: str | None = Field(None, max_length=200)
    inputs: Inputs = Field(default_factory=Inputs)
    options: dict[str, Any] = Field(default_factory=dict, description="Per-generator options, e.g. {'mode': "
                                                                      "'melody-only'} for the song planner.")


class Plan(BaseModel):
    graph: dict[str, Any]
    planner: Literal["rules", "llm"]
    goal: Goal
    notes: list[str] = Field(default_factory=list)


class _State(TypedDict, total=False):
    intent: StructuredIntent
    graph: dict[str, Any]
    planner: str
    goal: str
    notes: list[str]


class Planner:
    """Turns intents into graphs.

    :param registry: the task catalog plans are validated against.
    :param chat_model: an optional langchain-core chat model; None plans with rules only.
    """

    def __init__(self, registry: TaskRegistry, *, chat_model: Any = None) -> None:
        self._registry = registry
        self._chat_model = chat_model
        self._graph = self._compile()

    def _compile(self) -> Any:
        builder = StateGraph(_State)
        builder.add_node("rules", self._rules)
        builder.add_node("llm", self._llm)
        builder.add_conditional_edges(START, lambda s: "llm" if self._chat_model is not None else "rules",
                                      ["llm", "rules"])
        builder.add_conditional_edges("llm", lambda s: END if s.get("graph") else "rules", ["rules", END])
        builder.add_edge("rules", END)
        return builder.compile()

    async def plan(self, intent: str | StructuredIntent | dict[str, Any]) -> Plan:
        """A validated plan; raises GraphValidationError only if the rules themselves fail."""
        structured = interpret(intent)
        state = await self._graph.ainvoke({"intent": structured, "notes": []})
        return Plan(graph=state["graph"], planner=state["planner"], goal=state["goal"], notes=state["notes"])

    async def _rules(self, state: _State) -> _State:
        intent = state["intent"]
        goal = intent.goal or guess_goal(intent)
        graph = build_graph(goal, intent)
        validate_graph(graph, self._registry)
        return {"graph": graph, "planner": "rules", "goal": goal, "notes": state.get("notes", [])}

    async def _llm(self, state: _State) -> _State:
        intent = state["intent"]
        notes = list(state.get("notes", []))
        try:
            reply = await self._chat_model.ainvoke(self._prompt(intent))
            graph = _json_object(getattr(reply, "content", reply))
            validate_graph(graph, self._registry)
        except GraphValidationError as exc:
            notes.append(f"chat model's graph was invalid ({exc}); planned with rules")
            return {"notes": notes}
        except Exception as exc:  # an unreachable model or unparsable answer: fall back, say why
            notes.append(f"chat model failed ({type(exc).__name__}: {exc}); planned with rules")
            return {"notes": notes}
        return {"graph": graph, "planner": "llm", "goal": intent.goal or guess_goal(intent), "notes": notes}

    def _prompt(self, intent: StructuredIntent) -> list[tuple[str, str]]:
        catalog = [{"task": s.name, "plane": s.plane, "description": s.description,
                    "params": s.params.model_json_schema().get("properties", {})}
                   for s in self._registry.for_plane("control") + self._registry.for_plane("python")]
        system = ("You plan generative-media jobs as JSON graphs: {\"nodes\": [{\"id\", \"task\", \"plane\", "
                  "\"needs\": [...], \"params\": {...}}]}. Wire outputs with {\"$ref\": \"node.output.field\"}. "
                  "Use only these tasks: " + orjson.dumps(catalog).decode() + ". Answer with the JSON only.")
        return [("system", system), ("human", intent.model_dump_json())]


def chat_model_from_settings(url: str | None, model: str) -> Any:
    """An Ollama chat model when ``OLLAMA_URL`` is set and langchain-ollama is installed, else None."""
    if not url:
        return None
    try:
        from langchain_ollama import ChatOllama
    except ImportError:
        return None
    return ChatOllama(base_url=url, model=model, format="json", temperature=0)


# -- rules ----------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*-?\s*(s|sec|secs|second|seconds|m|min|mins|minute|minutes)\b")
_GOAL_WORDS: tuple[tuple[Goal, tuple[str, ...]], ...] = (
    ("voice_track", ("my voice", "voice clip", "voice sample", "in my voice", "clone", "narrat", "speak")),
    ("lora_video", ("lora", "in the style of my", "styled after", "my images", "my photos", "my drawings")),
    ("music_video", ("video", "visual", "clip", "animation", "animated")),
    ("song", ("song", "lyrics", "sing", "vocal", "verse", "chorus")),
)


def interpret(intent: str | StructuredIntent | dict[str, Any]) -> StructuredIntent:
    """Free text becomes a structured intent (goal left to :func:`guess_goal`)."""
    if isinstance(intent, StructuredIntent):
        structured = intent
    elif isinstance(intent, dict):
        structured = StructuredIntent.model_validate(intent)
    else:
        structured = StructuredIntent(prompt=intent)
    if structured.duration_s is None:
        structured = structured.model_copy(update={"duration_s": parse_duration(structured.prompt)})
    return structured


def parse_duration(text: str) -> float:
    match = _DURATION.search(text.lower())
    if not match:
        return DEFAULT_DURATION_S
    value = float(match.group(1))
    return min(600.0, value * 60 if match.group(2).startswith("m") else value)


def guess_goal(intent: StructuredIntent) -> Goal:
    text = intent.prompt.lower()
    if intent.inputs.voice_clips:
        return "voice_track"
    if intent.inputs.images:
        return "lora_video"
    for goal, words in _GOAL_WORDS:
        if goal in ("voice_track", "lora_video"):
            continue  # they need inputs, checked above
        if any(w in text for w in words):
            return goal
    return "music"


def build_graph(goal: Goal, intent: StructuredIntent) -> dict[str, Any]:
    """The graph template of a goal, filled from the intent."""
    return {"intent": intent.prompt, "nodes": _TEMPLATES[goal](intent)}


def _music(intent: StructuredIntent) -> list[dict[str, Any]]:
    prompt = f"{intent.prompt}, {intent.style}" if intent.style else intent.prompt
    return [{"id": "music", "task": "generate_music", "plane": "python",
             "params": {"prompt": prompt, "duration_s": intent.duration_s, **_opts(intent, "music")}}]


def _song_node(intent: StructuredIntent) -> dict[str, Any]:
    params: dict[str, Any] = {"narrative": intent.prompt, "duration_s": intent.duration_s}
    if intent.style:
        params["style"] = intent.style
    if "mode" in intent.options:
        params["mode"] = intent.options["mode"]
    return {"id": "song", "task": "plan_song", "plane": "control", "params": params}


def _song(intent: StructuredIntent) -> list[dict[str, Any]]:
    return [_song_node(intent),
            {"id": "music", "task": "generate_music", "plane": "python", "needs": ["song"],
             "params": {"prompt": {"$ref": "song.output.music_prompt"}, "duration_s": intent.duration_s,
                        **_opts(intent, "music")}}]


def _music_video(intent: StructuredIntent) -> list[dict[str, Any]]:
    return [*_song(intent),
            {"id": "video", "task": "render_video", "plane": "python", "needs": ["song"],
             "params": {"prompt": {"$ref": "song.output.video_prompt"}, **_opts(intent, "video")}},
            {"id": "final", "task": "mux_media", "plane": "control", "needs": ["music", "video"],
             "params": {"audio": {"$ref": "music.output.audio"}, "video": {"$ref": "video.output.video"}}}]


def _lora_video(intent: StructuredIntent) -> list[dict[str, Any]]:
    return [{"id": "lora", "task": "train_lora", "plane": "python",
             "params": {"images": intent.inputs.images, "instance_prompt": intent.style or "sks style",
                        **_opts(intent, "lora")}},
            {"id": "video", "task": "render_video", "plane": "python", "needs": ["lora"],
             "params": {"prompt": intent.prompt, "lora": {"$ref": "lora.output.lora"}, **_opts(intent, "video")}}]


def _voice_track(intent: StructuredIntent) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = [{"id": "voice", "task": "train_voice", "plane": "python",
                                    "params": {"clips": intent.inputs.voice_clips, **_opts(intent, "voice")}}]
    if intent.inputs.lyrics:
        text: Any = intent.inputs.lyrics
        needs = ["voice"]
    else:
        nodes.append(_song_node(intent))
        text = {"$ref": "song.output.lyrics"}
        needs = ["voice", "song"]
    nodes.append({"id": "speak", "task": "synthesize_voice", "plane": "python", "needs": needs,
                  "params": {"text": text, "voice": {"$ref": "voice.output.voice"}}})
    return nodes


def _opts(intent: StructuredIntent, node: str) -> dict[str, Any]:
    """Per-node options a UI passes as ``options: {"music": {...}, "video": {...}}``."""
    value = intent.options.get(node)
    return dict(value) if isinstance(value, dict) else {}


_TEMPLATES = {"music": _music, "song": _song, "music_video": _music_video, "lora_video": _lora_video,
              "voice_track": _voice_track}


def _json_object(content: Any) -> dict[str, Any]:
    if isinstance(content, dict):
        return content
    text = str(content).strip()
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise ValueError("no JSON object in the answer")
    value = orjson.loads(text[start:end + 1])
    if not isinstance(value, dict):
        raise ValueError("the answer is not a JSON object")  # noqa: TRY004 - caught as "model failed"
    return value


__all__ = ["Goal", "Inputs", "Plan", "Planner", "StructuredIntent", "build_graph", "chat_model_from_settings",
           "guess_goal", "interpret", "parse_duration"]
