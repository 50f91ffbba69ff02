"""Accounts through the real app on a real Redis: login, refresh rotation and theft detection,
revocation by disabling and by a password reset, login rate limits, roles, and the CLI."""

from __future__ import annotations

import asyncio
import io
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import jwt
import pytest
import uvicorn

from dualplane.cli import main
from dualplane.common.settings import Settings
from dualplane.control_plane import ControlPlane, create_app
from dualplane.control_plane.accounts import AccountStore
from dualplane.control_plane.auth import Authenticator
from dualplane.devstack.services import free_port
from tests.conftest import TEST_JWT_SECRET

PASSWORD = "correct horse battery staple"
NOOP = {"nodes": [{"id": "a", "task": "noop", "plane": "python"}]}
#: How long a test waits for what should happen within the check interval (0.3 s here).
EVENTUALLY_S = 10.0

Client = Callable[..., httpx.AsyncClient]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Revocations re-read every 0.3 s and a 3 s login window, so nothing waits a minute."""
    return settings.model_copy(update={"revocation_check_s": 0.3, "login_window_s": 3.0,
                                       "login_failures_per_user": 3, "login_failures_per_ip": 6})


@pytest.fixture
def store(control_plane: ControlPlane, settings: Settings) -> AccountStore:
    return AccountStore(control_plane.bridge, refresh_ttl_s=settings.refresh_token_ttl_s)


@pytest.fixture
async def app_client(settings: Settings, control_plane: ControlPlane, authenticator: Authenticator
                     ) -> AsyncIterator[Callable[..., Client]]:
    """``app_client(**settings)``: a new app on the running plane with these settings changed;
    what it returns makes HTTP clients of it: ``client(token=..., ip=...)``."""
    made: list[httpx.AsyncClient] = []

    def app_with(**overrides: object) -> Client:
        app = create_app(settings.model_copy(update=overrides), plane=control_plane, authenticator=authenticator)

        def make(token: str | None = None, ip: str = "127.0.0.1") -> httpx.AsyncClient:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(ip, 4711)),
                                     base_url="http://cp", headers=headers)
            made.append(http)
            return http

        return make

    yield app_with
    for http in made:
        await http.aclose()


@pytest.fixture
def client(app_client: Callable[..., Client]) -> Client:
    """HTTP clients of the app with this module's settings."""
    return app_client()


async def login(client: Client, name: str, password: str = PASSWORD, ip: str = "127.0.0.1") -> httpx.Response:
    return await client(ip=ip).post("/auth/login", json={"username": name, "password": password})


def problem_of(response: httpx.Response) -> dict:
    assert response.headers["content-type"] == "application/problem+json", response.text
    return response.json()


