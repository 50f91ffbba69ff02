"""Every object key a job reads belongs to its user (their uploads, their jobs' artifacts) or
is public (models/); anything else fails exactly like a missing key, at submission where the
key is written in the graph, at run time where it arrives through a ``$ref``."""

from __future__ import annotations

import httpx
import pytest

from dualplane.control_plane import ControlPlane
from tests.helpers import node, wait_for_job

pytestmark = pytest.mark.both_topologies


async def _upload(client: httpx.AsyncClient, name: str, data: bytes) -> str:
    """Only the key matters here: the bytes are no media, so they go up as the text they are."""
    response = await client.post("/uploads", params={"name": name}, content=data,
                                 headers={"Content-Type": "text/plain"})
    assert response.status_code == 201, response.text
    return response.json()["key"]


def _mux(audio: object, video: object) -> dict:
    return {"nodes": [{"id": "mux", "task": "mux_media", "plane": "control",
                       "params": {"audio": audio, "video": video}}]}


def _mux_of_emitted(audio: str, video: str) -> dict:
    """The keys reach mux_media at run time, from an upstream node's output."""
    return {"nodes": [
        {"id": "src", "task": "emit", "plane": "control", "params": {"value": {"audio": audio, "video": video}}},
        {"id": "mux", "task": "mux_media", "plane": "control", "needs": ["src"],
         "params": {"audio": {"$ref": "src.output.audio"}, "video": {"$ref": "src.output.video"}}},
    ]}


async def _finished(control_plane: ControlPlane, response: httpx.Response) -> dict:
    assert response.status_code == 201, response.text
    job = await wait_for_job(control_plane, response.json()["id"])
    return node(job, "mux").error.model_dump()


async def test_a_graph_naming_another_users_upload_is_rejected_like_a_missing_key(api):
    alice, bob = api("alice"), api("bob")
    alices = await _upload(alice, "secret.wav", b"RIFF alice's voice")
    bobs = await _upload(bob, "mine.wav", b"RIFF bob's voice")

    theirs = await bob.post("/jobs", json=_mux(alices, bobs))
    nobodys = await bob.post("/jobs", json=_mux("uploads/carol/0/none.wav", bobs))
    job_of_alice = await alice.post("/jobs", json={"nodes": [{"id": "a", "task": "noop", "plane": "python"}]})
    their_job = await bob.post("/jobs", json=_mux(f"jobs/{job_of_alice.json()['id']}/a/out.wav", bobs))
    outside = await bob.post("/jobs", json=_mux("secrets/creds.txt", bobs))
    escape = await bob.post("/jobs", json=_mux(f"uploads/bob/../alice/{alices.split('/', 2)[2]}", bobs))

    for response, key in ((theirs, alices), (nobodys, "uploads/carol/0/none.wav")):
        assert response.status_code == 422, response.text
        (error,) = response.json()["node_errors"]["mux"]
        assert error["field"] == "params.audio"
        assert error["message"].replace(key, "KEY") == \
            "no object 'KEY' (keys name your own uploads and job artifacts, or models/)"
    for response in (their_job, outside, escape):
        assert response.status_code == 422 and "no object" in response.text


async def test_a_key_arriving_at_run_time_is_read_only_if_it_is_the_users(api, control_plane: ControlPlane):
    alice, bob = api("alice"), api("bob")
    alices = await _upload(alice, "secret.wav", b"RIFF alice's voice")
    bobs_audio = await _upload(bob, "a.wav", b"not really audio")
    bobs_video = await _upload(bob, "v.mp4", b"not really video")
    missing = bobs_audio.rsplit("/", 1)[0] + "/gone.wav"

    other_users = await _finished(control_plane, await bob.post("/jobs", json=_mux_of_emitted(alices, bobs_video)))
    not_there = await _finished(control_plane, await bob.post("/jobs", json=_mux_of_emitted(missing, bobs_video)))
    own = await _finished(control_plane, await bob.post("/jobs", json=_mux_of_emitted(bobs_audio, bobs_video)))

    # someone else's object and a missing one read the same: nothing tells that alice's exists
    assert other_users["type"] == not_there["type"] == "ObjectNotFound"
    assert other_users["message"].replace(alices, "KEY") == not_there["message"].replace(missing, "KEY")
    assert other_users["transient"] is False
    # bob's own files were read (ffmpeg then refused them as media)
    assert own["type"] != "ObjectNotFound" and "a.wav" not in own["message"]


async def test_a_job_may_read_its_own_users_earlier_artifacts(api, control_plane: ControlPlane, worker):
    bob = api("bob")
    first = await bob.post("/jobs", json={"nodes": [{"id": "h", "task": "checksum", "plane": "python",
                                                     "params": {"text": "hello"}}]})
    done = await wait_for_job(control_plane, first.json()["id"])
    key = node(done, "h").artifacts[0].key
    video = await _upload(bob, "v.mp4", b"not really video")
    later = await _finished(control_plane, await bob.post("/jobs", json=_mux(key, video)))

    assert key.startswith(f"jobs/{done.id}/")
    assert later["type"] != "ObjectNotFound"  # read, then refused by ffmpeg as audio
