"""The content policy with real rules, against a real control plane (Redis, SeaweedFS): refusals
are 422 problem+json naming the rule and node, from prompts, lyrics, uploaded text, patterns,
languages, voice clips without consent and a classifier hook; an allowed job carries an audit
event, a refusal lands in the audit stream an admin lists; a bad policy file stops the start."""

from __future__ import annotations

import asyncio
import io
import sys
import wave
from pathlib import Path
from typing import Any

import pytest

from dualplane.common.models import Graph
from dualplane.common.settings import Settings
from dualplane.control_plane import ControlPlane
from dualplane.control_plane.policy import (
    Policy,
    PolicyContext,
    PolicyError,
    PolicyRefusal,
    Term,
    fold,
    graph_texts,
    voice_clips,
)
from tests import policy_classifier

pytestmark = pytest.mark.integration

POLICY = r"""
version: 1
name: test-policy
rules:
  - id: no-foo
    description: a word and a phrase, anywhere
    blocked_terms: [foo, "bad phrase"]
  - id: no-serials
    applies_to: {tasks: [checksum, plan_song]}
    blocked_patterns: ['\b\d{3}-\d{2}-\d{4}\b']
  - id: english-songs
    applies_to: {tasks: [plan_song], goals: [song]}
    allowed_languages: [en]
  - id: voice-consent
    applies_to: {tasks: [train_voice]}
    require_consent_for_voice_cloning: true
  - id: shouting
    applies_to: {tasks: [checksum]}
    classifier: tests.policy_classifier:no_shouting
"""
SPANISH = "la noche es mi amor y la luna es tu corazón"


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """The session servers' settings with this module's policy file."""
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return settings.model_copy(update={"policy_file": str(path)})


def checksum(text: str) -> dict[str, Any]:
    return {"nodes": [{"id": "hash", "task": "checksum", "plane": "python", "params": {"text": text}}]}


def song(**params: Any) -> dict[str, Any]:
    return {"nodes": [{"id": "song", "task": "plan_song", "plane": "control",
                       "params": {"narrative": "a walk in the rain", **params}}]}


def refusal(response: Any) -> tuple[int, str, str, str | None]:
    body = response.json()
    assert response.headers["content-type"] == "application/problem+json", body
    return response.status_code, body["title"], body["rule"], body["node"]


def wav_bytes(seconds: float = 0.5) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"\0\0" * int(16000 * seconds))
    return buffer.getvalue()


async def upload(client: Any, name: str, data: bytes, content_type: str, **params: Any) -> str:
    response = await client.post("/uploads", params={"name": name, **params}, content=data,
                                 headers={"content-type": content_type})
    assert response.status_code == 201, response.text
    return response.json()["key"]


REFUSED = (422, "Refused by the content policy")


async def test_blocked_terms_in_prompts_and_lyrics_are_refused_with_the_rule(api, control_plane: ControlPlane):
    alice = api("alice")
    prompt = await alice.post("/jobs", json={"nodes": [{"id": "beat", "task": "generate_music", "plane": "python",
                                                         "params": {"prompt": "a lo-fi Ｆ.Ｏ.Ｏ beat"}}]})
    lyrics = await alice.post("/jobs", json=song(lyrics="walking home\nthat b.a.d p-h-r-a-s-e again"))
    nested = await alice.post("/jobs", json={"nodes": [{"id": "arr", "task": "arrange_music", "plane": "python",
                                                         "params": {"duration_s": 10, "plan": {"bpm": 90, "sections": [
                                                             {"name": "verse", "lyrics": "f00 fighters"}]}}}]})
    composed = await alice.post("/compose", json={"intent": "a calm piano piece about foo"})
    form = await alice.post("/compose", json={"dry_run": True, "intent": {
        "prompt": "a gentle folk song", "inputs": {"lyrics": "sing along\nthis bad phrase is mine"}}})
    harmless = await alice.post("/jobs", json=song(lyrics="food and foobar and f-o-o-d, all fine"))

    detail = prompt.json()["detail"]
    assert refusal(prompt) == (*REFUSED, "no-foo", "beat") and "nodes.beat.params.prompt" in detail
    assert refusal(lyrics) == (*REFUSED, "no-foo", "song") and "'bad phrase'" in lyrics.json()["detail"]
    assert refusal(nested) == (*REFUSED, "no-foo", "arr") and "plan.sections.0.lyrics" in nested.json()["detail"]
    assert refusal(composed) == (*REFUSED, "no-foo", None)
    assert refusal(form) == (*REFUSED, "no-foo", None) and "intent.inputs.lyrics" in form.json()["detail"]
    assert harmless.status_code == 201, harmless.text
    assert [row["id"] for row in (await alice.get("/jobs")).json()["jobs"]] == [harmless.json()["id"]]


