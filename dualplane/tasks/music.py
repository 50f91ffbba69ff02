"""Music generation with MusicGen (transformers), on the python plane.

The weights come from the worker's model store (``ctx.models``): the packaged registry maps
``musicgen-small`` to the object store, where `dualplane models make-tiny` puts a tiny
random-weight MusicGen and a GPU host puts the real checkpoint; the code path is the same.

MusicGen makes at most its window (the registry's ``limits.window_s``, 30 s for the real
checkpoints) at once. A longer track is continued window by window from the last
``continuation_overlap_s`` seconds (MusicGen's audio prompt) and crossfaded at each join
(:mod:`dualplane.tasks.continuation`); one seeded draw covers all windows, so a seed reproduces
the whole track. The audio is stored as WAV + Opus at the model's own sample rate.

While it generates, the task reports the seconds made so far (``audio_progress`` data events,
throttled like progress) and progress as their fraction of the track, so the two always agree.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dualplane.common.context import PROGRESS_INTERVAL_S, PROGRESS_STEP, TaskContext
from dualplane.common.registry import task
from dualplane.ml.audio import wav_bytes
from dualplane.ml.rng import GLOBAL_RNG, seeded
from dualplane.tasks.audio_files import put_audio
from dualplane.tasks.continuation import Window, join, plan_windows

#: Window of a MusicGen whose registry entry does not say (the real checkpoints' 30 s).
DEFAULT_WINDOW_S = 30.0


class MusicParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(..., min_length=1, max_length=2000, description="What the music should sound like.")
    duration_s: float = Field(8.0, gt=0, le=600, description="Length of the audio in seconds.")
    guidance_scale: float = Field(3.0, ge=0, le=30, description="Classifier-free guidance (1 or less: none).")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature.")
    seed: int | None = Field(None, ge=0, description="Seed for reproducible sampling.")
    model: str = Field("musicgen-small", min_length=1, description="Model registry name.")
    continuation_overlap_s: float = Field(
        5.0, ge=0.5, le=20,
        description="Past the model's window, each next window continues from this many seconds of "
                    "the audio so far, crossfaded over them (below the model's limits.window_s).")


def load_musicgen(path: Path, device: str, dtype: Any) -> tuple[Any, Any]:
    """(processor, model) from a ``save_pretrained`` directory; never touches the network."""
    from transformers import MusicgenForConditionalGeneration, MusicgenProcessor

    processor = MusicgenProcessor.from_pretrained(path, local_files_only=True)
    model = MusicgenForConditionalGeneration.from_pretrained(path, dtype=dtype, local_files_only=True)
    return processor, model.to(device).eval()


@task("generate_music", plane="python", params=MusicParams, gpu=True, kind="music",
      title="Generate music from a prompt (MusicGen)")
def generate_music(ctx: TaskContext, p: MusicParams) -> dict[str, Any]:
    """Generate music from a text prompt with MusicGen, as long as asked (continued past the
    model's window); writes `music.wav` (16-bit PCM) and `music.opus`."""
    import torch

    if ctx.models is None:
        raise RuntimeError("this worker has no model manager (ctx.models)")
    window_s = float(ctx.models.entry(p.model).limits.get("window_s", DEFAULT_WINDOW_S))
    if p.continuation_overlap_s >= window_s:
        raise ValueError(f"continuation_overlap_s {p.continuation_overlap_s:g} must be below the limit "
                         f"window_s={window_s:g} of model {p.model!r} (model registry limits)")
    ctx.progress(0.0, f"loading {p.model}")
    loaded = ctx.models.load(p.model, load_musicgen)
    processor, model = loaded.model
    ctx.check_cancelled()

    audio_cfg = model.config.audio_encoder
    sample_rate = int(audio_cfg.sampling_rate)
    hop = round(sample_rate / audio_cfg.frame_rate)  # samples per codec frame
    samples = max(1, round(p.duration_s * sample_rate))
    windows = plan_windows(-(-samples // hop), int(window_s * audio_cfg.frame_rate),
                           max(1, round(p.continuation_overlap_s * audio_cfg.frame_rate)))
    # the codebooks are generated with a delay pattern: n codebooks need n - 1 extra steps
    delay = model.decoder.num_codebooks - 1
    progress = _TokenProgress(ctx, delay, float(audio_cfg.frame_rate), p.duration_s)

    # generate samples from the process-wide generator (it takes no generator=): jobs running
    # at once take turns, so a seed reproduces its audio whatever else the worker runs
    track: torch.Tensor | None = None
    joins_s: list[float] = []
    with ctx.holding(GLOBAL_RNG):
        started = time.perf_counter()
        with seeded(p.seed, loaded.device), torch.inference_mode():
            for i, window in enumerate(windows):
                if len(windows) > 1:
                    ctx.progress(progress.fraction, f"window {i + 1}/{len(windows)}")
                prompt = None if track is None else track[:, -window.prompt * hop:]
                chunk = _generate(processor, model, loaded.device, p, window, delay, prompt, sample_rate,
                                  progress)
                progress.window_done(window)
                if track is None or prompt is None:  # the first window (the only one without a prompt)
                    track = chunk
                else:
                    joins_s.append(round((track.shape[-1] - prompt.shape[-1]) / sample_rate, 4))
                    track, _ = join(track, chunk, prompt.shape[-1])
        generate_s = time.perf_counter() - started
    ctx.check_cancelled()
    assert track is not None  # plan_windows plans at least one window

    track = track[:, :samples]
    out = put_audio(ctx, "music", wav_bytes(track, sample_rate), sample_rate=sample_rate,
                    channels=track.shape[0], duration_s=track.shape[-1] / sample_rate)
    return {
        **out,
        "windows": len(windows),
        "joins_s": joins_s,
        "window_s": window_s,
        "continuation_overlap_s": p.continuation_overlap_s,
        "tokens": progress.steps,
        "tokens_per_s": round(progress.steps / generate_s, 2) if generate_s > 0 else None,
        "model": p.model,
        "device": loaded.device,
        "model_load_s": round(loaded.load_s, 4),
    }


def _generate(processor: Any, model: Any, device: str, p: MusicParams, window: Window, delay: int,
              prompt: Any, sample_rate: int, progress: _TokenProgress) -> Any:
    """One window's audio ``(channels, samples)`` as float32; with a ``prompt`` (the last
    seconds so far, ``(channels, samples)``) it starts with that audio as the codec re-made it."""
    if prompt is None:
        inputs = processor(text=[p.prompt], padding=True, return_tensors="pt")
    else:
        audio = prompt[0] if prompt.shape[0] == 1 else prompt  # the feature extractor's layouts
        inputs = processor(audio=audio, sampling_rate=sample_rate, text=[p.prompt], padding=True,
                           return_tensors="pt")
    audio = model.generate(
        **inputs.to(device), max_new_tokens=window.new + delay, do_sample=True, guidance_scale=p.guidance_scale,
        temperature=p.temperature, stopping_criteria=progress.criteria(),
    )
    return audio[0].float().cpu().numpy()


class _TokenProgress:
    """Counts generation steps through a StoppingCriteria (called once per generated token): reports
    the seconds made so far and progress as their fraction of the track (``of`` seconds), and raises
    TaskCancelled inside the loop when the job is cancelled.

    A codec frame is complete once its last codebook is: with MusicGen's delay pattern, ``delay``
    steps after its first one; the windows before the current one made ``new`` frames each."""

    def __init__(self, ctx: TaskContext, delay: int, frame_rate: float, of: float) -> None:
        self.ctx = ctx
        self.delay = delay
        self.frame_rate = frame_rate
        self.of = of
        self.steps = 0  # all windows'
        self.fraction = 0.0
        self._made = 0  # frames of the finished windows
        self._in_window = 0  # steps of the current one
        self._sent_s = -1.0
        self._sent_at = float("-inf")

    def window_done(self, window: Window) -> None:
        self._made += window.new
        self._in_window = 0

    def step(self) -> None:
        self.steps += 1
        self._in_window += 1
        self.ctx.check_cancelled()
        frames = self._made + max(0, self._in_window - self.delay)
        seconds = min(self.of, round(frames / self.frame_rate, 2))
        self.fraction = seconds / self.of
        self.ctx.progress(self.fraction)
        now = time.monotonic()
        if seconds > self._sent_s and (seconds == self.of or (
                seconds - self._sent_s >= PROGRESS_STEP * self.of and now - self._sent_at >= PROGRESS_INTERVAL_S)):
            self._sent_s, self._sent_at = seconds, now
            self.ctx.emit_data({"audio_progress": {"seconds": seconds, "of": self.of}})

    def criteria(self) -> Any:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        outer = self

        class _Step(StoppingCriteria):
            def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.Tensor:
                outer.step()  # raises TaskCancelled when cancelled
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        return StoppingCriteriaList([_Step()])
