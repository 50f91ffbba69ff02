"""The planner: intent → brief (rules or a chat model) → graph composed by capability, with notes;
plan_song's lyrics and modes; POST /compose (dry run, strict, a client's brief, nonsense).

The chat-model tests use langchain-core's own fake chat models (FakeListChatModel,
FakeMessagesListChatModel): no model is called, the structured-output and parsing code is
langchain's own.
"""

from __future__ import annotations

import json

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel, FakeMessagesListChatModel
from langchain_core.messages import AIMessage

from dualplane.common.graph import validate_graph
from dualplane.common.models.brief import Brief
from dualplane.control_plane.composer import Capabilities
from dualplane.control_plane.intent_text import find_durations
from dualplane.control_plane.planner import NotUnderstood, Planner, StrictRefusal
from dualplane.tasks import default_registry
from dualplane.tasks.lyrics import THEMES
from dualplane.tasks.song import SongParams, make_plan

CLIPS = ["uploads/alice/ab12cd/clip1.wav", "uploads/alice/ab12cd/clip2.wav"]
IMAGES = ["uploads/alice/ef34ab/face1.png", "uploads/alice/ef34ab/face2.png"]
#: A data plane that offers every task, with real weights for nothing but the packaged voice.
LIVE = Capabilities(python_tasks=frozenset(default_registry().names()),
                    model_weights={"piper-joe": "real", "musicgen-small": "random", "sd15": "random",
                                   "animatediff-motion-adapter": "random", "speecht5-tts": "random"})


@pytest.fixture(scope="module")
def registry():
    return default_registry()


@pytest.fixture
def planner(registry):
    async def live() -> Capabilities:
        return LIVE

    return Planner(registry, capabilities=live)


def nodes(plan):
    return {n["id"]: n for n in plan.graph["nodes"]}


def kinds(plan, part=None):
    return {n["kind"] for n in plan.notes if part is None or n["part"] == part}


# -- the four requests that used to become other jobs -------------------------------------------


async def test_training_a_voice_to_sing_a_chorus_is_that_job_and_says_singing_is_spoken(planner):
    plan = await planner.plan({"prompt": "train a voice from my clips and sing a chorus",
                               "inputs": {"voice_clips": CLIPS}})
    graph = nodes(plan)
    assert "video" not in graph and graph["voice"]["task"] == "train_voice"
    assert graph["voice"]["params"]["clips"] == CLIPS
    assert graph["vocals"]["params"]["voice"] == {"$ref": "voice.output.voice"}
    assert graph["song"]["params"]["sung_sections"] == ["chorus"]
    assert "substituted" in kinds(plan, "vocals")
    with pytest.raises(StrictRefusal) as refused:
        await planner.plan({"prompt": "train a voice from my clips and sing a chorus",
                            "inputs": {"voice_clips": CLIPS}}, strict=True)
    assert any("singing" in n["message"] for n in refused.value.notes)


async def test_a_lora_then_a_four_second_video_keeps_the_lora_and_the_length(planner):
    plan = await planner.plan({"prompt": "train a LoRA on my photos and render a 4-second video of me surfing",
                               "inputs": {"images": IMAGES}})
    graph = nodes(plan)
    assert graph["lora"]["params"]["images"] == IMAGES
    video = graph["video"]
    assert video["task"] == "render_video" and video["params"]["lora"] == {"$ref": "lora.output.lora"}
    assert video["params"]["num_frames"] == 4 * video["params"]["fps"]
    assert "surfing" in video["params"]["prompt"] and "sks person" in video["params"]["prompt"]
    assert "random_weights" in kinds(plan, "video")  # said, since sd15 here is the tiny random one


async def test_a_five_minute_song_is_planned_whole_and_twenty_minutes_is_clamped_with_a_note(planner, registry):
    five = await planner.plan("a 5-minute folk song about the sea")
    assert nodes(five)["music"]["params"]["duration_s"] == 300 and nodes(five)["song"]["params"]["duration_s"] == 300
    validate_graph(five.graph, registry)
    twenty = await planner.plan("a 20 minute ambient piece")
    assert nodes(twenty)["music"]["params"]["duration_s"] == 600
    assert "clamped" in kinds(twenty)