async def test_an_uploaded_text_file_a_job_names_is_checked(api, control_plane: ControlPlane):
    alice = api("alice")
    bad = await upload(alice, "words.txt", b"first line\nsecond line with foo in it\n", "text/plain")
    good = await upload(alice, "other.txt", b"nothing wrong here\n", "text/plain")

    def mux(subtitles: str) -> dict[str, Any]:
        return {"nodes": [{"id": "mux", "task": "mux_media", "plane": "control",
                           "params": {"audio": subtitles, "video": subtitles,
                                      "subtitles": subtitles}}]}

    refused = await alice.post("/jobs", json=mux(bad))
    texts = [t.where for t in graph_texts(Graph.model_validate(mux(good)))]

    assert refusal(refused) == (*REFUSED, "no-foo", "mux") and f"upload {bad}" in refused.json()["detail"]
    assert texts == []  # keys are not texts: the file's content is what was read
    decision = await control_plane.screen(Graph.model_validate(mux(good)), user="alice", stage="submit")
    assert decision.texts == 1  # the good upload's content was read and passed


async def test_a_pattern_a_language_and_the_classifier_hook_refuse(api, control_plane: ControlPlane):
    alice = api("alice")
    policy_classifier.CALLS.clear()
    pattern = await alice.post("/jobs", json=checksum("my number is 123-45-6789, keep it"))
    spanish = await alice.post("/jobs", json=song(lyrics=SPANISH))
    spanish_intent = await alice.post("/compose", json={"dry_run": True, "intent": {
        "prompt": "a slow ballad", "inputs": {"lyrics": SPANISH}}})
    shouted = await alice.post("/jobs", json=checksum("THIS IS VERY LOUD"))
    calm = await alice.post("/jobs", json=checksum("this is very calm"))
    short_spanish = await alice.post("/jobs", json=song(lyrics="hola amigo"))
    spanish_prompt = await alice.post("/jobs", json=song(narrative="una canción de amor para la noche y la luna"))

    assert refusal(pattern) == (*REFUSED, "no-serials", "hash") and "123-45-6789" in pattern.json()["detail"]
    assert refusal(spanish) == (*REFUSED, "english-songs", "song") and "(es;" in spanish.json()["detail"]
    assert refusal(spanish_intent) == (*REFUSED, "english-songs", None)
    assert refusal(shouted) == (*REFUSED, "shouting", "hash")
    assert shouted.json()["detail"] == "nodes.hash.params.text is shouted (all capitals)"
    assert calm.status_code == 201
    assert short_spanish.status_code == 201  # two words: too few to judge
    assert spanish_prompt.status_code == 201  # what to make, not words to sing: the language is not judged
    assert {c.stage for c in policy_classifier.CALLS} == {"submit"}
    assert all(c.user == "alice" and c.tasks == frozenset({"checksum"}) for c in policy_classifier.CALLS)


async def test_voice_cloning_needs_consent_on_every_clip(api, control_plane: ControlPlane):
    alice, bob = api("alice"), api("bob")
    consented = await upload(alice, "me.wav", wav_bytes(), "audio/wav", consent="true")
    unconsented = await upload(alice, "found.wav", wav_bytes(0.4), "audio/wav")
    bobs = await upload(bob, "bob.wav", wav_bytes(0.3), "audio/wav", consent="true")

    def train(*clips: str) -> dict[str, Any]:
        return {"nodes": [{"id": "voice", "task": "train_voice", "plane": "python", "pool": "gpu",
                           "params": {"clips": list(clips), "steps": 1}}]}

    without = await alice.post("/jobs", json=train(consented, unconsented))
    url = await alice.post("/jobs", json=train("https://example.com/someone.wav"))
    others = await alice.post("/jobs", json=train(bobs))
    allowed = await alice.post("/jobs", json=train(consented))

    assert refusal(without) == (*REFUSED, "voice-consent", "voice") and "clip 1" in without.json()["detail"]
    assert refusal(url) == (*REFUSED, "voice-consent", "voice")
    assert refusal(others)[2] == "voice-consent"  # another user's key reads as a missing one
    assert bobs.split("/")[1] == "bob" and "bob" not in others.json()["detail"].replace(bobs, "")
    assert allowed.status_code == 201, allowed.text
    events = (await alice.get(f"/jobs/{allowed.json()['id']}/events")).json()
    assert events[0]["type"] == "audit" and "voice-consent" in events[0]["data"]["rules"]