async def eventually_refused(request: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """Repeat the request until it is a 401 (within the check interval, here well under a second)."""
    deadline = time.monotonic() + EVENTUALLY_S
    while (response := await request()).status_code != 401:
        assert response.status_code == 200, response.text
        assert time.monotonic() < deadline, "still accepted"
        await asyncio.sleep(0.05)
    return response


async def test_a_login_answers_the_contract_and_its_token_works_everywhere(client: Client, store: AccountStore,
                                                                          settings: Settings):
    await store.add("alice", PASSWORD)
    response = await login(client, "alice")
    body = response.json()
    assert response.status_code == 200, body
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in", "user", "role"}
    assert (body["token_type"], body["user"], body["role"]) == ("bearer", "alice", "user")
    assert body["expires_in"] == settings.access_token_ttl_s == 900
    assert response.headers["cache-control"] == "no-store"
    claims = jwt.decode(body["access_token"], TEST_JWT_SECRET, algorithms=["HS256"], issuer="dualplane")
    assert (claims["sub"], claims["role"], claims["gen"], claims["exp"] - claims["iat"]) == ("alice", "user", 0, 900)
    alice = client(token=body["access_token"])
    submitted = await alice.post("/jobs", json=NOOP)
    assert submitted.status_code == 201 and submitted.json()["user"] == "alice"
    assert (await alice.get("/jobs")).json()["jobs"][0]["id"] == submitted.json()["id"]


async def test_a_wrong_password_an_unknown_name_and_a_disabled_account_are_401(client: Client, store: AccountStore):
    await store.add("alice", PASSWORD)
    await store.add("dora", PASSWORD)
    await store.set_disabled("dora", True)
    wrong, unknown, not_a_name = await login(client, "alice", "wrong password"), await login(client, "nobody"), \
        await login(client, "no:such/user")
    for response in (wrong, unknown, not_a_name):
        assert response.status_code == 401
        assert problem_of(response)["detail"] == "invalid username or password"  # the same: nothing leaks
    disabled = await login(client, "dora")
    assert disabled.status_code == 401 and problem_of(disabled)["detail"] == "account disabled"
    assert (await login(client, "dora", "wrong password")).json()["detail"] == "invalid username or password"
    # hostile bodies are clear 4xx problems
    http = client()
    bodies = [{"username": "alice"}, {"username": "alice", "password": PASSWORD, "extra": 1},
              {"username": "alice", "password": 7}, {"username": "a" * 129, "password": PASSWORD}, [1, 2]]
    for body in bodies:
        assert problem_of(await http.post("/auth/login", json=body))["status"] == 422, body
    assert problem_of(await http.post("/auth/login", content=b"{not json"))["status"] == 400
    assert problem_of(await http.post("/auth/login", content=b"[" * 100 + b"]" * 100))["status"] == 422
    assert problem_of(await http.post("/auth/login", content=b"x" * 5000))["status"] == 413


async def test_refresh_rotates_the_token_and_a_spent_one_revokes_the_account(client: Client, store: AccountStore):
    await store.add("alice", PASSWORD)
    first = (await login(client, "alice")).json()
    http = client()
    second = await http.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200, second.text
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"] and (rotated["user"], rotated["role"]) == ("alice",
                                                                                                        "user")
    alice = client(token=rotated["access_token"])
    assert (await alice.get("/jobs")).status_code == 200

    # the spent token again: a theft (or a double refresh); every session and token of alice ends
    reused = await http.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 401 and "already used" in problem_of(reused)["detail"]
    latest = await http.post("/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert latest.status_code == 401 and problem_of(latest)["detail"] == "refresh token expired or revoked"
    refused = await eventually_refused(lambda: alice.get("/jobs"))
    assert problem_of(refused)["detail"] == "token revoked (sign in again)"
    assert refused.headers["www-authenticate"] == "Bearer"
    again = (await login(client, "alice")).json()  # signing in again works
    assert (await client(token=again["access_token"]).get("/jobs")).status_code == 200

    for token in ("", "x" * 300, "not-a-token", "0" * 32 + "." + "A" * 43):
        answer = await http.post("/auth/refresh", json={"refresh_token": token})
        assert answer.status_code in (401, 422) and problem_of(answer), token


async def test_logout_ends_the_session(client: Client, store: AccountStore):
    await store.add("alice", PASSWORD)
    tokens = (await login(client, "alice")).json()
    http = client()
    assert (await http.post("/auth/logout", json={"refresh_token": tokens["refresh_token"]})).status_code == 204
    assert (await http.post("/auth/logout", json={"refresh_token": tokens["refresh_token"]})).status_code == 204
    assert (await http.post("/auth/logout", json={"refresh_token": "garbage"})).status_code == 204
    after = await http.post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert after.status_code == 401


async def test_a_disabled_accounts_tokens_are_refused_within_the_check_interval(
        client: Client, store: AccountStore, authenticator: Authenticator):
    await store.add("alice", PASSWORD)
    tokens = (await login(client, "alice")).json()
    alice = client(token=tokens["access_token"])
    minted = client(token=authenticator.mint("alice"))  # `dualplane token --user alice`: no generation
    service = client(token=authenticator.mint("svc-reporter", "orchestrator"))  # a sub without an account
    assert [(await c.get("/jobs")).status_code for c in (alice, minted, service)] == [200, 200, 200]

    await store.set_disabled("alice", True)
    refused = await eventually_refused(lambda: alice.get("/jobs"))
    assert problem_of(refused)["detail"] == "account disabled"
    assert (await minted.get("/jobs")).status_code == 401  # revocation applies to any sub with an account
    assert (await service.get("/jobs")).status_code == 200  # tokens of subs without one keep working
    assert (await client().post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})).status_code == 401

    await store.set_disabled("alice", False)
    fresh = client(token=(await login(client, "alice")).json()["access_token"])
    deadline = time.monotonic() + EVENTUALLY_S
    while (await fresh.get("/jobs")).status_code != 200:  # until the markers say "enabled"
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert (await alice.get("/jobs")).status_code == 401  # enabling again does not bring old tokens back
    assert (await minted.get("/jobs")).status_code == 401