async def test_written_lyrics_are_a_structured_song_not_the_requests_words(planner):
    plan = await planner.plan("write a song about rain in Lisbon for my friend Marta")
    song = plan.song
    assert song["title"] and song["lyrics_text"]
    lines = song["lyrics_text"].lower().splitlines()
    assert len(lines) >= 6 and not any("marta" in line or "lisbon" in line for line in lines)
    bank = {line.lower() for theme in THEMES for pair in theme.couplets + theme.hooks for line in pair}
    assert sum(line in bank for line in lines) >= len(lines) - 1  # the title line of the chorus is the other
    assert {"verse", "chorus"} <= {s["name"] for s in song["sections"] if s.get("lyrics")}


# -- composition by capability -------------------------------------------------------------------


async def test_narration_over_a_bed_with_a_video_is_mixed_then_muxed(planner, registry):
    plan = await planner.plan('a 20 second voice-over saying "Welcome to the show" over a jazzy bed, with a video')
    graph = nodes(plan)
    assert graph["narration"]["params"]["text"] == "Welcome to the show"
    assert graph["narration"]["params"]["model"] == "piper-joe"
    assert graph["mix"]["params"]["bed"] == {"$ref": "music.output.audio"}
    assert graph["final"]["params"]["audio"] == {"$ref": "mix.output.audio"}
    assert graph["video"]["task"] == "visualize_audio"  # AnimateDiff has only random weights here: said
    assert "assumed" in kinds(plan, "video")
    validate_graph(plan.graph, registry)


async def test_a_task_no_live_pool_offers_is_planned_with_a_note(registry):
    async def no_arranger() -> Capabilities:
        return Capabilities(python_tasks=frozenset(LIVE.python_tasks - {"arrange_music"}))

    plan = await Planner(registry, capabilities=no_arranger).plan("a calm piano piece")
    assert any(n["kind"] == "unavailable" and "arrange_music" in n["message"] for n in plan.notes)


async def test_real_video_weights_make_auto_video_generated(registry):
    async def real() -> Capabilities:
        return Capabilities(python_tasks=LIVE.python_tasks,
                            model_weights={"sd15": "real", "animatediff-motion-adapter": "real"},
                            model_limits={"sd15": {"max_width": 512, "max_height": 512, "max_frames": 64}})

    plan = await Planner(registry, capabilities=real).plan("a 1080p music video for a lo-fi track, 30 fps")
    video = nodes(plan)["video"]
    assert video["task"] == "render_video" and video["params"]["height"] <= 512
    assert video["params"]["num_frames"] == 64  # 30 s × 30 fps clamped to the model's window...
    assert {"clamped"} <= kinds(plan, "video")  # ...and the size and frames are said


async def test_variations_get_their_own_seeds_and_share_the_song(planner, registry):
    plan = await planner.plan("three versions of a techno beat, seed 5")
    music = [n for n in plan.graph["nodes"] if n["task"] == "arrange_music"]
    assert [m["params"]["seed"] for m in music] == [5, 6, 7]
    assert all(m["needs"] == ["song"] for m in music)


async def test_lyrics_first_and_melody_only_modes_still_drive_the_song(planner):
    melody = await planner.plan({"prompt": "a song about my cat", "options": {"mode": "melody-only"}})
    assert nodes(melody)["song"]["params"]["mode"] == "melody-only" and "vocals" not in nodes(melody)
    lyrics = await planner.plan({"prompt": "summer roads", "style": "folk", "options": {"mode": "lyrics-first"}})
    assert nodes(lyrics)["song"]["params"]["mode"] == "lyrics-first" and "vocals" in nodes(lyrics)


async def test_a_voice_of_my_own_without_clips_is_impossible_not_silently_default(planner):
    plan = await planner.plan("read my poem in my own voice")
    assert "impossible" in kinds(plan, "voice_training") and "voice" not in nodes(plan)
    with pytest.raises(StrictRefusal):
        await planner.plan("read my poem in my own voice", strict=True)


@pytest.mark.parametrize(("text", "seconds"), [
    ("a 30-second track", [30]), ("90s of rain", [90]), ("a 90s hip hop beat", []), ("1.5 minutes of jazz", [90]),
    ("a minute and a half", [90]), ("4 sec clip", [4]), ("1:30 of piano", [90]), ("two minutes", [120]),
    ("half a minute", [30]), ("2m30s", [150]), ("the store closes in 15 minutes", [])])
