"""Keep and redo: job names (given, from the intent, from the tasks; renamed), re-runs with the
same or new seeds, and the gallery of every output, newest first, each user's own."""

from __future__ import annotations

import asyncio
import base64

import httpx

from dualplane.common.models import Job
from dualplane.control_plane.job_names import compose_name, intent_name
from dualplane.control_plane.routes_jobs import rerun_graph
from dualplane.tasks import default_registry
from tests.helpers import wait_for_job, wav_bytes

SONG = {"id": "song", "task": "plan_song", "plane": "control", "params": {"narrative": "rain on a tin roof"}}


async def finished(api_client: httpx.AsyncClient, control_plane, response: httpx.Response) -> dict:
    assert response.status_code == 201, response.text
    job = await wait_for_job(control_plane, response.json()["id"], timeout_s=90)
    assert job.status == "succeeded", job.model_dump_json()
    return (await api_client.get(f"/jobs/{job.id}")).json()


async def test_a_submission_keeps_its_name_else_is_named_after_its_first_generator(api):
    alice = api("alice")
    named = await alice.post("/jobs", json={"nodes": [SONG], "metadata": {"name": "  Tin roof demo "}})
    derived = await alice.post("/jobs", json={"nodes": [{"id": "n", "task": "noop", "plane": "python"}, SONG]})
    internal = await alice.post("/jobs", json={"nodes": [{"id": "n", "task": "noop", "plane": "python"}]})
    assert named.json()["name"] == "Tin roof demo" == named.json()["graph"]["metadata"]["name"]
    assert derived.json()["name"] == "Plan a song (title, key, chords, lyrics)"  # noop is no generator
    assert internal.json()["name"] == "noop"
    rows = {row["id"]: row["name"] for row in (await alice.get("/jobs")).json()["jobs"]}
    assert rows[named.json()["id"]] == "Tin roof demo" and rows[internal.json()["id"]] == "noop"

    for bad in ("x" * 121, "two\nlines", "\x1b[31mred", "   ", 5):
        response = await alice.post("/jobs", json={"nodes": [SONG], "metadata": {"name": bad}})
        assert response.status_code == 422, (bad, response.text)
        (error,) = response.json()["node_errors"]["_graph"]
        assert error["field"] == "metadata.name", error


async def test_compose_names_the_job_from_the_intent_unless_given_one(api):
    alice = api("alice")
    plan = await alice.post("/compose", json={"intent": "a 30-second lo-fi track with rain, for studying",
                                              "dry_run": True})
    assert plan.status_code == 200, plan.text
    assert plan.json()["graph"]["metadata"]["name"] == "A 30-second lo-fi track with rain"
    job = await alice.post("/compose", json={"intent": {"prompt": "an upbeat pop song about summer road trips"},
                                             "name": "Road trip"})
    assert job.status_code == 201, job.text
    assert (await alice.get(f"/jobs/{job.json()['id']}")).json()["name"] == "Road trip"
    long = await alice.post("/compose", json={"intent": "a calm ambient piece " + "with soft pads " * 10,
                                              "dry_run": True})
    name = long.json()["graph"]["metadata"]["name"]
    assert len(name) <= 60 and name.endswith("…") and name.startswith("A calm ambient piece with soft pads")


def test_derived_names_read_like_titles():
    assert intent_name("lo-fi beat; 2 minutes") == "Lo-fi beat"
    assert intent_name("x" * 100) == "X" + "x" * 58 + "…"
    assert intent_name(" \n ") is None
    assert compose_name(None, "Rain On Tin", "anything") == "Rain On Tin"
    assert compose_name(None, "   ", "a song about trains. Slow.") == "A song about trains"
    assert compose_name("", None, None) is None


