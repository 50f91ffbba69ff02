"""Long media on the tiny models, run by a real worker: a 60 s video is 60 s of frames that never
repeat, and a 90 s track is continued past the model's window with joins that cannot be told
from the rest of the audio."""

from __future__ import annotations

import hashlib
import io
import time
import wave
from pathlib import Path

import pytest

pytest.importorskip("torch")

from dualplane.control_plane import ControlPlane
from tests.helpers import node, wait_for_job

# long renders on a shared 2-core machine: past the suite's 120 s default when it is busy
pytestmark = [pytest.mark.ml, pytest.mark.timeout(360)]

#: Frames in a run that must not appear twice in the video.
RUN = 4
#: Window of the tiny MusicGen in the test registry: 90 s then needs 6 windows and 5 joins.
TEST_WINDOW_S = 20


def registry(tmp_path: Path, limits: dict[str, dict[str, float]]) -> str:
    """A model registry like the packaged one (tiny models under ``models/<name>/``), with these limits."""
    kinds = {"musicgen-small": "musicgen", "sd15": "sd15", "animatediff-motion-adapter": "animatediff-motion-adapter"}
    lines = []
    for name, kind in kinds.items():
        lines += [f"[models.{name}]", f'kind = "{kind}"', f'source = "s3:models/{name}"']
        if name in limits:
            lines += [f"[models.{name}.limits]", *(f"{k} = {v}" for k, v in limits[name].items())]
    path = tmp_path / "models.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# -- video ------------------------------------------------------------------------------------