def test_lengths_are_read_in_the_forms_people_write(text, seconds):
    assert [d.seconds for d in find_durations(text.lower())] == seconds


# -- the chat-model path -------------------------------------------------------------------------


class ToolCallingFake(FakeMessagesListChatModel):
    """langchain-core's fake messages model, able to 'bind' tools: its AIMessage carries the tool
    call, which langchain's own with_structured_output parses into the brief."""

    def bind_tools(self, tools, **kwargs):
        return self


def _brief_call(args: dict) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": "Brief", "args": args, "id": "call-1"}])


async def test_a_chat_model_fills_the_brief_through_structured_output_and_the_composer_builds(registry):
    brief = {"prompt": "ignored", "music": {"genre": "jazz", "tempo_bpm": 110}, "duration_s": 20}
    plan = await Planner(registry, chat_model=ToolCallingFake(responses=[_brief_call(brief)])).plan("jazz please")
    assert plan.planner == "llm" and plan.brief["prompt"] == "jazz please"
    assert nodes(plan)["song"]["params"]["bpm"] == 110 and nodes(plan)["music"]["params"]["duration_s"] == 20


async def test_a_chat_model_without_tools_answers_json_parsed_by_langchains_parser(registry):
    brief = {"prompt": "x", "narration": {"text": {"source": "given", "text": "Hello there."}}}
    model = FakeListChatModel(responses=[f"Here you go:\n```json\n{json.dumps(brief)}\n```"])
    plan = await Planner(registry, chat_model=model).plan("say hello there")
    assert plan.planner == "llm" and nodes(plan)["narration"]["params"]["text"] == "Hello there."


@pytest.mark.parametrize("answer", ["I cannot help with that", '{"music": {"tempo_bpm": "fast!!"}}',
                                   '{"prompt": "x"}'])  # not JSON; not a brief; a brief of nothing
async def test_a_garbage_chat_answer_falls_back_to_the_rules_with_a_note(registry, answer):
    plan = await Planner(registry, chat_model=FakeListChatModel(responses=[answer])).plan("a jazz song")
    assert plan.planner == "rules" and plan.goal == "song"
    assert "fallback" in kinds(plan)


async def test_a_chat_model_cannot_wire_inputs_that_were_not_uploaded(registry):
    brief = {"prompt": "x", "voice_training": {"clips": [CLIPS[0], "uploads/bob/ff00/stolen.wav"]},
             "narration": {"voice": "trained"}}
    plan = await Planner(registry, chat_model=ToolCallingFake(responses=[_brief_call(brief)])).plan(
        {"prompt": "clone my voice and read this", "inputs": {"voice_clips": [CLIPS[0]]}})
    assert nodes(plan)["voice"]["params"]["clips"] == [CLIPS[0]]
    assert any(n["kind"] == "ignored" and "stolen" in n["message"] for n in plan.notes)


# -- plan_song ------------------------------------------------------------------------------------


def test_plan_song_is_deterministic_and_honours_the_mode_key_tempo_and_given_lyrics():
    params = SongParams(narrative="a rainy night in the city, lo-fi", duration_s=40, seed=3)
    first, again = make_plan(params), make_plan(params)
    assert first == again
    assert first["genre"] == "lo-fi hip hop" and "rainy" in first["mood"] and first["key"].endswith("minor")
    assert abs(sum(s["duration_s"] for s in first["sections"]) - 40) < 0.05
    assert "[verse]" in first["lyrics"] and "[verse]" not in first["lyrics_text"]
    instrumental = make_plan(params.model_copy(update={"mode": "melody-only"}))
    assert instrumental["lyrics"] == "" and "instrumental" in instrumental["music_prompt"]
    assert make_plan(params.model_copy(update={"seed": 4}))["lyrics"] != first["lyrics"]
    given = make_plan(params.model_copy(update={"lyrics": "one two\nthree four", "bpm": 120, "key": "E major"}))
    assert given["lyrics_text"] == "one two\nthree four" and given["bpm"] == 120 and given["key"] == "E major"
    assert given["chords"][0] == "E"


# -- POST /compose --------------------------------------------------------------------------------