async def test_rename_by_owner_or_admin_only(api):
    alice, bob, root = api("alice"), api("bob"), api("root", role="admin")
    created = await alice.post("/jobs", json={"nodes": [SONG]}, headers={"Idempotency-Key": "k1"})
    job_id = created.json()["id"]

    renamed = await alice.patch(f"/jobs/{job_id}", json={"name": "Rainy take 1"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Rainy take 1", renamed.text
    assert renamed.json()["graph"]["metadata"]["name"] == "Rainy take 1"
    assert (await alice.get("/jobs")).json()["jobs"][0]["name"] == "Rainy take 1"
    assert (await bob.patch(f"/jobs/{job_id}", json={"name": "mine now"})).status_code == 404
    assert (await root.patch(f"/jobs/{job_id}", json={"name": "Moderated"})).json()["name"] == "Moderated"
    for body in ({"name": ""}, {"name": "a\tb\nc"}, {"name": "x" * 121}, {}, {"name": "ok", "extra": 1}):
        response = await alice.patch(f"/jobs/{job_id}", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    assert (await alice.patch("/jobs/nope", json={"name": "x"})).status_code == 404

    # the same submission again is still the same job, whatever it is called now
    again = await alice.post("/jobs", json={"nodes": [SONG]}, headers={"Idempotency-Key": "k1"})
    assert again.status_code == 200 and again.json()["id"] == job_id and again.json()["name"] == "Moderated"


async def test_rerun_same_and_new_seeds(api, control_plane):
    alice, bob = api("alice"), api("bob")
    graph = {"nodes": [{**SONG, "params": {**SONG["params"], "seed": 7}},
                       {"id": "echo", "task": "emit", "plane": "control", "needs": ["song"],
                        "params": {"value": {"t": 1}}}],
             "metadata": {"name": "Tin roof"}}
    first = await finished(alice, control_plane, await alice.post("/jobs", json=graph))

    same = await alice.post(f"/jobs/{first['id']}/rerun", json={"seed": "same"})
    assert same.status_code == 201, same.text
    again = await finished(alice, control_plane, same)
    assert again["id"] != first["id"] and again["name"] == "Tin roof"
    assert again["graph"]["metadata"]["rerun_of"] == first["id"]
    song = {n["id"]: n for n in again["graph"]["nodes"]}["song"]
    assert song["params"]["seed"] == 7
    assert song["output"] == {n["id"]: n for n in first["graph"]["nodes"]}["song"]["output"]

    empty_body = await alice.post(f"/jobs/{first['id']}/rerun")  # no body: the same seeds
    assert empty_body.status_code == 201 and empty_body.json()["graph"]["nodes"][0]["params"]["seed"] == 7

    new = await alice.post(f"/jobs/{first['id']}/rerun", json={"seed": "new"})
    assert new.status_code == 201, new.text
    nodes = {n["id"]: n for n in new.json()["graph"]["nodes"]}
    assert nodes["song"]["params"]["seed"] != 7 and 0 <= nodes["song"]["params"]["seed"] < 2**32
    assert nodes["echo"]["params"] == {"value": {"t": 1}}  # emit has no seed param
    assert new.json()["status"] in ("queued", "running", "succeeded")

    assert (await bob.post(f"/jobs/{first['id']}/rerun", json={})).status_code == 404
    assert (await alice.post(f"/jobs/{first['id']}/rerun", json={"seed": "other"})).status_code == 422


def test_rerun_with_the_same_seed_pins_a_seed_a_node_chose_itself():
    job = Job.model_validate({"id": "j1", "status": "succeeded", "created_at": 1.0, "graph": {"id": "mine", "nodes": [
        {"id": "vis", "task": "visualize_audio", "plane": "python", "params": {"audio": "uploads/a/0/x.wav"},
         "status": "succeeded", "output": {"seed": 4242, "video": "jobs/j1/vis/visualizer.mp4"}, "attempts": 1},
    ]}})
    same = rerun_graph(job, new_seeds=False, registry=default_registry())
    assert same["nodes"][0]["params"] == {"audio": "uploads/a/0/x.wav", "seed": 4242}
    assert "id" not in same and same["metadata"] == {"rerun_of": "j1"}
    assert not {"status", "output", "attempts"} & set(same["nodes"][0])


async def test_gallery_lists_outputs_newest_first_by_kind_and_only_the_callers(api, control_plane, worker):
    alice, bob = api("alice"), api("bob")
    clip = (await alice.post("/uploads", params={"name": "bed.wav"}, content=wav_bytes(1.0),
                             headers={"Content-Type": "audio/wav"})).json()
    video = await finished(alice, control_plane, await alice.post("/jobs", json={"nodes": [
        {"id": "vis", "task": "visualize_audio", "plane": "python",
         "params": {"audio": clip["key"], "width": 128, "height": 128, "fps": 2}}], "metadata": {"name": "Clip"}}))
    await asyncio.sleep(0.01)  # created_at orders jobs
    text = await finished(alice, control_plane, await alice.post("/jobs", json={"nodes": [
        {"id": "sum", "task": "checksum", "plane": "python", "params": {"text": "hello"}}]}))
    await asyncio.sleep(0.01)
    audio = await finished(alice, control_plane, await alice.post("/jobs", json={"nodes": [
        {"id": "mix", "task": "mix_audio", "plane": "control", "params": {"bed": clip["key"], "voice": clip["key"]}}]}))

    everything = (await alice.get("/outputs")).json()
    assert everything["next_cursor"] is None
    listed = [(o["job_id"], o["name"], o["kind"]) for o in everything["outputs"]]
    assert listed == [(audio["id"], "mix.opus", "audio"), (audio["id"], "mix.wav", "audio"),
                      (text["id"], "checksum.txt", "text"),
                      (video["id"], "visualizer.mp4", "video"), (video["id"], "poster.png", "image")], listed
    by_name = {o["name"]: o for o in everything["outputs"]}
    mix = by_name["mix.wav"]
    assert mix["job_name"] == audio["name"] and mix["task"] == "mix_audio" and mix["node_id"] == "mix"
    assert mix["content_type"] == "audio/wav" and mix["size"] > 0 and abs(mix["duration_s"] - 1.0) < 0.1
    assert mix["poster_url"] is None and mix["created_at"] >= audio["created_at"]
    clip_video = by_name["visualizer.mp4"]
    assert clip_video["job_name"] == "Clip" and clip_video["duration_s"] == 1.0
    async with httpx.AsyncClient() as http:
        assert (await http.get(clip_video["url"])).content[4:8] == b"ftyp"
        assert (await http.get(clip_video["poster_url"])).content[:8] == b"\x89PNG\r\n\x1a\n"
    assert by_name["checksum.txt"]["duration_s"] is None and by_name["poster.png"]["duration_s"] is None

    videos = (await alice.get("/outputs", params={"kind": "video"})).json()["outputs"]
    assert [o["name"] for o in videos] == ["visualizer.mp4"]
    assert [o["name"] for o in (await alice.get("/outputs", params={"kind": "text"})).json()["outputs"]] == \
        ["checksum.txt"]

    paged, cursor = [], None
    while True:  # two at a time, pages ending inside a job, the same list
        page = (await alice.get("/outputs", params={"limit": 2, **({"cursor": cursor} if cursor else {})})).json()
        paged += [(o["job_id"], o["name"]) for o in page["outputs"]]
        assert len(page["outputs"]) <= 2
        if not (cursor := page["next_cursor"]):
            break
    assert paged == [(job_id, name) for job_id, name, _ in listed]

    assert (await bob.get("/outputs")).json() == {"outputs": [], "next_cursor": None}
    assert (await alice.get("/outputs", params={"kind": "model"})).status_code == 422
    forged = base64.urlsafe_b64encode(b"nan:x:0").decode()
    bad = await alice.get("/outputs", params={"cursor": forged})
    assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"
