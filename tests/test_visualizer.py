"""visualize_audio end to end on a real worker: an audio whose loudness is known (loud, quiet
and silent tone bursts) becomes an MP4 whose frames are decoded back and compared with it."""

from __future__ import annotations

import itertools
import re
import tempfile

import pytest

np = pytest.importorskip("numpy")

from dualplane.common.artifacts import store_from_settings
from dualplane.control_plane import ControlPlane
from dualplane.ml.audio import wav_bytes
from tests.helpers import node, wait_for_job

RATE = 44100
#: One second each: the amplitude of a two-tone chord (0: silence).
PATTERN = (0.8, 0.1, 0.0, 0.8, 0.0, 0.3)
WIDTH, HEIGHT, FPS = 320, 180, 12
SECTIONS = [
    {"name": "verse", "start_s": 0.0, "duration_s": 3.0, "lyrics": "the first line\nthe second line\nthe third"},
    {"name": "chorus", "start_s": 3.0, "duration_s": 3.0, "lyrics": "[chorus]\nsing it loud\nsing it soft"},
]


def bursts() -> np.ndarray:
    t = np.arange(RATE) / RATE
    chord = 0.5 * np.sin(2 * np.pi * 330 * t) + 0.5 * np.sin(2 * np.pi * 1250 * t)
    return np.concatenate([a * chord for a in PATTERN])


def rms_per_frame(x: np.ndarray, frames: int) -> np.ndarray:
    bounds = np.round(np.arange(frames + 1) * RATE / FPS).astype(int)
    return np.array([np.sqrt(np.mean(x[a:b] ** 2)) for a, b in itertools.pairwise(bounds)])


def decode(mp4: bytes) -> tuple[dict, np.ndarray, str]:
    """The reader's metadata, every frame (n, h, w, 3) and ffmpeg's description of the streams."""
    import subprocess

    import imageio_ffmpeg

    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(mp4)
        f.flush()
        reader = imageio_ffmpeg.read_frames(f.name)
        meta = next(reader)
        width, height = meta["size"]
        frames = np.stack([np.frombuffer(b, np.uint8).reshape(height, width, 3) for b in reader])
        streams = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", f.name],
                                 capture_output=True, text=True, check=False).stderr
    return meta, frames, streams


def vtt_cues(text: str) -> list[tuple[float, float, str]]:
    def seconds(stamp: str) -> float:
        h, m, s = stamp.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    found = re.findall(r"(\d\d:\d\d:\d\d\.\d{3}) --> (\d\d:\d\d:\d\d\.\d{3})\n(.+)", text)
    return [(seconds(a), seconds(b), line) for a, b, line in found]


