"""The planner (rules, optional chat model with fallback), plan_song, and POST /compose."""

from __future__ import annotations

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from dualplane.common.graph import validate_graph
from dualplane.control_plane.planner import (
    Planner,
    StructuredIntent,
    guess_goal,
    interpret,
    parse_duration,
)
from dualplane.tasks import default_registry
from dualplane.tasks.song import SongParams, make_plan


@pytest.fixture(scope="module")
def registry():
    return default_registry()


@pytest.mark.parametrize(("text", "goal"), [
    ("a calm ambient piece", "music"),
    ("write a song about the sea with lyrics", "song"),
    ("a 30-second lo-fi track with a rainy-night video", "music_video"),
])
def test_free_text_goals_are_recognised(text, goal):
    assert guess_goal(interpret(text)) == goal


def test_inputs_decide_lora_and_voice_goals():
    assert guess_goal(StructuredIntent(prompt="a city at dusk", inputs={"images": ["uploads/a/1/x.png"]})) \
        == "lora_video"
    assert guess_goal(StructuredIntent(prompt="read my poem", inputs={"voice_clips": ["uploads/a/2/v.wav"]})) \
        == "voice_track"


@pytest.mark.parametrize(("text", "seconds"), [("a 30-second track", 30), ("2 min of jazz", 120),
                                               ("45s intro", 45), ("no length given", 30)])
def test_durations_are_read_from_text(text, seconds):
    assert parse_duration(text) == seconds


async def test_rules_plan_a_song_then_music_wired_by_ref(registry):
    plan = await Planner(registry).plan("write a 20 second song about trains")
    assert plan.planner == "rules" and plan.goal == "song"
    nodes = {n["id"]: n for n in plan.graph["nodes"]}
    assert nodes["song"]["task"] == "plan_song" and nodes["song"]["params"]["duration_s"] == 20
    assert nodes["music"]["params"]["prompt"] == {"$ref": "song.output.music_prompt"}
    validate_graph(plan.graph, registry)


async def test_structured_intent_options_reach_the_nodes(registry):
    intent = {"goal": "song", "prompt": "summer roads", "duration_s": 12, "style": "folk",
              "options": {"mode": "melody-only", "music": {"guidance_scale": 2.0}}}
    plan = await Planner(registry).plan(intent)
    nodes = {n["id"]: n for n in plan.graph["nodes"]}
    assert nodes["song"]["params"]["mode"] == "melody-only" and nodes["song"]["params"]["style"] == "folk"
    assert nodes["music"]["params"]["guidance_scale"] == 2.0


async def test_a_chat_models_valid_graph_is_used(registry):
    graph = '{"nodes": [{"id": "m", "task": "generate_music", "plane": "python", "params": {"prompt": "x"}}]}'
    plan = await Planner(registry, chat_model=FakeListChatModel(responses=[f"Sure! {graph}"])).plan("music")
    assert plan.planner == "llm" and plan.graph["nodes"][0]["id"] == "m"


@pytest.mark.parametrize("answer", [
    '{"nodes": [{"id": "m", "task": "no_such_task", "plane": "python"}]}',  # invalid graph
    "I cannot help with that",  # not JSON at all
])
async def test_an_invalid_chat_model_answer_falls_back_to_the_rules(registry, answer):
    plan = await Planner(registry, chat_model=FakeListChatModel(responses=[answer])).plan("a jazz song")
    assert plan.planner == "rules" and plan.goal == "song"
    assert "planned with rules" in plan.notes[0]


def test_plan_song_is_deterministic_and_honours_the_mode():
    params = SongParams(narrative="a rainy night in the city, lo-fi", duration_s=40, seed=3)
    first, again = make_plan(params), make_plan(params)
    assert first == again
    assert first["genre"] == "lo-fi hip hop" and "rainy" in first["mood"]
    assert abs(sum(s["duration_s"] for s in first["sections"]) - 40) < 0.05
    assert first["lyrics"] and "[verse]" in first["lyrics"]
    instrumental = make_plan(params.model_copy(update={"mode": "melody-only"}))
    assert instrumental["lyrics"] == "" and "instrumental" in instrumental["music_prompt"]
    assert make_plan(params.model_copy(update={"seed": 4}))["lyrics"] != first["lyrics"]


async def test_compose_dry_run_returns_the_validated_graph(api):
    response = await api("alice").post("/compose", json={"intent": "a 10 second song about rain",
                                                         "dry_run": True})
    body = response.json()
    assert response.status_code == 200 and body["planner"] == "rules"
    assert [n["task"] for n in body["graph"]["nodes"]] == ["plan_song", "generate_music"]


async def test_compose_submits_the_planned_job(api, control_plane):
    response = await api("alice").post("/compose", json={"intent": {"goal": "song", "prompt": "trains at dawn",
                                                                    "duration_s": 5}})
    job = response.json()
    assert response.status_code == 201 and job["user"] == "alice"
    assert job["graph"]["intent"] == "trains at dawn"
    assert (await api("alice").post("/compose", json={"intent": {"goal": "nope", "prompt": "x"}})).status_code \
        == 422


async def test_uploads_are_content_addressed_and_usable_as_inputs(api, control_plane):
    client = api("alice")
    first = await client.post("/uploads", params={"name": "clip.wav"}, content=b"RIFF....",
                              headers={"Content-Type": "audio/wav"})
    again = await client.post("/uploads", params={"name": "clip.wav"}, content=b"RIFF....",
                              headers={"Content-Type": "audio/wav"})
    assert first.status_code == 201 and first.json()["key"] == again.json()["key"]
    assert first.json()["key"].startswith("uploads/alice/")
    assert await control_plane.artifacts.get(first.json()["key"]) == b"RIFF...."
    assert (await client.post("/uploads", params={"name": "../x"}, content=b"x")).status_code == 422