async def test_a_password_reset_revokes_the_tokens_and_the_old_password(client: Client, store: AccountStore,
                                                                          authenticator: Authenticator):
    await store.add("alice", PASSWORD)
    tokens = (await login(client, "alice")).json()
    alice = client(token=tokens["access_token"])
    assert (await alice.get("/jobs")).status_code == 200
    await store.reset_password("alice", "a brand new password")
    refused = await eventually_refused(lambda: alice.get("/jobs"))
    assert problem_of(refused)["detail"] == "token revoked (sign in again)"
    assert (await client().post("/auth/refresh", json={"refresh_token": tokens["refresh_token"]})).status_code == 401
    assert (await login(client, "alice")).status_code == 401
    fresh = await login(client, "alice", "a brand new password")
    assert fresh.status_code == 200
    assert (await client(token=fresh.json()["access_token"]).get("/jobs")).status_code == 200
    assert (await client(token=authenticator.mint("alice")).get("/jobs")).status_code == 401  # generation 0


async def test_failed_logins_are_limited_per_name_and_per_address(app_client: Callable[..., Client],
                                                                  store: AccountStore):
    client = app_client(login_window_s=60.0, login_failures_per_ip=3)  # hashes in a row fit in the window
    await store.add("alice", PASSWORD)
    # successes are no failures
    assert [(await login(client, "alice")).status_code for _ in range(4)] == [200] * 4
    # 3 failures per name: the fourth attempt is refused, right password or not, from any address
    assert [(await login(client, "alice", "wrong", ip=f"10.1.1.{i}")).status_code for i in range(3)] == [401] * 3
    throttled = await login(client, "alice", ip="10.1.1.9")
    assert throttled.status_code == 429 and problem_of(throttled)["title"] == "Too many failed logins"
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    # 3 failures per address, whatever the names; another address is not held back
    names = [f"user{i}" for i in range(3)]
    assert [(await login(client, n, ip="10.3.3.3")).status_code for n in names] == [401] * 3
    assert (await login(client, "someone", ip="10.3.3.3")).status_code == 429
    assert (await login(client, "someone", ip="10.4.4.4")).status_code == 401
    # an IPv6 client counts by its /64
    assert [(await login(client, n, ip=f"2001:db8::{i + 1}")).status_code for i, n in enumerate(names)] == [401] * 3
    assert (await login(client, "someone", ip="2001:db8::ffff")).status_code == 429
    assert (await login(client, "someone", ip="2001:db8:0:1::1")).status_code == 401


async def test_a_burst_of_guesses_is_counted_before_any_hash_and_the_limit_passes(client: Client,
                                                                                  store: AccountStore):
    await store.add("bert", PASSWORD)
    # all 8 are counted (or refused) as they arrive, before the first hash ends: only 3 get checked
    burst = await asyncio.gather(*(login(client, "bert", f"guess {i}", ip=f"10.2.2.{i}") for i in range(8)))
    assert sorted(r.status_code for r in burst) == [401] * 3 + [429] * 5
    deadline = time.monotonic() + 30  # the window is 3 s
    while (answer := await login(client, "bert", ip="10.2.3.1")).status_code == 429:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    assert answer.status_code == 200


