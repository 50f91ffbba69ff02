"""The web UI in a real browser: Debian's chromium driven by Playwright (no browser download),
against a real control plane served by uvicorn, a real worker, Redis and SeaweedFS.

Screenshots of the new-job and job views go to ``test-output/``; the page load time is
measured and printed (not asserted).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import playwright.async_api as playwright_api  # a dev dependency: missing is an error, not a skip
import pytest
import uvicorn

from dualplane.common.settings import Settings
from dualplane.control_plane import ControlPlane, create_app
from dualplane.control_plane.auth import Authenticator
from dualplane.devstack.services import LOOPBACK, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OUTPUT = Path(__file__).resolve().parents[1] / "test-output"
#: Playwright's default timeout for each wait in these tests (ms).
STEP_MS = 20_000

if not Path(CHROMIUM).exists():  # fail loudly: a skipped browser test would hide a broken UI
    pytest.fail(f"{CHROMIUM} is missing: `make deps` installs Debian's chromium", pytrace=False)


@pytest.fixture
async def ui_url(settings: Settings, control_plane: ControlPlane, authenticator: Authenticator
                 ) -> AsyncIterator[str]:
    """The app (API + UI) served by uvicorn on a free port, on the test's loop."""
    port = free_port()
    app = create_app(settings, plane=control_plane, authenticator=authenticator)
    server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=port, ws="websockets-sansio",
                                           ws_per_message_deflate=False, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


@pytest.fixture
async def page(ui_url: str) -> AsyncIterator[Any]:
    """A fresh browser page (own context: empty localStorage) at the UI."""
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(STEP_MS)
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.ui_errors = errors  # type: ignore[attr-defined]
        try:
            yield page
        finally:
            await context.close()
            await browser.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


async def sign_in(page: Any, url: str, token: str) -> None:
    await page.goto(url)
    await page.locator("#token").fill(token)
    await page.get_by_role("button", name="Sign in with the token").click()
    await page.locator("html[data-ready='1']").wait_for()


def field(page: Any, name: str) -> Any:
    """The input of one generated option field."""
    return page.locator(f"#params [data-field='{name}']").locator("input, select, textarea").first


async def screenshot(page: Any, name: str) -> None:
    await page.evaluate("window.scrollTo(0, 0)")  # the sticky header is drawn once, at the top
    await page.screenshot(path=str(OUTPUT / name), full_page=True)


async def measure_load(page: Any) -> dict[str, float]:
    """Reload (signed in) and read the navigation timing and the catalog-rendered mark."""
    started = time.perf_counter()
    await page.reload()
    await page.locator("html[data-ready='1']").wait_for()
    wall_ms = (time.perf_counter() - started) * 1000
    timing = await page.evaluate("""() => {
        const nav = performance.getEntriesByType('navigation')[0];
        const mark = performance.getEntriesByName('dualplane:tasks-rendered')[0];
        return {dom_content_loaded_ms: nav.domContentLoadedEventEnd, load_ms: nav.loadEventEnd,
                tasks_rendered_ms: mark ? mark.startTime : -1};
    }""")
    return {**timing, "wall_ms": wall_ms}