async def test_the_video_follows_the_audio_loudness_for_every_style(control_plane: ControlPlane, worker_factory,
                                                                    settings):
    store = store_from_settings(settings.store)
    await store.ensure_bucket()
    audio = bursts()
    key = (await store.put("inputs", "src", "bursts.wav", wav_bytes(audio[None, :], RATE), "audio/wav"))["key"]
    common = {"audio": key, "width": WIDTH, "height": HEIGHT, "fps": FPS, "palette": "rainy night",
              "title": "Burst Song", "seed": 3}
    styles = ("spectrum", "waveform", "particles")
    nodes = [{"id": style, "task": "visualize_audio", "plane": "python",
              "params": {**common, "style": style, "lyrics": SECTIONS if style == "spectrum" else "one\ntwo"}}
             for style in styles]
    await worker_factory(concurrency=1)
    job = await wait_for_job(control_plane, (await control_plane.submit({"nodes": nodes})).job_id, timeout_s=90)
    assert job.status == "succeeded", job.model_dump_json()

    loudness = rms_per_frame(audio, len(PATTERN) * FPS)
    for style in styles:
        out = node(job, style).output
        meta, frames, streams = decode(await store.get(out["video"]))
        assert (out["width"], out["height"], out["fps"], out["format"], out["codec"]) == (WIDTH, HEIGHT, FPS,
                                                                                         "mp4", "h264")
        assert tuple(meta["size"]) == (WIDTH, HEIGHT) and meta["fps"] == FPS, meta
        assert len(frames) == out["frames"] == len(PATTERN) * FPS, (len(frames), out)
        assert abs(meta["duration"] - len(PATTERN)) <= 1 / FPS and out["duration_s"] == len(PATTERN), meta
        assert "Video: h264" in streams and "Audio: aac" in streams, streams
        assert out["palette"]["words"] == ["rainy", "night"], out["palette"]

        brightness = frames.mean(axis=(1, 2, 3))
        r = float(np.corrcoef(brightness, loudness)[0, 1])
        print(f"{style}: correlation of frame brightness with audio RMS r={r:.3f} "
              f"(loud {brightness[:FPS].mean():.1f}, silent {brightness[2 * FPS:3 * FPS].mean():.1f}), "
              f"render {out['render_s']} s")
        assert r >= 0.6, (style, r)
        first = frames[0].astype(float)
        assert first.mean() > 10 and first.std() > 5, (style, first.mean(), first.std())  # background and title

        poster = await store.get(out["poster"])
        assert poster[:8] == b"\x89PNG\r\n\x1a\n"

    spectrum = node(job, "spectrum").output
    cues = vtt_cues((await store.get(spectrum["subtitles"])).decode())
    expected = [line for s in SECTIONS for line in s["lyrics"].splitlines() if not line.startswith("[")]
    assert [c[2] for c in cues] == expected and spectrum["lines"] == len(expected)
    for start, end, line in cues:
        section = next(s for s in SECTIONS if line in s["lyrics"])
        assert section["start_s"] <= start < end <= section["start_s"] + section["duration_s"], (line, start, end)
    assert node(job, "waveform").output["subtitles"] is not None


def test_unknown_style_words_fall_back_to_the_default_palette_and_say_so():
    from dualplane.tasks import palette

    chosen, words = palette.pick("a song about tax returns")
    assert chosen == palette.DEFAULT and words == []
    sunset, words = palette.pick("Sunset over the FOREST")
    assert words == ["sunset", "forest"]
    assert sunset.top == palette.WORDS["sunset"].top and sunset.high == palette.WORDS["forest"].high


def test_plain_lyrics_spread_over_the_whole_track():
    from dualplane.tasks.lyric_timing import timed_lines, webvtt

    cues = timed_lines("[verse]\nalpha\n\nbeta --> gamma\ndelta\n", 9.0)
    assert [(c.start_s, c.end_s, c.text) for c in cues] == [(0.0, 3.0, "alpha"), (3.0, 6.0, "beta --> gamma"),
                                                            (6.0, 9.0, "delta")]
    assert vtt_cues(webvtt(cues))[1] == (3.0, 6.0, "beta -> gamma")  # "-->" would end a cue's timing



@pytest.mark.parametrize("style", ["spectrum", "waveform", "particles"])
def test_a_requested_length_past_the_audio_is_filled_with_silence(tmp_path, style):
    from dualplane.tasks.visualizer import VisualizerParams, render

    audio = tmp_path / "two.wav"
    audio.write_bytes(wav_bytes(bursts()[None, : 2 * RATE], RATE))  # loud, then quiet
    out = tmp_path / "padded.mp4"
    done = render(audio, out, VisualizerParams(audio="x", width=128, height=128, fps=10, duration_s=3.0, style=style))
    meta, frames, _ = decode(out.read_bytes())
    assert done.frames == len(frames) == 30 and abs(meta["duration"] - 3.0) <= 0.1, (done.frames, meta)
    brightness = frames.mean(axis=(1, 2, 3))
    assert brightness[22:].mean() < brightness[:10].mean()  # the padded second is silent, so dim