async def test_roles_come_from_the_account(client: Client, store: AccountStore, authenticator: Authenticator):
    await store.add("alice", PASSWORD)
    await store.add("root", PASSWORD, role="admin")
    await store.add("reporter", PASSWORD, role="orchestrator")
    bobs = (await client(token=authenticator.mint("bob")).post("/jobs", json=NOOP)).json()["id"]
    alice = client(token=(await login(client, "alice")).json()["access_token"])
    root_login = (await login(client, "root")).json()
    root = client(token=root_login["access_token"])
    assert root_login["role"] == "admin"
    assert problem_of(await alice.get("/jobs", params={"user": "bob"}))["status"] == 403
    assert (await alice.get("/jobs")).json()["jobs"] == []
    assert (await alice.get(f"/jobs/{bobs}")).status_code == 404
    assert [j["id"] for j in (await root.get("/jobs", params={"user": "bob"})).json()["jobs"]] == [bobs]
    assert (await root.get(f"/jobs/{bobs}")).status_code == 200
    assert (await login(client, "reporter")).json()["role"] == "orchestrator"


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str,
            stdin: str = "") -> tuple[int, str, str]:
    """`dualplane ARGS` in this process (in a thread: the commands run their own event loop)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_the_users_commands_manage_accounts_the_api_honours(
        client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("REDIS_URL", settings.redis_url or "")
    monkeypatch.setenv("DUALPLANE_KEY_PREFIX", settings.key_prefix)

    async def cli(*args: str, stdin: str = "") -> tuple[int, str, str]:
        return await asyncio.to_thread(run_cli, monkeypatch, capsys, *args, stdin=stdin)

    assert (await cli("users", "add", "carol", "--password-stdin", stdin=PASSWORD + "\n"))[:2] == (0,
                                                                                                 "added carol (user)\n")
    code, out, _ = await cli("users", "add", "ops", "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 0
    code, _, err = await cli("users", "add", "carol", "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 1 and "exists already" in err
    code, _, err = await cli("users", "add", "short", "--password-stdin", stdin="2short\n")
    assert code == 1 and "8 to 1024 characters" in err
    code, out, _ = await cli("users", "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["NAME", "ROLE", "STATUS", "CREATED", "UPDATED"]
    assert [line.split()[:3] for line in lines[1:]] == [["carol", "user", "active"], ["ops", "admin", "active"]]

    carol = client(token=(await login(client, "carol")).json()["access_token"])
    assert (await carol.get("/jobs")).status_code == 200
    code, out, _ = await cli("users", "disable", "carol")
    assert code == 0 and out.startswith("disabled carol")
    await eventually_refused(lambda: carol.get("/jobs"))
    assert (await cli("users", "list"))[1].splitlines()[1].split()[:3] == ["carol", "user", "disabled"]
    assert (await cli("users", "enable", "carol"))[0] == 0
    assert (await cli("users", "reset-password", "carol", "--password-stdin", stdin="another password\n"))[0] == 0
    assert (await login(client, "carol", "another password")).status_code == 200
    code, _, err = await cli("users", "disable", "nobody")
    assert code == 1 and "no account 'nobody'" in err

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens on port 1
    code, _, err = await cli("users", "list")
    assert code == 1 and "cannot use Redis" in err


async def test_dualplane_login_prints_a_token_for_the_shell(
        settings: Settings, control_plane: ControlPlane, authenticator: Authenticator, store: AccountStore,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    await store.add("carol", PASSWORD)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, plane=control_plane, authenticator=authenticator),
                                           host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done()
            await asyncio.sleep(0.01)
        monkeypatch.setenv("DUALPLANE_URL", f"http://127.0.0.1:{port}")
        code, out, _ = await asyncio.to_thread(run_cli, monkeypatch, capsys, "login", "carol", "--password-stdin",
                                               stdin=PASSWORD + "\n")
        assert code == 0 and (await authenticator.authenticate(out.strip())).user == "carol"
        code, _, err = await asyncio.to_thread(run_cli, monkeypatch, capsys, "login", "carol", "--password-stdin",
                                               stdin="wrong password\n")
        assert code == 1 and err == "error: 401 invalid username or password\n"
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 15)