def repeated_run(frames, run: int = RUN) -> tuple[int, int] | None:
    """Offsets (i, j) of two runs of ``run`` consecutive frames that are the same (frames hashed
    after quantising away H.264's noise), or None."""
    import numpy as np

    hashes = [hashlib.sha1((np.asarray(f, dtype=np.int16) // 16).tobytes()).hexdigest() for f in frames]
    seen: dict[tuple[str, ...], int] = {}
    for i in range(len(hashes) - run + 1):
        key = tuple(hashes[i:i + run])
        if key in seen:
            return seen[key], i
        seen[key] = i
    return None


def decode_mp4(data: bytes, tmp_path: Path):
    import imageio_ffmpeg
    import numpy as np

    path = tmp_path / "video.mp4"
    path.write_bytes(data)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = np.stack([np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader])
    return meta, frames, imageio_ffmpeg.count_frames_and_secs(str(path))


async def test_a_60_s_video_is_60_s_of_frames_that_never_repeat(
    control_plane: ControlPlane, worker_factory, upload_models, tmp_path: Path
):
    import numpy as np
    from PIL import Image

    store = await upload_models("sd15", "animatediff-motion-adapter")
    await worker_factory(model_cache_dir=str(tmp_path / "cache"))
    fps, duration = 8, 60.0  # 480 frames, the adapter sees 16 at once (packaged limits)
    graph = {"nodes": [{"id": "video", "task": "render_video", "plane": "python", "params": {
        "prompt": "a cat with a dog", "seed": 11, "duration_s": duration, "fps": fps, "width": 32, "height": 32,
        "steps": 1, "guidance_scale": 1.0}}]}
    started = time.perf_counter()
    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id, timeout_s=600)
    took = time.perf_counter() - started
    assert job.status == "succeeded", node(job, "video").error
    out = node(job, "video").output

    meta, frames, (counted, seconds) = decode_mp4(await store.get(out["video"]), tmp_path)
    print(f"\n60 s video: {len(frames)} frames at {fps} fps, {out['segments']} windows, "
          f"{out['steps_per_s']} steps/s, job {took:.1f} s")
    assert (out["format"], out["codec"], out["frames"], out["duration_s"]) == ("mp4", "h264", 480, 60.0)
    assert (out["width"], out["height"], out["context_frames"]) == (32, 32, 16)
    assert out["segments"] == (480 - 16) // 4 + 1  # FreeNoise windows of 16, stride 4
    assert meta["codec"].startswith("h264") and meta["fps"] == fps and tuple(meta["size"]) == (32, 32)
    assert len(frames) == counted == round(duration * fps)
    assert seconds == pytest.approx(duration, abs=1 / fps)
    assert frames[0].std() > 1.0, "the first frame is blank"
    assert repeated_run(frames) is None, "a run of frames repeats"
    # the check finds what it is for: the same frames looped
    assert repeated_run(np.concatenate([frames[:40], frames[:40]])) == (0, 40)

    # the poster is the first frame (H.264 at 32x32 blurs noise-like frames: nearest, not equal)
    poster = np.asarray(Image.open(io.BytesIO(await store.get(out["poster"]))), dtype=np.int16)
    assert np.argmin([np.abs(poster - f).mean() for f in frames[:16].astype(np.int16)]) == 0

    # the warm pipeline got its own blocks back: a short render after the long one works
    short = {"nodes": [{"id": "video", "task": "render_video", "plane": "python", "params": {
        "prompt": "a cat", "seed": 11, "num_frames": 4, "fps": 4, "width": 32, "height": 32, "steps": 1}}]}
    job = await wait_for_job(control_plane, (await control_plane.submit(short)).job_id, timeout_s=120)
    assert job.status == "succeeded", node(job, "video").error
    assert (node(job, "video").output["frames"], node(job, "video").output["segments"]) == (4, 1)


async def test_a_lora_applies_to_a_long_render_and_leaves_the_warm_pipeline_as_it_was(
    control_plane: ControlPlane, worker_factory, upload_models, tmp_path: Path
):
    import numpy as np
    from PIL import Image

    from tests.test_video_lora import put_images

    store = await upload_models("sd15", "animatediff-motion-adapter")
    await worker_factory(model_cache_dir=str(tmp_path / "cache"))
    images = await put_images(store)
    render = {"prompt": "a cat with a dog", "seed": 7, "num_frames": 24, "fps": 8, "steps": 1,
              "width": 32, "height": 32}  # 24 > the adapter's 16: FreeNoise (+ split inference)

    def video(node_id: str, needs: list[str], **extra) -> dict:
        return {"id": node_id, "task": "render_video", "plane": "python", "needs": needs,
                "params": {**render, **extra}}

    graph = {"nodes": [
        {"id": "lora", "task": "train_lora", "plane": "python",
         "params": {"images": images, "instance_prompt": "a cat", "steps": 4, "learning_rate": 0.05, "seed": 1}},
        video("plain", []),
        video("styled", ["lora", "plain"], lora={"$ref": "lora.output.lora"}),
        video("after", ["styled"]),
    ]}
    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id, timeout_s=300)
    assert job.status == "succeeded", [(n.id, n.error) for n in job.graph.nodes if n.error]
    assert all(node(job, n).output["segments"] == 3 for n in ("plain", "styled", "after"))

    async def frames(node_id: str):
        return decode_mp4(await store.get(node(job, node_id).output["video"]), tmp_path)[1].astype(np.int16)

    plain, styled, after = [await frames(n) for n in ("plain", "styled", "after")]
    assert len(plain) == len(styled) == 24
    assert np.abs(styled - plain).max() > 0  # same seed and prompt: the LoRA made the difference
    assert (after == plain).all()  # and neither it nor FreeNoise stayed in the warm pipeline
    poster = np.asarray(Image.open(io.BytesIO(await store.get(node(job, "plain").output["poster"]))))
    assert poster.shape == (32, 32, 3)


async def test_video_bounds_come_from_the_registry_limits(
    control_plane: ControlPlane, worker_factory, upload_models, tmp_path: Path
):
    await upload_models("sd15", "animatediff-motion-adapter")
    limits = {"sd15": {"max_width": 48, "max_height": 48},
              "animatediff-motion-adapter": {"max_frames": 20, "context_frames": 16}}
    await worker_factory(model_cache_dir=str(tmp_path / "cache"), models_config=registry(tmp_path, limits))

    def graph(**params) -> dict:
        return {"nodes": [{"id": "video", "task": "render_video", "plane": "python",
                           "params": {"prompt": "a cat", "seed": 1, "steps": 1, **params}}]}

    for params, message in (({"duration_s": 6, "fps": 4}, "max_frames=20"),
                            ({"num_frames": 4, "width": 64}, "max_width=48")):
        job = await wait_for_job(control_plane, (await control_plane.submit(graph(**params))).job_id, timeout_s=60)
        assert job.status == "failed" and message in node(job, "video").error.message, node(job, "video").error


# -- music ------------------------------------------------------------------------------------


def read_wav(data: bytes):
    import numpy as np

    with wave.open(io.BytesIO(data)) as wav:
        rate, channels, n = wav.getframerate(), wav.getnchannels(), wav.getnframes()
        pcm = np.frombuffer(wav.readframes(n), dtype="<i2").reshape(n, channels)
    return rate, pcm.mean(axis=1) / 32767.0


def window_stats(x, size: int):
    """(max |sample-to-sample step|, RMS) of each ``size``-sample window of ``x``."""
    import numpy as np

    n = len(x) // size
    tiles = x[:n * size].reshape(n, size)
    steps = np.abs(np.diff(x[:n * size], prepend=x[0])).reshape(n, size)
    return steps.max(axis=1), np.sqrt((tiles**2).mean(axis=1))


class Seams:
    """What a join may look like, learnt from the windows of a track away from its joins: its
    10 ms windows' largest step at most 1.25 x the 99th percentile elsewhere, their RMS within
    [0.8 x p1, 1.25 x p99] of the RMS elsewhere. A join spans its crossfade, [j, j + overlap),
    plus 20 ms either side."""

    def __init__(self, x, rate: int, joins_s: list[float], overlap_s: float) -> None:
        import numpy as np

        self.rate, self.size, self.overlap_s = rate, round(0.010 * rate), overlap_s
        steps, rms = window_stats(x, self.size)
        far = np.ones(len(steps), dtype=bool)
        for j in joins_s:
            far[self.span(j)] = False
        self.step_p99 = float(np.percentile(steps[far], 99))
        self.rms_p1, self.rms_p99 = float(np.percentile(rms[far], 1)), float(np.percentile(rms[far], 99))

    def span(self, j: float) -> slice:
        return slice(max(0, int(j * self.rate) // self.size - 2), int((j + self.overlap_s) * self.rate) // self.size + 2)

    def at(self, x, j: float) -> tuple[float, float, float]:
        """(largest step, lowest RMS, highest RMS) of the windows of the join at ``j``."""
        steps, rms = window_stats(x, self.size)
        span = self.span(j)
        return float(steps[span].max()), float(rms[span].min()), float(rms[span].max())

    def seamless(self, x, j: float) -> bool:
        step, low, high = self.at(x, j)
        return step <= 1.25 * self.step_p99 and 0.8 * self.rms_p1 <= low and high <= 1.25 * self.rms_p99


async def test_90_s_of_music_continues_past_the_window_without_seams(
    control_plane: ControlPlane, worker_factory, upload_models, tmp_path: Path
):
    store = await upload_models("musicgen-small")
    await worker_factory(model_cache_dir=str(tmp_path / "cache"),
                         models_config=registry(tmp_path, {"musicgen-small": {"window_s": TEST_WINDOW_S}}))
    params = {"prompt": "lo fi hip hop beat", "duration_s": 90.0, "seed": 5, "continuation_overlap_s": 5.0}
    graph = {"nodes": [{"id": "music", "task": "generate_music", "plane": "python", "params": params}]}
    started = time.perf_counter()
    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id, timeout_s=600)
    took = time.perf_counter() - started
    assert job.status == "succeeded", node(job, "music").error
    out = node(job, "music").output

    rate, x = read_wav(await store.get(out["audio"]))
    assert (out["format"], out["compressed_format"], out["sample_rate"]) == ("wav", "opus", rate)
    assert len(x) == round(90.0 * rate) and out["duration_s"] == 90.0
    assert out["windows"] == 6 and len(out["joins_s"]) == 5  # 20 s, then 15 s more per window
    assert out["joins_s"] == pytest.approx([15.0, 30.0, 45.0, 60.0, 75.0], abs=0.05)
    assert (await store.get(out["audio_compressed"]))[:4] == b"OggS"

    seams = Seams(x, rate, out["joins_s"], 5.0)
    print(f"\n90 s track at {rate} Hz: {out['windows']} windows, joins at {out['joins_s']} s, "
          f"{out['tokens_per_s']} tokens/s, job {took:.1f} s")
    print(f"away from joins: 10 ms max |step| p99 {seams.step_p99:.4f}, RMS p1 {seams.rms_p1:.4f} p99 {seams.rms_p99:.4f}")
    for j in out["joins_s"]:
        step, low, high = seams.at(x, j)
        print(f"join at {j:5.1f} s: max |step| {step:.4f}, RMS {low:.4f} to {high:.4f}")
        assert seams.seamless(x, j), f"a seam at {j} s"
    # the check sees what it is for: a 6 dB jump, a 50 ms gap or a step at a join
    louder, gap, step = x.copy(), x.copy(), x.copy()
    louder[int(30.0 * rate):] *= 2.0
    gap[int(32.0 * rate):int(32.05 * rate)] = 0.0
    step[int(32.0 * rate):] += 0.5
    assert not any(seams.seamless(bad, 30.0) for bad in (louder, gap, step))


async def test_same_seed_same_music_past_the_window(
    control_plane: ControlPlane, worker_factory, upload_models, tmp_path: Path
):
    store = await upload_models("musicgen-small")
    await worker_factory(model_cache_dir=str(tmp_path / "cache"),
                         models_config=registry(tmp_path, {"musicgen-small": {"window_s": 4}}))
    params = {"prompt": "calm piano", "duration_s": 9.0, "seed": 3, "continuation_overlap_s": 1.0}
    audio = []
    for seed in (3, 3, 4):
        graph = {"nodes": [{"id": "music", "task": "generate_music", "plane": "python",
                            "params": {**params, "seed": seed}}]}
        job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id, timeout_s=120)
        assert job.status == "succeeded", node(job, "music").error
        assert node(job, "music").output["windows"] == 3  # 4 s, then 3 s more each
        audio.append(await store.get(node(job, "music").output["audio"]))
    assert audio[0] == audio[1] and audio[0] != audio[2]

    # an overlap as long as the model's window cannot continue anything
    graph = {"nodes": [{"id": "music", "task": "generate_music", "plane": "python",
                        "params": {**params, "continuation_overlap_s": 4.0}}]}
    job = await wait_for_job(control_plane, (await control_plane.submit(graph)).job_id, timeout_s=60)
    assert job.status == "failed" and "window_s=4" in node(job, "music").error.message
