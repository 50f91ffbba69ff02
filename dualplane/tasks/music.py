"""Music generation with MusicGen (transformers), on the python plane.

The weights come from the worker's model store (``ctx.models``): the packaged registry maps
``musicgen-small`` to the object store, where `dualplane models make-tiny` puts a tiny
random-weight MusicGen and a GPU host puts the real checkpoint; the code path is the same.
"""

from __future__ import annotations

import io
import time
import wave
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dualplane.common.context import TaskContext
from dualplane.common.registry import task
from dualplane.data_plane.rng import GLOBAL_RNG, seeded


class MusicParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(..., min_length=1, max_length=2000, description="What the music should sound like.")
    duration_s: float = Field(8.0, gt=0, le=120, description="Length of the audio in seconds.")
    guidance_scale: float = Field(3.0, ge=0, le=30, description="Classifier-free guidance (1 or less: none).")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature.")
    seed: int | None = Field(None, ge=0, description="Seed for reproducible sampling.")
    model: str = Field("musicgen-small", min_length=1, description="Model registry name.")


def load_musicgen(path: Path, device: str, dtype: Any) -> tuple[Any, Any]:
    """(processor, model) from a ``save_pretrained`` directory; never touches the network."""
    from transformers import MusicgenForConditionalGeneration, MusicgenProcessor

    processor = MusicgenProcessor.from_pretrained(path, local_files_only=True)
    model = MusicgenForConditionalGeneration.from_pretrained(path, dtype=dtype, local_files_only=True)
    return processor, model.to(device).eval()


@task("generate_music", plane="python", params=MusicParams, gpu=True)
def generate_music(ctx: TaskContext, p: MusicParams) -> dict[str, Any]:
    """Generate music from a text prompt with MusicGen; writes `music.wav` (16-bit PCM)."""
    import torch

    if ctx.models is None:
        raise RuntimeError("this worker has no model manager (ctx.models)")
    ctx.progress(0.0, f"loading {p.model}")
    loaded = ctx.models.load(p.model, load_musicgen)
    processor, model = loaded.model
    ctx.check_cancelled()

    audio_cfg = model.config.audio_encoder
    frame_rate = audio_cfg.frame_rate
    # the codebooks are generated with a delay pattern: n codebooks need n - 1 extra steps
    frames = max(1, round(p.duration_s * frame_rate))
    max_new_tokens = frames + model.decoder.num_codebooks - 1
    progress = _TokenProgress(ctx, max_new_tokens)

    inputs = processor(text=[p.prompt], padding=True, return_tensors="pt").to(loaded.device)
    # generate samples from the process-wide generator (it takes no generator=): jobs running
    # at once take turns, so a seed reproduces its audio whatever else the worker runs
    with ctx.holding(GLOBAL_RNG):
        started = time.perf_counter()
        with seeded(p.seed, loaded.device), torch.inference_mode():
            audio = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=True, guidance_scale=p.guidance_scale,
                temperature=p.temperature, stopping_criteria=progress.criteria(),
            )
        generate_s = time.perf_counter() - started
    ctx.check_cancelled()

    samples = audio[0].float().cpu().numpy()  # (channels, samples)
    sample_rate = int(audio_cfg.sampling_rate)
    ref = ctx.put_artifact("music.wav", wav_bytes(samples, sample_rate), "audio/wav")
    return {
        "audio": ref["key"],
        "sample_rate": sample_rate,
        "channels": int(samples.shape[0]),
        "duration_s": round(samples.shape[-1] / sample_rate, 4),
        "tokens": progress.steps,
        "tokens_per_s": round(progress.steps / generate_s, 2) if generate_s > 0 else None,
        "model": p.model,
        "device": loaded.device,
        "model_load_s": round(loaded.load_s, 4),
    }


class _TokenProgress:
    """Counts generation steps through a StoppingCriteria (called once per generated token):
    reports progress and raises TaskCancelled inside the loop when the job is cancelled."""

    def __init__(self, ctx: TaskContext, total: int) -> None:
        self.ctx = ctx
        self.total = total
        self.steps = 0

    def criteria(self) -> Any:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        outer = self

        class _Step(StoppingCriteria):
            def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
                outer.steps += 1
                outer.ctx.on_step(outer.steps, outer.total)  # raises TaskCancelled when cancelled
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        return StoppingCriteriaList([_Step()])


def wav_bytes(samples: Any, sample_rate: int) -> bytes:
    """16-bit PCM WAV of float samples in [-1, 1] shaped (channels, n) (clipped outside)."""
    import numpy as np

    pcm = (np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(pcm.shape[0])
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(np.ascontiguousarray(pcm.T).tobytes())  # interleaved frames
    return buf.getvalue()