@pytest.mark.ml
async def test_generate_music_in_the_background_live_with_player_download_and_preferences(
    page: Any, ui_url: str, authenticator: Authenticator, worker_factory, uploaded_models, tmp_path: Path,
):
    await worker_factory(model_cache_dir=str(tmp_path / "cache"))
    await sign_in(page, ui_url, authenticator.mint("alice", "user"))
    assert "alice" in await page.locator("#who").inner_text()

    timing = await measure_load(page)
    print(f"\nUI page load: DOMContentLoaded {timing['dom_content_loaded_ms']:.0f} ms, task list rendered "
          f"{timing['tasks_rendered_ms']:.0f} ms after navigation start (reload to ready: {timing['wall_ms']:.0f} ms)")

    loads: list[str] = []
    page.on("load", lambda _: loads.append(page.url))
    await page.evaluate("window.__marker = 'same-document'")

    # generators, grouped by what they make, with human titles; test tasks only when asked for
    options = await page.locator("#generator option").evaluate_all("els => els.map(e => e.value)")
    assert {"arrange_music", "generate_music", "render_video", "visualize_audio", "plan_song"} <= set(options)
    assert not {"sleep", "checksum", "noop", "fail", "flaky", "emit", "collect", "get_capabilities"} & set(options)
    groups = await page.locator("#generator optgroup").evaluate_all("els => els.map(e => e.label)")
    assert groups[:3] == ["Music", "Voice", "Video"]
    assert "MusicGen" in await page.locator("#generator option[value='generate_music']").inner_text()
    await page.locator("#show-internal").check()
    options = await page.locator("#generator option").evaluate_all("els => els.map(e => e.value)")
    assert {"sleep", "checksum"} <= set(options)
    await page.locator("#show-internal").uncheck()

    await page.locator("#generator").select_option("generate_music")
    assert "MusicGen" in await page.locator("#generator-help").inner_text()
    # the form comes from the params schema: defaults, limits, descriptions, registry names
    duration = field(page, "duration_s")
    assert await duration.input_value() == "8"
    assert await duration.get_attribute("max") == "600"
    assert "Length of the audio" in await page.locator("[data-field='duration_s'] .help").inner_text()
    model_options = await field(page, "model").locator("option").evaluate_all("els => els.map(e => e.value)")
    assert "musicgen-small" in model_options and "sd15" in model_options

    await field(page, "prompt").fill("lo fi beat with piano")
    await field(page, "seed").fill("1")

    # an invalid option: the API's 422 lands next to the field, nothing is submitted
    await duration.fill("9999")
    await page.get_by_role("button", name="Submit job").click()
    error = page.locator("[data-field='duration_s'] .field-error")
    await error.wait_for(state="visible")
    assert "600" in await error.inner_text()
    assert await duration.get_attribute("aria-invalid") == "true"
    assert "#/jobs/" not in page.url
    OUTPUT.mkdir(exist_ok=True)
    await screenshot(page, "ui-new-job-invalid-option.png")

    await duration.fill("0.5")  # the changed option
    assert await error.is_hidden()  # editing the field clears its error
    assert await page.locator("input[name=run][value=background]").is_checked()
    await screenshot(page, "ui-new-job.png")
    await page.get_by_role("button", name="Submit job").click()

    # background: the job view follows the job live over the WebSocket
    await page.wait_for_url("**/#/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    await page.locator("#job-graph .gnode[data-node='generate_music']").wait_for()
    await page.locator("#job-status[data-status='succeeded']").wait_for(timeout=90_000)
    assert await page.locator("#job-graph .gnode[data-node='generate_music']").get_attribute("data-status") \
        == "succeeded"
    log = await page.locator("#job-log li").all_inner_texts()
    assert any("running" in line for line in log) and any("succeeded" in line for line in log)
    # the seconds of music made so far, as the generator reported them (the last report: all of it)
    assert any(re.search(r"data: audio 0\.5 s of 0\.5 s$", line) for line in log), log
    assert await page.evaluate("window.__marker") == "same-document" and not loads  # no reload

    # the audio artifact: a player with controls, and a download link with the object's bytes
    audio = page.locator("#job-artifacts audio")
    await audio.wait_for()
    assert await audio.get_attribute("controls") is not None
    seconds = await audio.evaluate("""a => a.readyState >= 1 ? a.duration : new Promise((ok, no) => {
        a.addEventListener('loadedmetadata', () => ok(a.duration)); a.addEventListener('error', () => no('error'));
        a.load(); })""")
    assert abs(seconds - 0.5) < 0.05
    assert await page.locator("#job-artifacts audio").count() == 1  # one player for the WAV + Opus pair
    link = page.locator("#job-artifacts a.download[download='music.wav']")
    href = await link.get_attribute("href")
    key = await page.locator("#job-artifacts figure[data-type='audio/wav']").get_attribute("data-key")
    assert key == f"jobs/{job_id}/generate_music/music.wav"
    async with httpx.AsyncClient() as http:
        downloaded = (await http.get(href)).content
    assert downloaded == await uploaded_models.get(key) and downloaded[:4] == b"RIFF"
    await screenshot(page, "ui-job.png")
    await page.set_viewport_size({"width": 390, "height": 844})  # a phone
    await screenshot(page, "ui-job-phone.png")
    await page.set_viewport_size({"width": 1280, "height": 900})

    # jobs list: live status and a link to the job view
    await page.get_by_role("link", name="Jobs", exact=True).click()
    row = page.locator(f"#jobs-table tr[data-job='{job_id}']")
    await row.wait_for()
    assert await row.get_attribute("data-status") == "succeeded"
    await page.locator("#filter-status").select_option("failed")
    await row.wait_for(state="detached")
    await page.locator("#filter-status").select_option("")
    await row.locator("a").click()
    await page.locator("#job-status[data-status='succeeded']").wait_for()
    assert await page.evaluate("window.__marker") == "same-document" and not loads

    # preferences: saved on submission, restored after a reload
    await page.goto(f"{ui_url}/#/new")
    await page.reload()
    await page.locator("html[data-ready='1']").wait_for()
    assert await page.locator("#generator").input_value() == "generate_music"
    assert await field(page, "duration_s").input_value() == "0.5"
    assert await field(page, "prompt").input_value() == "lo fi beat with piano"


async def test_live_updates_survive_a_dropped_socket_and_cancel_works(
    page: Any, ui_url: str, authenticator: Authenticator, worker_factory,
):
    await worker_factory()
    token = authenticator.mint("bob", "user")
    await sign_in(page, ui_url, token)
    await page.locator("#show-internal").check()
    await page.locator("#generator").select_option("sleep")
    await field(page, "seconds").fill("2")
    await field(page, "steps").fill("8")
    await page.get_by_role("button", name="Submit job").click()
    await page.wait_for_url("**/#/jobs/*")
    await page.locator("#job-graph .gnode[data-status='running']").wait_for()
    # a running node shows its progress bar moving
    await page.wait_for_function("document.querySelector('#job-nodes progress').value > 0")
    await page.evaluate("window.dualplane.live.drop()")  # the page reconnects and resumes with since
    await page.locator("#job-status[data-status='succeeded']").wait_for()
    seqs = await page.locator("#job-log li").evaluate_all("els => els.map(e => Number(e.dataset.seq))")
    assert seqs == sorted(set(seqs)), "an event shown twice or out of order after the reconnect"
    assert await page.locator("#live-state").get_attribute("data-state") == "live"

    # cancel a long one from the job view
    await page.goto(f"{ui_url}/#/new")
    await field(page, "seconds").fill("60")
    await field(page, "steps").fill("600")
    await page.get_by_role("button", name="Submit job").click()
    await page.wait_for_url("**/#/jobs/*")
    await page.locator("#job-graph .gnode[data-status='running']").wait_for()
    await page.get_by_role("button", name="Cancel").click()
    await page.locator("#job-status[data-status='cancelled']").wait_for()

    # another user's job is not visible
    async with httpx.AsyncClient(base_url=ui_url,
                                 headers={"Authorization": f"Bearer {authenticator.mint('carol')}"}) as http:
        carol_job = (await http.post("/jobs", json={"nodes": [{"id": "n", "task": "noop", "plane": "python"}]})).json()
    await page.goto(f"{ui_url}/#/jobs/{carol_job['id']}")
    await page.locator("#job-error").wait_for(state="visible")
    assert "not yours" in await page.locator("#job-error").inner_text()
    await page.get_by_role("link", name="Jobs", exact=True).click()
    await page.locator("#jobs-table tbody tr").first.wait_for()
    assert await page.locator(f"#jobs-table tr[data-job='{carol_job['id']}']").count() == 0


@pytest.mark.ml
async def test_intent_is_planned_and_shown_before_a_synchronous_run(
    page: Any, ui_url: str, authenticator: Authenticator, worker_factory, uploaded_models, tmp_path: Path,
):
    await worker_factory(model_cache_dir=str(tmp_path / "cache"))
    await sign_in(page, ui_url, authenticator.mint("dana"))
    await page.get_by_label("a description (planner)").check()
    await page.locator("#intent").fill("a 1 second song about rain")
    await page.get_by_label("melody-only (instrumental)").check()
    assert await page.get_by_role("button", name="Submit this plan").is_disabled()
    await page.get_by_role("button", name="Plan (dry run)").click()
    await page.locator("#preview-graph .gnode[data-node='song']").wait_for()
    assert await page.locator("#preview-graph .gnode").count() == 2
    assert await page.locator("#preview-graph .edge[data-from='song'][data-to='music']").count() == 1
    assert "melody-only" in await page.locator("#preview-notes").text_content()  # the node params
    await page.get_by_label("synchronously, wait up to").check()
    await page.get_by_role("button", name="Submit this plan").click()
    result = page.locator("#sync-result")
    await result.locator(".badge.s-succeeded").wait_for(timeout=90_000)
    assert await result.locator("audio[controls]").count() == 1
    assert "#/jobs/" not in page.url
    # an empty intent is an error next to the intent box
    await page.locator("#intent").fill("")
    await page.get_by_role("button", name="Plan (dry run)").click()
    await page.locator("#intent-error").wait_for(state="visible")


async def test_a_failed_job_says_which_node_failed_and_why(
    page: Any, ui_url: str, authenticator: Authenticator, worker_factory,
):
    await worker_factory()
    token = authenticator.mint("erin")
    async with httpx.AsyncClient(base_url=ui_url, headers={"Authorization": f"Bearer {token}"}) as http:
        job = (await http.post("/jobs", json={"nodes": [
            {"id": "boom", "task": "fail", "plane": "python", "params": {"message": "the speaker blew up"}},
            {"id": "after", "task": "noop", "plane": "python", "needs": ["boom"]}]})).json()
    await sign_in(page, ui_url, token)
    await page.goto(f"{ui_url}/#/jobs/{job['id']}")
    await page.locator("#job-status[data-status='failed']").wait_for()
    why = page.locator("#job-nodes tr[data-node='boom'] .node-why")
    await why.wait_for()
    assert await why.inner_text() == "ValueError: the speaker blew up"
    header = await page.locator("#job-error").inner_text()
    assert "boom" in header and "the speaker blew up" in header
    skipped = page.locator("#job-nodes tr[data-node='after'] .node-why")
    await skipped.wait_for()
    assert await skipped.inner_text()  # the skipped node says why it was skipped
    await screenshot(page, "ui-job-failed.png")


async def test_the_api_docs_load_with_the_network_blocked(page: Any, ui_url: str):
    outside: list[str] = []

    async def only_this_host(route):
        if route.request.url.startswith(ui_url):
            await route.continue_()
        else:  # a CDN, or anything else off this machine
            outside.append(route.request.url)
            await route.abort()

    await page.route("**/*", only_this_host)
    await page.goto(f"{ui_url}/docs")
    await page.locator(".swagger-ui .info .title").wait_for()
    assert "dualplane control plane" in await page.locator(".swagger-ui .info .title").inner_text()
    await page.locator(".opblock-summary-path[data-path='/compose']").first.wait_for()
    await screenshot(page, "ui-docs.png")
    await page.goto(f"{ui_url}/redoc")
    await page.locator("h1", has_text="dualplane control plane").wait_for()
    # ReDoc's "API docs by Redocly" badge asks its CDN for a logo (blocked here: the page works
    # without it); nothing else may leave the host
    assert [u for u in outside if u != "https://cdn.redoc.ly/redoc/logo-mini.svg"] == []


async def test_every_generators_labels_are_human_phrases_with_units(page: Any, ui_url: str,
                                                                   authenticator: Authenticator):
    await sign_in(page, ui_url, authenticator.mint("gina"))
    generators = await page.locator("#generator option").evaluate_all("els => els.map(e => e.value)")
    assert len(generators) >= 8
    machine_words = re.compile(r"_|\b(S|Db|Lufs|Hz|Minlenratio|Maxlenratio|Num)\b")
    for name in generators:
        await page.locator("#generator").select_option(name)
        labels = await page.locator("#params label").evaluate_all("els => els.map(e => e.textContent)")
        assert labels, name
        for label in labels:
            assert not machine_words.search(label), (name, label)
        seed = page.locator("#params input[name='seed']")
        if await seed.count():
            assert (await seed.get_attribute("max") or "0") != "9223372036854776000", name
            assert await seed.get_attribute("placeholder") == "random"
    await page.locator("#generator").select_option("synthesize_voice")
    # the SpeechT5 knobs are advanced options: in the form, collapsed until asked for
    advanced = page.locator("#params details.advanced")
    assert not await advanced.get_attribute("open")
    assert await page.locator("[data-field='minlenratio']").is_hidden()
    assert "Minimum length ratio" in await advanced.text_content()
    await advanced.locator("summary").click()
    assert await page.locator("[data-field='minlenratio']").is_visible()
    assert await field(page, "text").is_visible()  # the main option is never hidden
    await page.locator("#generator").select_option("generate_music")
    assert "Duration (seconds)" in await page.locator("#params").inner_text()


async def test_switching_to_the_planner_and_back_leaves_submit_usable(
    page: Any, ui_url: str, authenticator: Authenticator,
):
    await sign_in(page, ui_url, authenticator.mint("frank"))
    assert await page.get_by_role("button", name="Submit job").is_enabled()
    await page.get_by_label("a description (planner)").check()
    assert await page.get_by_role("button", name="Submit this plan").is_disabled()  # nothing planned yet
    await page.get_by_label("a generator", exact=True).check()
    assert await page.get_by_role("button", name="Submit job").is_enabled()


async def test_a_bad_token_is_refused_next_to_the_field(page: Any, ui_url: str):
    await page.goto(ui_url)
    await page.locator("#token").fill("not-a-jwt")
    await page.get_by_role("button", name="Sign in with the token").click()
    assert "not a JWT" in await page.locator("#token-error").inner_text()
    forged = Authenticator(algorithm="HS256", secret="another-secret-of-at-least-32-bytes").mint("eve")
    await page.locator("#token").fill(forged)
    await page.get_by_role("button", name="Sign in with the token").click()
    await page.locator("#token-error").wait_for(state="visible")
    assert "Unauthorized" in await page.locator("#token-error").inner_text()
    assert await page.evaluate("localStorage.getItem('dualplane.token')") is None