async def test_compose_dry_run_returns_the_brief_the_graph_and_the_notes(api):
    response = await api("alice").post("/compose", json={"intent": "a 10 second song about rain", "dry_run": True})
    body = response.json()
    assert response.status_code == 200 and body["planner"] == "rules"
    assert body["brief"]["vocals"] and body["brief"]["duration_s"] == 10
    assert [n["task"] for n in body["graph"]["nodes"]][:2] == ["plan_song", "arrange_music"]
    assert any(n["kind"] == "substituted" for n in body["notes"]) and body["song"]["lyrics_text"]


async def test_compose_submits_a_job_carrying_its_brief(api, control_plane):
    response = await api("alice").post("/compose", json={"intent": {"goal": "song", "prompt": "trains at dawn",
                                                                    "duration_s": 5}})
    job = response.json()
    assert response.status_code == 201 and job["user"] == "alice"
    assert job["graph"]["intent"] == "trains at dawn"
    assert job["graph"]["metadata"]["brief"]["vocals"] is not None
    assert (await api("alice").post("/compose", json={"intent": {"goal": "nope", "prompt": "x"}})).status_code \
        == 422


async def test_compose_strict_refuses_a_substitution_with_the_notes(api):
    response = await api("alice").post("/compose", json={"intent": "sing me a song about the moon", "strict": True})
    body = response.json()
    assert response.status_code == 422 and body["notes"][0]["kind"] == "substituted"


async def test_compose_refuses_nonsense_and_takes_a_clients_brief(api):
    response = await api("alice").post("/compose", json={"intent": "asdf qwer zxcv", "dry_run": True})
    assert response.status_code == 422 and response.json()["title"] == "Nothing to make"
    brief = Brief(prompt="my own brief", music={"genre": "ambient", "key": "D minor"}, duration_s=12)
    response = await api("alice").post("/compose", json={"brief": brief.model_dump(mode="json"), "dry_run": True})
    assert response.status_code == 200 and response.json()["planner"] == "brief"
    assert response.json()["song"]["key"] == "D minor"
    both = await api("alice").post("/compose", json={"intent": "x", "brief": brief.model_dump(mode="json")})
    assert both.status_code == 422


async def test_uploads_are_content_addressed_and_usable_as_inputs(api, control_plane):
    client = api("alice")
    first = await client.post("/uploads", params={"name": "clip.wav"}, content=b"RIFF....WAVE",
                              headers={"Content-Type": "audio/wav"})
    again = await client.post("/uploads", params={"name": "clip.wav"}, content=b"RIFF....WAVE",
                              headers={"Content-Type": "audio/wav"})
    assert first.status_code == 201 and first.json()["key"] == again.json()["key"]
    assert first.json()["key"].startswith("uploads/alice/")
    assert await control_plane.artifacts.get(first.json()["key"]) == b"RIFF....WAVE"
    assert (await client.post("/uploads", params={"name": "../x"}, content=b"x")).status_code == 422


def test_nothing_to_make_is_its_own_error():
    assert issubclass(NotUnderstood, ValueError)


async def test_a_brief_cannot_name_another_users_upload(api, control_plane):
    bob = await api("bob").post("/uploads", params={"name": "bob.wav"}, content=b"RIFF....WAVE",
                                headers={"Content-Type": "audio/wav"})
    theirs = bob.json()["key"]
    brief = {"prompt": "read this in my voice", "voice_training": {"clips": [theirs]},
             "narration": {"text": {"source": "given", "text": "hello"}, "voice": "trained"}}
    for body in ({"brief": brief}, {"intent": {"prompt": "clone my voice and read hello",
                                               "inputs": {"voice_clips": [theirs]}}}):
        response = await api("alice").post("/compose", json=body)
        assert response.status_code == 422, response.text  # the key is checked like any submitted graph
        assert theirs in response.text and "bob" not in response.text.replace(theirs, "")


@pytest.mark.parametrize("mode", ["major", "minor"])
def test_every_key_the_song_params_admit_makes_a_plan(mode: str):
    # the key pattern admits every letter with # or b, Cb, Fb, E# and B# included (POST /compose
    # answered 500 for "Cb major", found by the API fuzz test)
    for letter in "ABCDEFG":
        for accidental in ("", "#", "b"):
            key = f"{letter}{accidental} {mode}"
            assert make_plan(SongParams.model_validate({"narrative": "rain at night", "key": key}))["chords"], key
