"""Planned graphs run end to end on the tiny models: a sample of intents that, together, covers
every part a brief can have (music by arrangement and by MusicGen, vocals, narration, a trained
voice, a trained style, generated video, the visualizer, stills), planned by the control plane's
planner against the live worker and run on a real worker with real Redis and S3.

The only thing the tests add to the plans is per-node options a form may send (what the UI's
"options" carry): short lengths for the random-weight SpeechT5, whose stop token never fires.
"""

from __future__ import annotations

import pytest

from dualplane.control_plane import ControlPlane
from tests.helpers import node, wait_for_job
from tests.test_video_lora import put_images
from tests.test_voice import pcm_wav, voiced

pytestmark = [pytest.mark.ml, pytest.mark.integration]
#: The random-weight SpeechT5 never predicts its stop token: bound its length (as test_voice does).
SPEECHT5_LENGTH = {"minlenratio": 2.0, "maxlenratio": 2.0}


async def plan_and_run(control_plane: ControlPlane, intent, timeout_s: float = 280):
    await control_plane.router.workers(fresh=True)
    plan = await control_plane.planner.plan(intent)
    assert not any(n["kind"] == "unavailable" for n in plan.notes), plan.notes
    job = await wait_for_job(control_plane, (await control_plane.submit(plan.graph, user="alice")).job_id,
                             timeout_s=timeout_s)
    assert job.status == "succeeded", job.model_dump_json()[:3000]
    return plan, job


@pytest.mark.timeout(300)
async def test_a_trained_voice_speaks_a_written_song_over_an_arrangement_with_a_lyric_video(
    control_plane: ControlPlane, worker_factory, upload_models
):
    store = await upload_models("speecht5-tts", "speecht5-hifigan")
    clips = [(await store.put_upload("alice", f"me{i}.wav", pcm_wav(voiced(120 + 30 * i, 1.0, 16000, i), 16000),
                                     "audio/wav"))["key"] for i in range(2)]
    await worker_factory(concurrency=2)
    plan, job = await plan_and_run(control_plane, {
        "prompt": "clone my voice and sing a 10 second song about the sea, with a lyric video",
        "inputs": {"voice_clips": clips}, "options": {"vocals": SPEECHT5_LENGTH, "voice": {"steps": 2}}})
    tasks = {n["id"]: n["task"] for n in plan.graph["nodes"]}
    assert tasks == {"song": "plan_song", "voice": "train_voice", "music": "arrange_music",
                     "vocals": "synthesize_voice", "video": "visualize_audio", "mix": "mix_audio",
                     "final": "mux_media"}
    assert node(job, "vocals").params["voice"] == {"$ref": "voice.output.voice"}
    assert node(job, "vocals").output["kind"] == "speecht5-tts"
    # the mix keeps the whole voice: a spoken line may run a little past the song's end
    assert 10 - 0.05 <= node(job, "final").output["duration_s"] < 11
    assert node(job, "video").output["subtitles"]


@pytest.mark.timeout(300)
async def test_a_lora_is_trained_then_used_by_a_generated_video_and_stills(
    control_plane: ControlPlane, worker_factory, upload_models
):
    store = await upload_models("sd15", "animatediff-motion-adapter")
    images = await put_images(store, 2)
    await worker_factory(concurrency=2)
    plan, job = await plan_and_run(control_plane, {
        "prompt": "train a LoRA on my photos, then a 2-second video of me surfing and 2 stills",
        "inputs": {"images": images}, "options": {"lora": {"steps": 2}}})
    video = node(job, "video")
    assert video.task == "render_video" and video.params["lora"] == {"$ref": "lora.output.lora"}
    assert video.output["frames"] == 2 * video.output["fps"] and video.output["duration_s"] == 2
    stills = [n for n in job.graph.nodes if n.task == "render_video" and n.id.startswith("still")]
    assert len(stills) == 2 and all(s.output["frames"] == 1 and s.output["poster"] for s in stills)
    assert any(n["kind"] == "random_weights" and n["part"] == "video" for n in plan.notes)


@pytest.mark.timeout(300)
async def test_narration_over_a_musicgen_bed_is_ducked_and_mixed_to_the_target_loudness(
    control_plane: ControlPlane, worker_factory, upload_models
):
    await upload_models("musicgen-small")
    await worker_factory(concurrency=2)
    plan, job = await plan_and_run(control_plane, 'a 6 second musicgen jazz bed with a voice-over saying '
                                                  '"Welcome back to the show"')
    assert node(job, "music").task == "generate_music" and node(job, "narration").output["model"] == "piper-joe"
    mix = node(job, "mix").output
    assert mix["ducked_s"] > 0 and abs(mix["loudness_lufs"] - (-14)) <= 1.0
    assert any(n["kind"] == "random_weights" and n["part"] == "music" for n in plan.notes)