async def test_an_allowed_job_carries_an_audit_event(api, control_plane: ControlPlane):
    alice = api("alice")
    submitted = await alice.post("/jobs", json=checksum("a quiet line"))
    composed = await alice.post("/compose", json={"intent": "a 20-second calm piano piece"})
    batch = await alice.post("/jobs/batch", json={"graphs": [checksum("one"), checksum("two")]})

    first = (await alice.get(f"/jobs/{submitted.json()['id']}/events")).json()
    planned = (await alice.get(f"/jobs/{composed.json()['id']}/events")).json()
    batched = [(await alice.get(f"/jobs/{job['id']}/events")).json()[0] for job in batch.json()["jobs"]]

    audit = first[0]
    assert submitted.status_code == composed.status_code == batch.status_code == 201
    assert audit["type"] == "audit" and audit["seq"] == 1 and audit["message"] == "allowed by the content policy"
    assert audit["data"]["decision"] == "allowed" and audit["data"]["stage"] == "submit"
    assert audit["data"]["policy"] == "test-policy" and audit["data"]["digest"] == control_plane.policy.digest
    assert set(audit["data"]["rules"]) == {"no-foo", "no-serials", "shouting"} and audit["data"]["texts"] == 1
    assert first[1]["type"] == "status" and first[1]["status"] == "queued"
    assert planned[0]["type"] == "audit" and planned[0]["data"]["stage"] == "compose"
    assert "no-foo" in planned[0]["data"]["rules"]
    assert [e["type"] for e in batched] == ["audit", "audit"]


async def test_refusals_are_listed_for_admins_only_and_a_refused_batch_queues_nothing(
    api, control_plane: ControlPlane
):
    alice, admin = api("alice"), api("root", role="admin")
    await alice.post("/jobs", json=checksum("foo"), headers={"X-Request-Id": "req-refused"})
    batch = await alice.post("/jobs/batch", json={"graphs": [checksum("fine"), checksum("THAT IS TOO LOUD")]})
    await alice.post("/compose", json={"intent": "a foo song"})
    listed = await admin.get("/admin/audit")
    page = await admin.get("/admin/audit", params={"limit": 2})
    rest = await admin.get("/admin/audit", params={"limit": 2, "cursor": page.json()["next_cursor"]})
    forbidden = await alice.get("/admin/audit")
    orchestrator = await api("svc", role="orchestrator").get("/admin/audit")

    rows = listed.json()["refusals"]
    assert refusal(batch) == (*REFUSED, "shouting", "hash") and batch.json()["index"] == 1
    assert (await alice.get("/jobs")).json()["jobs"] == []  # the batch's good graph was not queued either
    assert [(r["stage"], r["rule"]) for r in rows] == [("compose", "no-foo"), ("submit", "shouting"),
                                                       ("submit", "no-foo")]
    oldest = rows[-1]
    assert oldest["user"] == "alice" and oldest["node"] == "hash" and oldest["request_id"] == "req-refused"
    assert oldest["tasks"] == ["checksum"] and "foo" in oldest["detail"] and oldest["policy"] == "test-policy"
    assert rows[0]["node"] is None and rows[0]["goal"] == "song"
    assert [r["id"] for r in page.json()["refusals"] + rest.json()["refusals"]] == [r["id"] for r in rows]
    assert rest.json()["next_cursor"] is None
    assert forbidden.status_code == 403 and orchestrator.status_code == 403


