"""Issue 14's creator flows in a real browser (Debian's chromium via Playwright) against a real
control plane, worker, Redis and SeaweedFS: bring your own clips, see why a job failed, keep and
redo work (names, re-run, duplicate, delete, compare), the gallery, live previews, the password
sign-in, and every main page on a phone and through axe-core.

Screenshots of each main page at 1280 px and 375 px (light mode, a few dark) are written to
``test-output/screenshots/``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from axe_playwright_python.async_playwright import Axe

from dualplane.control_plane import ControlPlane
from dualplane.control_plane.auth import Authenticator
from tests import test_ui, test_voice
from tests.test_ui import OUTPUT, field, screenshot, sign_in
from tests.test_voice import pcm_wav, voiced

# the browser fixtures of test_ui and the tiny speech models of test_voice, shared
page = test_ui.page
ui_url = test_ui.ui_url
speech_models = test_voice.speech_models

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHOTS = "screenshots"
PHONE = {"width": 375, "height": 812}
LAPTOP = {"width": 1280, "height": 900}
#: axe-core impacts that fail a page (moderate and minor ones are reported, not failed)
BLOCKING = {"serious", "critical"}


async def check_page(page: Any, name: str, *, dark: bool = False) -> None:
    """The page as a person sees it: no serious accessibility violation (axe-core), a 1280 px
    and a 375 px screenshot, and no horizontal scrolling on the phone."""
    (OUTPUT / SHOTS).mkdir(parents=True, exist_ok=True)
    results = await Axe().run(page)
    blocking = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
                for v in results.response["violations"] if v["impact"] in BLOCKING]
    assert not blocking, f"{name}: {blocking}"
    await screenshot(page, f"{SHOTS}/{name}-1280.png")
    await page.set_viewport_size(PHONE)
    overflow = await page.evaluate("""() => ({width: document.documentElement.scrollWidth, viewport: innerWidth,
        wide: [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > innerWidth + 1
               && getComputedStyle(e).position !== 'fixed' && e.offsetParent !== null)
               .slice(0, 5).map(e => e.tagName + '#' + e.id + '.' + e.className)})""")
    assert overflow["width"] <= overflow["viewport"], f"{name} scrolls sideways at 375 px: {overflow}"
    await screenshot(page, f"{SHOTS}/{name}-375.png")
    if dark:
        await page.emulate_media(color_scheme="dark")
        await screenshot(page, f"{SHOTS}/{name}-375-dark.png")
        await page.set_viewport_size(LAPTOP)
        dark_results = await Axe().run(page)  # the dark palette keeps its contrast
        assert not [v["id"] for v in dark_results.response["violations"] if v["impact"] in BLOCKING], name
        await screenshot(page, f"{SHOTS}/{name}-1280-dark.png")
        await page.emulate_media(color_scheme="light")
    await page.set_viewport_size(LAPTOP)


def clip(name: str, f0: float, seconds: float, seed: int) -> dict[str, Any]:
    """A speech-like WAV as a file the browser can pick."""
    return {"name": name, "mimeType": "audio/wav", "buffer": pcm_wav(voiced(f0, seconds, 16000, seed), 16000)}


PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


async def open_job_page(page: Any) -> str:
    await page.wait_for_url("**/#/jobs/*")
    return page.url.rsplit("/", 1)[1]


async def finished(page: Any, status: str = "succeeded", timeout: int = 90_000) -> None:
    await page.locator(f"#job-status[data-status='{status}']").wait_for(timeout=timeout)


# -- bring your own inputs -----------------------------------------------------------------


@pytest.mark.ml
async def test_upload_clips_train_a_voice_and_speak_with_it(
    page: Any, ui_url: str, authenticator: Authenticator, worker_factory, speech_models, tmp_path: Path,
):
    await worker_factory(model_cache_dir=str(tmp_path / "cache"))
    await sign_in(page, ui_url, authenticator.mint("uma"))
    await page.locator("#generator").select_option("train_voice")
    picker = page.locator("[data-field='clips'] .upload-picker")
    files = picker.locator("input[type=file]")
    # the "object keys, one per line" textarea is gone: a labelled file picker takes its place
    assert await page.get_by_label("Clips (required)").get_attribute("type") == "file"

    # checks before anything is sent: consent first, then the type by the file's first bytes
    await files.set_input_files([clip("a.wav", 120, 1.0, 1)])
    error = picker.locator(".field-error")
    await error.wait_for(state="visible")
    assert "consent" in await error.inner_text()
    await picker.get_by_label("I have the speaker's consent").check()
    await files.set_input_files([{"name": "photo.wav", "mimeType": "audio/wav", "buffer": PNG}])
    await page.wait_for_function("document.querySelector(\"[data-field='clips'] .field-error\").textContent"
                                 ".includes('image file')")
    assert await picker.locator(".picked-item").count() == 0

    # two clips upload with progress, each with a player to hear it
    await files.set_input_files([clip("low voice.wav", 110, 1.2, 1), clip("high.wav", 240, 0.9, 2)])
    await picker.locator(".picked-item[data-state='done']").nth(1).wait_for()
    assert await picker.locator(".picked-item audio[controls]").count() == 2
    assert await error.is_hidden()
    facts = await picker.locator(".picked-item .upload-status").all_inner_texts()
    assert all(re.search(r"\d+(\.\d)? KB", f) and re.search(r"0:01", f) for f in facts), facts
    await field(page, "steps").fill("3")
    await check_page(page, "new-job-upload")
    await page.get_by_role("button", name="Submit job").click()

    await open_job_page(page)
    await finished(page, timeout=120_000)
    job = await page.evaluate("fetch(location.origin + '/jobs/' + location.hash.split('/').pop(), {headers: "
                              "{Authorization: 'Bearer ' + localStorage.getItem('dualplane.token')}}).then(r => r.json())")
    (trained,) = job["graph"]["nodes"]
    assert len(trained["params"]["clips"]) == 2 and all(k.startswith("uploads/uma/") for k in trained["params"]["clips"])
    assert trained["params"]["clips"][0].endswith("/low_voice.wav")  # the name the API accepts

    # the trained voice speaks: one click fills the synthesizer's voice with it
    await page.get_by_role("button", name="Speak with this voice").click()
    await page.wait_for_url("**/#/new")
    assert await page.locator("#generator").input_value() == "synthesize_voice"
    assert await field(page, "voice").input_value() == trained["output"]["voice"]
    await field(page, "text").fill("hello rainy night")
    await page.locator("#params details.advanced summary").click()
    await field(page, "minlenratio").fill("2")
    await field(page, "maxlenratio").fill("2")
    await page.get_by_role("button", name="Submit job").click()
    await open_job_page(page)
    await finished(page, timeout=120_000)

    # the speech: a player with a waveform decoded from the audio (click to seek), a human size
    audio = page.locator("#job-artifacts audio")
    await audio.wait_for()
    wave = page.locator("#job-artifacts canvas.waveform")
    await page.locator("#job-artifacts canvas.waveform[data-state='drawn']").wait_for()
    await audio.evaluate("a => a.readyState >= 1 || new Promise(ok => a.addEventListener('loadedmetadata', ok))")
    box = await wave.bounding_box()
    await page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2)
    seeked = await audio.evaluate("a => a.currentTime / a.duration")
    assert 0.4 < seeked < 0.6
    caption = await page.locator("#job-artifacts figure[data-type='audio/wav'] figcaption").inner_text()
    assert re.search(r"\d+(\.\d)? KB", caption) and re.search(r"\b0:0\d\b", caption), caption
    await check_page(page, "job-finished")

    # the planner takes the same clips (from "add one of your uploads") into the intent's inputs
    await page.get_by_role("link", name="New job", exact=True).click()
    await page.get_by_label("a description (planner)").check()
    await page.locator("#intent").fill("say 'the sea is calm tonight' in my voice")
    existing = page.locator("#intent-clips-existing")
    await existing.locator("option").nth(2).wait_for(state="attached")
    await existing.select_option(index=1)
    await existing.select_option(index=2)
    await page.locator("#intent-clips-slot .picked-item[data-state='done']").nth(1).wait_for()
    await page.get_by_role("button", name="Plan (dry run)").click()
    trainer = page.locator("#preview-notes summary", has_text="train_voice")
    await trainer.wait_for()
    await trainer.click()
    planned = await page.locator("#preview-notes details[open] pre").inner_text()
    assert all(key in planned for key in trained["params"]["clips"])

    # the Uploads view lists both clips (size, duration, consent, a player) and deletes one
    await page.get_by_role("link", name="Uploads", exact=True).click()
    items = page.locator("#uploads-list .upload-item")
    await items.nth(1).wait_for()
    assert await items.count() == 2
    texts = await items.all_inner_texts()
    assert all("consent given" in t and "0:01" in t for t in texts), texts
    await check_page(page, "uploads", dark=True)
    await items.filter(has_text="high.wav").get_by_role("button", name="Delete").click()
    await page.get_by_role("button", name="Delete", exact=True).last.click()  # the confirmation's
    await items.filter(has_text="high.wav").wait_for(state="detached")
    assert await items.count() == 1


async def test_uploads_view_takes_a_dropped_image_and_refuses_what_is_not_accepted(
    page: Any, ui_url: str, authenticator: Authenticator,
):
    await sign_in(page, ui_url, authenticator.mint("vera"))
    await page.get_by_role("link", name="Uploads", exact=True).click()
    await page.locator("#uploads-empty").wait_for(state="visible")
    png = _png(8, 6)
    # a file dropped on the zone (the DataTransfer a drag from the desktop delivers)
    await page.evaluate("""bytes => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], 'cover art.png', {type: 'image/png'}));
        document.querySelector('#uploads-drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
    }""", list(png))
    item = page.locator("#uploads-list .upload-item[data-kind='image']")
    await item.wait_for()
    assert "8×6" in await item.inner_text() and "cover_art.png" in await item.inner_text()
    assert await item.locator("img.thumb").get_attribute("src")
    # a voice clip without consent, and a program: refused before upload, in words
    await page.locator("#uploads-file").set_input_files([clip("v.wav", 150, 0.3, 3),
                                                         {"name": "x.exe", "mimeType": "application/x-msdownload",
                                                          "buffer": b"MZ\x90\0" + b"\0" * 60}])
    error = page.locator("#uploads-error")
    await error.wait_for(state="visible")
    assert "consent" in await error.inner_text() and "x.exe is not one of the accepted" in await error.inner_text()
    assert await page.locator("#uploads-list .upload-item").count() == 1


def _png(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + bytes([200, 80, 40]) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


# -- why, always visible ---------------------------------------------------------------------


async def test_a_dead_lettered_job_says_so_in_its_header(
    page: Any, ui_url: str, authenticator: Authenticator, control_plane: ControlPlane, worker_factory, redis,
):
    await worker_factory()
    token = authenticator.mint("walt")
    async with httpx.AsyncClient(base_url=ui_url, headers={"Authorization": f"Bearer {token}"}) as http:
        # queued where no worker reads, so only the broken message below can touch it
        job = (await http.post("/jobs", json={"nodes": [{"id": "a", "task": "noop", "plane": "python",
                                                         "pool": "gpu"}]})).json()
    poison = orjson.dumps({"job_id": job["id"], "handoff_seq": 1, "graph": {"nodes": [
        {"id": "a", "task": "noop", "plane": "python", "needs": ["a"]}]}})
    await redis.xadd(control_plane.bridge.keys.data_stream("default"), {"m": poison})
    await sign_in(page, ui_url, token)
    await page.goto(f"{ui_url}/#/jobs/{job['id']}")
    await finished(page, "failed")
    header = page.locator("#job-error[data-dead='1']")
    await header.wait_for()
    assert "Dead-lettered" in await header.inner_text() and "dependency cycle" in await header.inner_text()


# -- planner, keep and redo, gallery, compare --------------------------------------------------


async def test_plan_a_song_then_rename_rerun_compare_gallery_duplicate_and_delete(
    page: Any, ui_url: str, authenticator: Authenticator, worker_factory,
):
    await worker_factory()
    await sign_in(page, ui_url, authenticator.mint("xena"))
    await check_page(page, "new-job")
    await page.get_by_label("a description (planner)").check()
    await page.locator("#intent").fill("a 2 second song about rain on the window")
    await page.get_by_role("button", name="Plan (dry run)").click()
    # the song it will write, as text: title, key, tempo, sections with their lyrics
    song = page.locator("#preview-song .song")
    await song.wait_for()
    assert await song.locator(".song-title").inner_text()
    assert re.search(r"[A-G][#b]? (major|minor) · \d+ bpm", await song.locator(".song-facts").inner_text())
    assert await song.locator(".song-section .lyrics:not(.muted)").count() >= 1
    await check_page(page, "planner-preview")
    await page.get_by_label("melody-only (instrumental)").check()  # a change of plan: plan again
    assert await page.get_by_role("button", name="Submit this plan").is_disabled()
    await page.get_by_role("button", name="Plan (dry run)").click()
    await page.locator("#preview-graph .gnode[data-node='song']").wait_for()
    await page.locator("#job-name").fill("Rain demo")
    await page.get_by_role("button", name="Submit this plan").click()

    first = await open_job_page(page)
    await page.locator("#job-name-text", has_text="Rain demo").wait_for()
    await finished(page)
    await page.locator("#job-song .song-section").first.wait_for()  # plan_song's output, as text
    assert await page.locator("#job-song .song-title").inner_text()
    await page.locator("#job-artifacts audio").wait_for()
    assert await page.locator("#job-artifacts figure[data-type='audio/wav'] .facts").inner_text() != ""

    # rename inline (PATCH), then re-run with the same seed: a new job that says where it came from
    await page.get_by_role("button", name="Rename this job").click()
    await page.locator(".rename-input").fill("Rain, take one")
    await page.locator(".rename-input").press("Enter")
    await page.locator("#job-name-text", has_text="Rain, take one").wait_for()
    await page.get_by_role("button", name="Re-run (same seed)").click()
    await page.wait_for_function(f"!location.hash.endsWith('{first}')")
    second = page.url.rsplit("/", 1)[1]
    await page.locator("#job-origin a", has_text=first).wait_for()
    await finished(page)

    async with httpx.AsyncClient(base_url=ui_url, headers={"Authorization": f"Bearer {await _token(page)}"}) as http:
        arts = [{a["name"]: a["sha256"] for a in (await http.get(f"/jobs/{j}/artifacts")).json()["artifacts"]}
                for j in (first, second)]
    assert arts[0]["music.wav"] == arts[1]["music.wav"]  # the same seed made the same audio

    # the jobs list: names, not ids; pick both and compare them side by side
    await page.get_by_role("link", name="Jobs", exact=True).click()
    rows = page.locator("#jobs-table tbody tr")
    await rows.nth(1).wait_for()
    assert "Rain, take one" in await page.locator(f"tr[data-job='{first}'] .job-link").inner_text()
    await page.locator(f"tr[data-job='{first}'] input.pick").check()
    await page.locator(f"tr[data-job='{second}'] input.pick").check()
    await check_page(page, "jobs")
    await page.get_by_role("button", name="Compare the two picked").click()
    await page.locator("#compare-body .compare-side").nth(1).wait_for()
    assert await page.locator("#compare-body audio").count() == 2
    await check_page(page, "compare")

    # the gallery: every output, newest first, by kind
    await page.get_by_role("link", name="Gallery", exact=True).click()
    items = page.locator("#gallery-grid .gallery-item")
    await items.first.wait_for()
    jobs_in_order = await items.evaluate_all("els => els.map(e => e.dataset.job)")
    assert jobs_in_order[0] == second and set(jobs_in_order) == {first, second}
    await check_page(page, "gallery", dark=True)
    await page.locator("#gallery-kind").select_option("video")
    await page.locator("#gallery-empty").wait_for(state="visible")
    await page.locator("#gallery-kind").select_option("audio")
    await items.first.wait_for()
    assert set(await items.evaluate_all("els => els.map(e => e.dataset.kind)")) == {"audio"}
    await items.locator("input.pick").nth(0).check()
    await items.locator("input.pick").nth(1).check()
    await page.get_by_role("button", name="Compare the two picked").click()
    await page.locator("#compare-body .compare-side audio").nth(1).wait_for()

    # duplicate into the form: the planner form gets the intent back
    await page.goto(f"{ui_url}/#/jobs/{first}")
    await finished(page)
    await page.get_by_role("button", name="Duplicate into the form").click()
    await page.wait_for_url("**/#/new")
    assert await page.locator("#intent").input_value() == "a 2 second song about rain on the window"
    assert await page.get_by_label("melody-only (instrumental)").is_checked()

    # re-run with a new seed: compared with the first, the seed is the setting that differs
    await page.goto(f"{ui_url}/#/jobs/{second}")
    await finished(page)
    await page.get_by_role("button", name="Re-run (new seed)").click()
    await page.wait_for_function(f"!location.hash.endsWith('{second}')")
    third = page.url.rsplit("/", 1)[1]
    await finished(page)
    await page.goto(f"{ui_url}/#/compare?a={first}&b={third}")
    differs = page.locator("#compare-body .compare-side[data-side='A'] tr.differs th")
    await differs.first.wait_for()
    assert "Seed" in await differs.all_inner_texts()

    # delete from the job page, then from the list, each after a confirmation
    await page.goto(f"{ui_url}/#/jobs/{second}")
    await finished(page)
    await page.get_by_role("button", name="Delete", exact=True).first.click()
    await page.get_by_role("button", name="Keep it").click()  # changed their mind: nothing happens
    assert "#/jobs/" in page.url
    await page.get_by_role("button", name="Delete", exact=True).first.click()
    await page.locator("#confirm-ok").click()
    await page.wait_for_url("**/#/jobs")
    await page.locator(f"tr[data-job='{first}']").wait_for()
    assert await page.locator(f"tr[data-job='{second}']").count() == 0
    await page.locator(f"tr[data-job='{first}']").get_by_role("button", name="Delete").click()
    await page.locator("#confirm-ok").click()
    await page.locator(f"tr[data-job='{first}']").wait_for(state="detached")
    async with httpx.AsyncClient(base_url=ui_url, headers={"Authorization": f"Bearer {await _token(page)}"}) as http:
        assert (await http.get(f"/jobs/{first}")).status_code == 404  # purged, not hidden


async def _token(page: Any) -> str:
    return await page.evaluate("localStorage.getItem('dualplane.token')")


async def test_planner_then_generator_then_submit_runs_the_generator(
    page: Any, ui_url: str, authenticator: Authenticator, worker_factory,
):
    await worker_factory()
    await sign_in(page, ui_url, authenticator.mint("yuri"))
    await page.get_by_label("a description (planner)").check()
    await page.locator("#intent").fill("a 2 second song about snow")
    # the user's own lyrics, read from a text file into the intent's inputs
    await page.locator("#intent-lyrics-file").set_input_files([{"name": "snow.txt", "mimeType": "text/plain",
                                                                "buffer": b"White on the hill\nquiet and still\n"}])
    await page.wait_for_function("document.querySelector('#intent-lyrics').value.startsWith('White on the hill')")
    await page.get_by_role("button", name="Plan (dry run)").click()
    await page.locator("#preview-graph .gnode[data-node='song']").wait_for()
    assert "White on the hill" in await page.locator("#preview-song .lyrics").first.inner_text()
    await page.get_by_label("a generator", exact=True).check()
    await page.locator("#show-internal").check()
    await page.locator("#generator").select_option("sleep")
    await field(page, "seconds").fill("6")
    await field(page, "steps").fill("24")
    await page.get_by_role("button", name="Submit job").click()
    await open_job_page(page)
    await page.locator("#job-graph .gnode[data-node='sleep']").wait_for()
    assert await page.locator("#job-graph .gnode").count() == 1  # the generator ran, not the plan
    # a running node: its progress rate gives an ETA in words; the progress text is a live region
    eta = page.locator("#job-nodes .node-eta")
    await eta.wait_for()
    assert re.fullmatch(r" · (about \d+ s left|almost done)", await eta.inner_text())
    assert await page.locator("#job-progress-text").get_attribute("role") == "status"
    await check_page(page, "job-running")
    await finished(page)
    assert await eta.count() == 0


# -- live previews ---------------------------------------------------------------------------


@pytest.mark.ml
@pytest.mark.parametrize("uploaded_models", [("sd15", "animatediff-motion-adapter")], indirect=True)
async def test_a_live_preview_frame_appears_during_a_video_render(
    page: Any, ui_url: str, authenticator: Authenticator, worker_factory, uploaded_models, tmp_path: Path,
):
    await worker_factory(model_cache_dir=str(tmp_path / "cache"))
    await sign_in(page, ui_url, authenticator.mint("zoe"))
    await page.locator("#generator").select_option("render_video")
    await field(page, "prompt").fill("rain on a window at night")
    await field(page, "steps").fill("3")
    await page.get_by_role("button", name="Submit job").click()
    await open_job_page(page)
    frame = page.locator("#job-previews figure.live-preview[data-node='render_video'] img")
    await frame.wait_for(timeout=90_000)
    assert (await frame.get_attribute("src")).startswith("data:image/jpeg;base64,")
    assert await frame.evaluate("img => img.complete ? img.naturalWidth : new Promise(ok => img.onload = () => "
                                "ok(img.naturalWidth))") > 0
    assert "Latest preview frame of render_video" in await frame.get_attribute("alt")
    await screenshot(page, f"{SHOTS}/job-live-preview-1280.png")
    await finished(page, timeout=120_000)
    # the video plays with its poster; the poster is not shown twice
    video = page.locator("#job-artifacts video")
    await video.wait_for()
    assert (await video.get_attribute("poster") or "").split("?")[0].endswith("/poster.png")
    assert await page.locator("#job-artifacts img").count() == 0


# -- accounts --------------------------------------------------------------------------------


async def test_password_sign_in_refreshes_an_expired_access_token(
    page: Any, ui_url: str, authenticator: Authenticator, control_plane: ControlPlane, settings,
):
    from dualplane.control_plane.accounts import AccountStore

    store = AccountStore(control_plane.bridge, refresh_ttl_s=settings.refresh_token_ttl_s)
    await store.add("hana", "a long enough password")
    await page.goto(ui_url)
    await page.locator("#login-user").wait_for()
    await check_page(page, "sign-in", dark=True)
    await page.locator("#login-user").fill("hana")
    await page.locator("#login-password").fill("not it")
    await page.get_by_role("button", name="Sign in", exact=True).click()
    await page.locator("#login-error").wait_for(state="visible")
    assert "Wrong user name or password" in await page.locator("#login-error").inner_text()
    await page.locator("#login-password").fill("a long enough password")
    await page.get_by_role("button", name="Sign in", exact=True).click()
    await page.locator("html[data-ready='1']").wait_for()
    assert "hana" in await page.locator("#who").inner_text()
    refresh = await page.evaluate("localStorage.getItem('dualplane.refresh')")
    assert refresh

    # the access token runs out: the next request gets a 401, the page refreshes and goes on
    expired = authenticator.mint("hana", ttl_s=-3600)
    await page.evaluate("t => localStorage.setItem('dualplane.token', t)", expired)
    await page.get_by_role("link", name="Jobs", exact=True).click()
    await page.locator("#jobs-empty").wait_for(state="visible")
    assert await _token(page) not in (expired, None)
    assert await page.evaluate("localStorage.getItem('dualplane.refresh')") not in (refresh, None)
    assert "hana" in await page.locator("#who").inner_text()
