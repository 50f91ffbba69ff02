"""Every endpoint of the control-plane API, through the real app on a real Redis and worker."""

from __future__ import annotations

import asyncio
import time

import httpx
import jwt
import pytest

from dualplane.control_plane import ControlPlane
from tests.helpers import RunningWorker, wait_for_job

pytestmark = pytest.mark.both_topologies

NOOP = {"nodes": [{"id": "a", "task": "noop", "plane": "python"}]}
SLOW = {"nodes": [{"id": "s", "task": "sleep", "plane": "python", "params": {"seconds": 3, "steps": 30}}]}


def problem_of(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    return response.json()


async def test_submit_returns_the_job_with_its_location(api, worker: RunningWorker):
    response = await api("alice").post("/jobs", json=NOOP)
    job = response.json()
    assert response.status_code == 201, job
    assert response.headers["Location"] == f"/jobs/{job['id']}"
    assert job["user"] == "alice" and job["status"] == "queued"


async def test_resubmitting_the_same_client_id_returns_the_same_job(api, worker: RunningWorker,
                                                                    control_plane: ControlPlane):
    client = api("alice")
    graph = {"id": "alice-job-1", **NOOP}
    first = await client.post("/jobs", json=graph)
    again = await client.post("/jobs", json=graph)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert first.json()["graph"]["id"] == "alice-job-1"  # the job id is scoped to alice
    page = (await client.get("/jobs")).json()
    assert [j["id"] for j in page["jobs"]] == [first.json()["id"]]


async def test_an_idempotency_key_never_creates_a_duplicate(api, worker: RunningWorker):
    client = api("alice")
    responses = await asyncio.gather(*(client.post("/jobs", json=NOOP, headers={"Idempotency-Key": "k-1"})
                                       for _ in range(5)))
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 200, 201]
    # the same key from another user is another job
    other = await api("bob").post("/jobs", json=NOOP, headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 201 and other.json()["id"] not in ids


async def test_reusing_an_id_for_another_graph_is_a_conflict_and_another_users_id_is_another_job(
    api, worker: RunningWorker
):
    graph = {"id": "shared-id", **NOOP}
    alices = await api("alice").post("/jobs", json=graph)
    assert alices.status_code == 201
    different = {"id": "shared-id", "nodes": [{"id": "b", "task": "noop", "plane": "python"}]}
    assert problem_of(await api("alice").post("/jobs", json=different))["status"] == 409
    bobs = await api("bob").post("/jobs", json=graph)  # no 409: that would tell bob alice's id exists
    assert bobs.status_code == 201 and bobs.json()["id"] != alices.json()["id"]


async def test_wait_returns_the_finished_job_when_it_ends_in_time(api, worker: RunningWorker):
    response = await api("alice").post("/jobs", params={"wait": 10}, json=NOOP)
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert response.json()["graph"]["nodes"][0]["status"] == "succeeded"


async def test_wait_returns_202_with_the_running_job_when_time_runs_out(api, worker: RunningWorker):
    started = time.monotonic()
    response = await api("alice").post("/jobs", params={"wait": 0.3}, json=SLOW)
    assert response.status_code == 202
    assert response.json()["status"] in ("queued", "running")
    assert time.monotonic() - started < 2.5


async def test_batch_submits_all_or_reports_invalid_graphs_by_index(api, worker: RunningWorker,
                                                                    control_plane: ControlPlane):
    client = api("alice")
    ok = await client.post("/jobs/batch", json={"graphs": [NOOP, NOOP, NOOP]})
    assert ok.status_code == 201 and len({j["id"] for j in ok.json()["jobs"]}) == 3
    bad = await client.post("/jobs/batch", json={"graphs": [NOOP, {"nodes": [{"id": "x", "task": "nope",
                                                                                 "plane": "python"}]}]})
    body = problem_of(bad)
    assert bad.status_code == 422 and list(body["errors"]) == ["1"] and "x" in body["errors"]["1"]
    assert len((await client.get("/jobs")).json()["jobs"]) == 3  # nothing of the bad batch was queued


async def test_listing_pages_with_a_cursor_and_filters(api, worker: RunningWorker, control_plane: ControlPlane):
    client = api("alice")
    ids = [(await client.post("/jobs", json=NOOP)).json()["id"] for _ in range(7)]
    failing = (await client.post("/jobs", json={"nodes": [{"id": "f", "task": "fail", "plane": "python"}]})).json()
    for job_id in [*ids, failing["id"]]:
        await wait_for_job(control_plane, job_id)
    await api("bob").post("/jobs", json=NOOP)

    seen, cursor = [], None
    while True:
        page = (await client.get("/jobs", params={"limit": 3, **({"cursor": cursor} if cursor else {})})).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [failing["id"], *reversed(ids)]  # newest first, no repeats, no gaps, no bob
    failed = (await client.get("/jobs", params={"status": "failed"})).json()["jobs"]
    assert [j["id"] for j in failed] == [failing["id"]]
    assert [j["id"] for j in (await client.get("/jobs", params={"task": "fail"})).json()["jobs"]] == [failing["id"]]
    first = (await client.get(f"/jobs/{ids[0]}")).json()
    newer = (await client.get("/jobs", params={"created_after": first["created_at"]})).json()["jobs"]
    assert ids[0] in {j["id"] for j in newer} and len(newer) == 8
    assert (await client.get("/jobs", params={"cursor": "garbage!"})).status_code == 400


async def test_admins_list_everyone_and_users_cannot(api, worker: RunningWorker):
    await api("alice").post("/jobs", json=NOOP)
    await api("bob").post("/jobs", json=NOOP)
    everyone = (await api("root", role="admin").get("/jobs")).json()["jobs"]
    assert {j["user"] for j in everyone} == {"alice", "bob"}
    only_bob = (await api("root", role="admin").get("/jobs", params={"user": "bob"})).json()["jobs"]
    assert {j["user"] for j in only_bob} == {"bob"}
    assert (await api("alice").get("/jobs", params={"user": "bob"})).status_code == 403


async def test_another_users_job_is_not_found(api, worker: RunningWorker):
    job_id = (await api("alice").post("/jobs", json=NOOP)).json()["id"]
    bob = api("bob")
    for response in (await bob.get(f"/jobs/{job_id}"), await bob.get(f"/jobs/{job_id}/events"),
                     await bob.post(f"/jobs/{job_id}/cancel"), await bob.delete(f"/jobs/{job_id}"),
                     await bob.get(f"/jobs/{job_id}/artifacts")):
        assert response.status_code == 404
    assert (await api("root", role="admin").get(f"/jobs/{job_id}")).status_code == 200
    assert (await api("svc", role="orchestrator").get(f"/jobs/{job_id}")).status_code == 200


async def test_tokens_that_are_missing_expired_forged_or_of_an_unknown_role_are_refused(api, authenticator):
    expired = authenticator.mint("alice", "user", ttl_s=-10)
    forged = jwt.encode({"sub": "alice", "role": "admin", "iss": "dualplane", "exp": time.time() + 60},
                        "not-the-secret-but-long-enough-32b", algorithm="HS256")
    unknown_role = jwt.encode({"sub": "alice", "role": "superuser", "iss": "dualplane", "exp": time.time() + 60},
                              "test-secret-for-hs256-at-least-32-bytes", algorithm="HS256")
    for client in (api(None), api(token=expired), api(token=forged), api(token=unknown_role),
                   api(token="not.a.jwt")):
        response = await client.get("/jobs")
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "expired" in problem_of(await api(token=expired).get("/jobs"))["detail"]


async def test_cancel_stops_a_running_job(api, worker: RunningWorker, control_plane: ControlPlane):
    client = api("alice")
    job_id = (await client.post("/jobs", json=SLOW)).json()["id"]
    await asyncio.sleep(0.3)
    response = await client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 202
    job = await wait_for_job(control_plane, job_id, timeout_s=5)
    assert job.status == "cancelled"


async def test_purge_deletes_a_finished_job_and_its_artifacts(api, worker: RunningWorker,
                                                             control_plane: ControlPlane):
    client = api("alice")
    graph = {"nodes": [{"id": "c", "task": "checksum", "plane": "python", "params": {"text": "bytes"}}]}
    job_id = (await client.post("/jobs", params={"wait": 10}, json=graph)).json()["id"]
    (artifact,) = (await client.get(f"/jobs/{job_id}/artifacts")).json()["artifacts"]
    async with httpx.AsyncClient() as plain:
        assert (await plain.get(artifact["url"])).status_code == 200
    assert artifact["node_id"] == "c" and artifact["key"] == f"jobs/{job_id}/c/checksum.txt"

    assert (await client.delete(f"/jobs/{job_id}")).status_code == 204
    assert (await client.get(f"/jobs/{job_id}")).status_code == 404
    assert job_id not in {j["id"] for j in (await client.get("/jobs")).json()["jobs"]}
    async with httpx.AsyncClient() as plain:
        assert (await plain.get(artifact["url"])).status_code == 404


async def test_purging_an_unfinished_job_is_a_conflict(api, worker: RunningWorker):
    client = api("alice")
    job_id = (await client.post("/jobs", json=SLOW)).json()["id"]
    assert problem_of(await client.delete(f"/jobs/{job_id}"))["status"] == 409
    await client.post(f"/jobs/{job_id}/cancel")


async def test_the_submission_rate_limit_answers_429_with_retry_after(api, settings, control_plane, authenticator):
    from dualplane.control_plane import create_app

    strict = settings.model_copy(update={"submit_rate_per_min": 3})
    app = create_app(strict, plane=control_plane, authenticator=authenticator)
    headers = {"Authorization": f"Bearer {authenticator.mint('alice')}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cp",
                                 headers=headers) as client:
        codes = [(await client.post("/jobs", json=NOOP)).status_code for _ in range(4)]
        limited = await client.post("/jobs", json=NOOP)
    assert codes == [201, 201, 201, 429]
    assert 1 <= int(limited.headers["Retry-After"]) <= 61
    assert problem_of(limited)["title"] == "Too many submissions"


async def test_limits_on_body_nodes_and_params_are_clear_4xx(api, settings):
    client = api("alice")
    huge = {"nodes": [{"id": "a", "task": "noop", "plane": "python", "params": {"value": "x" * 2_000_000}}]}
    assert problem_of(await client.post("/jobs", json=huge))["status"] == 413
    many = {"nodes": [{"id": f"n{i}", "task": "noop", "plane": "python"} for i in range(settings.max_nodes + 1)]}
    response = await client.post("/jobs", json=many)
    assert response.status_code == 422 and "at most" in response.json()["node_errors"]["_graph"][0]["message"]
    fat = {"nodes": [{"id": "a", "task": "noop", "plane": "python", "params": {"value": "x" * 70_000}}]}
    response = await client.post("/jobs", json=fat)
    assert response.status_code == 422 and response.json()["node_errors"]["a"][0]["field"] == "params"
    broken = await client.post("/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert problem_of(broken)["status"] == 400


async def test_the_task_catalog_describes_params_for_forms(api):
    catalog = {t["name"]: t for t in (await api("alice").get("/tasks")).json()["tasks"]}
    assert catalog["sleep"]["plane"] == "python" and catalog["emit"]["plane"] == "control"
    assert catalog["sleep"]["params_schema"]["properties"]["seconds"]["maximum"] == 3600
    assert catalog["sleep"]["description"]


async def test_live_workers_are_listed_with_their_manifests(api, worker: RunningWorker):
    deadline = time.monotonic() + 5
    while not (workers := (await api("alice").get("/workers")).json()["workers"]):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    (manifest,) = workers
    assert manifest["worker_id"] == worker.worker.worker_id and "noop" in manifest["tasks"]


async def test_preferences_persist_per_user(api):
    alice = api("alice")
    assert (await alice.get("/me/preferences")).json() == {}
    prefs = {"generator": "sleep", "options": {"seconds": 2}}
    assert (await alice.put("/me/preferences", json=prefs)).json() == prefs
    assert (await alice.get("/me/preferences")).json() == prefs
    assert (await api("bob").get("/me/preferences")).json() == {}
    assert (await alice.put("/me/preferences", json=["not", "an", "object"])).status_code == 422


async def test_a_request_id_is_generated_when_absent(api, worker: RunningWorker):
    response = await api("alice").post("/jobs", json=NOOP)
    request_id = response.headers["X-Request-Id"]
    assert len(request_id) == 32 and response.json()["request_id"] == request_id


async def test_wait_outlasts_the_redis_client_socket_timeout(api, worker: RunningWorker):
    """redis-py's default socket timeout is 5 s: a longer wait must still end with the job."""
    graph = {"nodes": [{"id": "s", "task": "sleep", "plane": "python", "params": {"seconds": 5.5, "steps": 2}}]}
    response = await api("alice").post("/jobs", params={"wait": 15}, json=graph)
    assert response.status_code == 200 and response.json()["status"] == "succeeded"


# -- hostile input: depth, numbers, ids, body caps, token subjects -------------------------


def nested(depth: int, leaf: object = 1, *, key: str | None = None) -> object:
    """``depth`` levels of arrays (or of ``{key: ...}`` objects) around ``leaf``."""
    value = leaf
    for _ in range(depth):
        value = {key: value} if key is not None else [value]
    return value


def deep_body(document_with_hole: str, depth: int) -> bytes:
    """A JSON body too deep for json/orjson to write: ``HOLE`` replaced by ``depth`` arrays."""
    return document_with_hole.replace("HOLE", "[" * depth + "1" + "]" * depth).encode()


async def test_params_nested_too_deep_are_a_node_scoped_422(api):
    client = api("alice")
    hole = '{"nodes":[{"id":"ok","task":"noop","plane":"python"},' \
           '{"id":"deep","task":"noop","plane":"python","params":{"value":HOLE}}]}'
    for depth in (100, 300, 5_000):  # past pydantic's serializer, orjson's parser and both
        response = await client.post("/jobs", content=deep_body(hole, depth),
                                     headers={"Content-Type": "application/json"})
        body = problem_of(response)
        assert response.status_code == 422, (depth, body)
        assert body["node_errors"] == {"deep": [{"field": "params", "message": "nests deeper than 64 levels"}]}
    nameless = '{"nodes":[{"task":"noop","plane":"python","params":{"value":HOLE}}]}'
    response = await client.post("/jobs", content=deep_body(nameless, 300))
    assert list(problem_of(response)["node_errors"]) == ["nodes[0]"]


async def test_metadata_preferences_and_batches_nested_too_deep_are_422(api):
    client = api("alice")
    metadata = {"nodes": [{"id": "a", "task": "noop", "plane": "python"}], "metadata": nested(300, key="a")}
    response = await client.post("/jobs", content=_dumps_deep(metadata))
    assert response.status_code == 422
    assert problem_of(response)["node_errors"] == {"_graph": [{"field": "metadata",
                                                              "message": "nests deeper than 64 levels"}]}
    response = await client.put("/me/preferences", content=_dumps_deep(nested(300, key="a")))
    assert response.status_code == 422 and "$.a.a.a" in problem_of(response)["detail"]
    assert (await client.get("/me/preferences")).json() == {}
    batch = {"graphs": [NOOP, {"nodes": [{"id": "x", "task": "noop", "plane": "python",
                                          "params": {"value": nested(300)}}]}]}
    response = await client.post("/jobs/batch", content=_dumps_deep(batch))
    assert response.status_code == 422
    assert problem_of(response)["errors"] == {"1": {"x": [{"field": "params",
                                                          "message": "nests deeper than 64 levels"}]}}
    compose = {"intent": {"prompt": "rain", "options": nested(300, key="o")}, "dry_run": True}
    assert problem_of(await client.post("/compose", content=_dumps_deep(compose)))["status"] == 422


async def test_params_as_deep_as_allowed_run_through_both_planes(api, worker: RunningWorker):
    """The limit leaves room below every parser downstream (handoff messages, events, output)."""
    graph = {"nodes": [{"id": "a", "task": "noop", "plane": "python", "params": {"value": nested(60)}},
                       {"id": "b", "task": "collect", "plane": "control", "needs": ["a"]}],
             "metadata": nested(63, key="m")}
    response = await api("alice").post("/jobs", params={"wait": 10}, json=graph)
    assert response.status_code == 200 and response.json()["status"] == "succeeded", response.text


def _dumps_deep(value: object) -> bytes:
    """json.dumps past orjson's depth limit (the stdlib encoder recurses, so give it room)."""
    import json
    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    try:
        return json.dumps(value).encode()
    finally:
        sys.setrecursionlimit(limit)


async def test_out_of_range_and_non_finite_numbers_in_queries_are_4xx(api, worker: RunningWorker):
    client = api("alice")
    job_id = (await client.post("/jobs", params={"wait": 10}, json=NOOP)).json()["id"]
    for since in ("18446744073709551616", "99999999999999999999999", str(2**53 + 1), "-1", "1e3"):
        response = await client.get(f"/jobs/{job_id}/events", params={"since": since})
        assert response.status_code == 422, (since, response.text)
    assert (await client.get(f"/jobs/{job_id}/events", params={"since": 2**53})).json() == []
    for name in ("created_after", "created_before"):
        for value in ("nan", "inf", "-inf", "1e400", "-1", "1e12"):
            response = await client.get("/jobs", params={name: value})
            assert problem_of(response)["status"] == 422, (name, value, response.text)
    for wait in ("inf", "nan", "1e400", "-1"):
        response = await client.post("/jobs", params={"wait": wait}, json=NOOP)
        assert response.status_code == 422, (wait, response.text)
        response = await client.post("/compose", params={"wait": wait}, json={"intent": "rain", "dry_run": True})
        assert response.status_code == 422, (wait, response.text)
    for expires_s in ("1e400", "nan", "99999999999999999999"):
        response = await client.get(f"/jobs/{job_id}/artifacts", params={"expires_s": expires_s})
        assert response.status_code == 422, (expires_s, response.text)
    for limit in ("0", "501", "nan", "1e400"):
        assert (await client.get("/jobs", params={"limit": limit})).status_code == 422


async def test_cursors_that_the_api_did_not_write_are_400(api, worker: RunningWorker):
    import base64

    client = api("alice")
    await client.post("/jobs", params={"wait": 10}, json=NOOP)
    for raw in ("nan:abc", "inf:abc", "-inf:abc", "1e400:abc", "-5:abc", "1e12:abc", "1.5:", "1.5:a:b",
                "1.5:" + "x" * 65, "1.5:caf\u00e9", "no-colon"):
        cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
        response = await client.get("/jobs", params={"cursor": cursor})
        assert problem_of(response)["status"] == 400, (raw, response.text)
    assert (await client.get("/jobs", params={"cursor": "x" * 1000})).status_code == 422
    page = (await client.get("/jobs", params={"limit": 1})).json()
    assert (await client.get("/jobs", params={"cursor": page["next_cursor"] or "MS41OmFiYw"})).status_code == 200


async def test_job_ids_that_cannot_exist_are_404_on_every_job_route(api, worker: RunningWorker):
    client = api("alice")
    job_id = (await client.post("/jobs", params={"wait": 10}, json=NOOP)).json()["id"]
    # `<id>:events` names the job's event stream, a key of another type
    for bad in (f"{job_id}:events", "x" * 1000, "caf\u00e9", "a b", "%2e%2e", "a%00b"):
        for method, suffix in (("GET", ""), ("GET", "/events"), ("POST", "/cancel"), ("DELETE", ""),
                               ("GET", "/artifacts")):
            response = await client.request(method, f"/jobs/{bad}{suffix}")
            assert response.status_code == 404, (method, bad, suffix, response.text)


async def test_compose_bodies_are_capped_like_every_other_body(api):
    client = api("alice")
    padded = {"intent": "a lo-fi track", "dry_run": True, "padding": "x" * 3_000_000}
    response = await client.post("/compose", json=padded)
    assert response.status_code == 413 and problem_of(response)["title"] == "Request too large"

    async def chunks():  # no Content-Length: the cap is counted while reading
        yield b'{"intent": "a lo-fi track", "dry_run": true, "padding": "'
        for _ in range(40):
            yield b"x" * 65_536
        yield b'"}'

    response = await client.post("/compose", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and problem_of(response)["status"] == 413
    assert "X-Request-Id" in response.headers
    ok = await client.post("/compose", json={"intent": "a lo-fi track", "dry_run": True})
    assert ok.status_code == 200


async def test_a_declared_length_over_the_cap_is_refused_before_the_body_is_read(api):
    client = api("alice")
    for method, path in (("GET", "/tasks"), ("POST", "/jobs/batch"), ("PUT", "/me/preferences"),
                         ("DELETE", "/jobs/x"), ("POST", "/compose")):
        request = client.build_request(method, path, content=b"x" * 10)
        request.headers["Content-Length"] = str(50 * 1024 * 1024)  # what arrives is far less
        response = await client.send(request)
        assert response.status_code == 413, (method, path, response.text)
        assert problem_of(response)["detail"] == "body of 52428800 bytes is over the limit of 1048576 bytes"


async def test_uploads_have_their_own_bigger_cap(api, settings, control_plane, authenticator):
    from dualplane.control_plane import create_app

    roomy = settings.model_copy(update={"max_upload_bytes": 3 * 1024 * 1024})
    app = create_app(roomy, plane=control_plane, authenticator=authenticator)
    headers = {"Authorization": f"Bearer {authenticator.mint('alice')}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cp",
                                 headers=headers) as client:
        two_mb = await client.post("/uploads", params={"name": "big.txt"}, content=b"a" * 2 * 1024 * 1024)
        four_mb = await client.post("/uploads", params={"name": "big.txt"}, content=b"a" * 4 * 1024 * 1024)
        two_mb_elsewhere = await client.put("/me/preferences", content=b"\1" * 2 * 1024 * 1024)
    assert two_mb.status_code == 201, two_mb.text
    assert four_mb.status_code == 413 and two_mb_elsewhere.status_code == 413


async def test_tokens_whose_subject_cannot_be_a_user_id_are_refused(api, authenticator):
    def token(sub: object) -> str:
        return jwt.encode({"sub": sub, "role": "user", "iss": "dualplane", "exp": time.time() + 60},
                          "test-secret-for-hs256-at-least-32-bytes", algorithm="HS256")

    for sub in ("", "   ", "alice:bob", "a/b", "..", "a..b", "tab\there", "nul\x00", "x" * 129, "caf\u00e9"):
        response = await api(token=token(sub)).get("/jobs")
        assert response.status_code == 401, (sub, response.text)
        assert problem_of(response)["detail"].startswith("invalid token: sub"), response.text
    for sub in (123, None, ["alice"]):  # PyJWT itself refuses a subject that is not a string
        assert (await api(token=token(sub)).get("/jobs")).status_code == 401, sub
    for sub in ("alice@example.com", "auth0|1234", "4f1c0d9e-6a1b-4c3e-9f7a-1b2c3d4e5f60", "x" * 128):
        assert (await api(token=token(sub)).get("/jobs")).status_code == 200, sub
    with pytest.raises(ValueError):
        authenticator.mint("alice:bob")