@pytest.mark.parametrize("document, problem", [
    ("version: 1\nname: x\nrules:\n  - id: r\n    blocked_terms: [a]\n    colour: red\n",
     "rules.0.colour: Extra inputs are not permitted"),
    ("version: 1\nname: x\nrules:\n  - id: r\n    blocked_patterns: ['(unclosed']\n", "is not a valid regex"),
    ("version: 1\nname: x\nrules:\n  - id: r\n    blocked_patterns: ['(a+)+$']\n", "backtracks catastrophically"),
    ("version: 1\nname: x\nrules:\n  - id: r\n    classifier: tests.no_such_module:f\n",
     "cannot import 'tests.no_such_module'"),
    ("version: 1\nname: x\nrules:\n  - id: r\n    classifier: tests.policy_classifier:missing\n",
     "has no function 'missing'"),
    ("version: 1\nname: x\nrules:\n  - {id: r, applies_to: {tasks: [trian_voice]}, blocked_terms: [a]}\n",
     "unknown tasks ['trian_voice']"),
    ("version: 1\nname: x\nrules:\n  - id: r\n    applies_to: {goals: [opera]}\n    blocked_terms: [a]\n",
     "unknown goals ['opera']"),
    ("version: 1\nname: x\nrules:\n  - {id: r, blocked_terms: [a]}\n  - {id: r, blocked_terms: [b]}\n",
     "rule ids must be unique"),
    ("version: 1\nname: x\nrules:\n  - id: r\n    description: checks nothing\n", "the rule checks nothing"),
    ("version: 1\nname: x\nrules: [\n", "is not valid YAML"),
])
def test_a_bad_policy_file_fails_clearly_at_load(tmp_path: Path, settings: Settings, document: str, problem: str):
    path = tmp_path / "bad.yaml"
    path.write_text(document)
    with pytest.raises(PolicyError) as raised:
        ControlPlane(settings.model_copy(update={"policy_file": str(path)}))
    assert problem in str(raised.value) and str(path) in str(raised.value)


async def test_the_control_plane_refuses_to_start_with_a_bad_policy(tmp_path: Path, settings: Settings):
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nname: x\nrules:\n  - id: r\n    blocked_patterns: ['(a+)+$']\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dualplane", "control-plane",
        env={"PATH": "/usr/bin:/bin", "REDIS_URL": settings.redis_url or "", "DUALPLANE_POLICY_FILE": str(path),
             "DUALPLANE_JWT_SECRET": "x" * 32, "DUALPLANE_CONTROL_PORT": "0"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2, out.decode()
    assert "backtracks catastrophically" in out.decode() and "Traceback" not in out.decode()


def test_term_matching_catches_evasions_and_keeps_words_apart():
    foo = Term("foo")
    caught = ["foo", "FOO!", "Ｆｏｏ", "f.o.o", "f o o", "f-o-o", "f. o. o", "fóö", "f00", "f\u200boo", "fоo (Cyrillic o)",
              "a f.o.o b"]
    passed = ["food", "foobar", "f-o-o-d", "d-f-o-o", "fo o", "f.oo", "buffoon"]
    assert [t for t in caught if not foo.found_in(fold(t))] == []
    assert [t for t in passed if foo.found_in(fold(t))] == []
    assert Term("bad phrase").found_in(fold("that is B A D  P.H.R.A.S.E"))
    assert foo.found_in(fold("you are f o o")) and foo.found_in(fold("f o o bar"))
    assert not Term("anal").found_in(fold("an al fresco lunch"))  # mixed separators do not join words


async def test_the_default_policy_refuses_impersonation_and_cloning_without_consent():
    policy = Policy.load()

    async def verdict(text: str, task: str = "generate_music") -> str | None:
        node = {"id": "n", "task": task, "plane": "python", "params": {"prompt": text}}
        graph = Graph.model_validate({"nodes": [node]})
        context = PolicyContext(user="alice", stage="submit", goal=None, tasks=frozenset({task}))
        try:
            await policy.evaluate(graph_texts(graph), [], context, uploads=_no_uploads)
        except PolicyRefusal as exc:
            return exc.rule
        return None

    assert policy.name == "default" and [r.id for r in policy.rules] == ["voice-consent", "impersonation",
                                                                         "minors-sexual"]
    assert await verdict("sing it in the voice of Barack Obama") == "impersonation"
    assert await verdict("make it sound exactly like Freddie Mercury") == "impersonation"
    assert await verdict("a deepfake of the mayor giving a speech") == "impersonation"
    assert await verdict("a sea shanty in the voice of a pirate") is None
    assert await verdict("a documentary score about deepfakes") is None
    assert await verdict("explicit sexual scene with a minor") == "minors-sexual"
    assert await verdict("a lullaby for kids, soft and sweet") is None
    clone = Graph.model_validate({"nodes": [{"id": "v", "task": "train_voice", "plane": "python",
                                             "params": {"clips": ["uploads/alice/0/a.wav"]}}]})
    with pytest.raises(PolicyRefusal) as refused:
        await policy.evaluate([], voice_clips(clone), PolicyContext(user="alice", stage="submit", goal=None,
                                                                    tasks=frozenset({"train_voice"})),
                              uploads=_no_uploads)
    assert (refused.value.rule, refused.value.node) == ("voice-consent", "v")


async def _no_uploads(user: str, key: str) -> None:
    return None
