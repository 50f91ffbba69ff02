"""Text-to-video with AnimateDiff (diffusers), on the python plane.

A Stable Diffusion 1.5-class pipeline (``sd15``) plus a motion adapter
(``animatediff-motion-adapter``), both from the worker's model store (``ctx.models``): the tiny
random-weight models of `dualplane models make-tiny`, or the real checkpoints on a GPU host; the
code path is the same. The assembled pipeline is kept warm per (model, adapter) pair.

Denoising reports progress per step through ``callback_on_step_end``, and about once a second a
small JPEG of the current latents (:mod:`dualplane.tasks.latent_preview`); a cancelled job sets the
pipeline's ``_interrupt`` (diffusers' own mechanism: the remaining steps are skipped), the frames
are not decoded, and the task raises :class:`TaskCancelled`. An optional LoRA (a
``train_lora`` output) is loaded for one render only and unloaded afterwards, so it never leaks
into the warm pipeline the next job gets.

Length: ``duration_s`` (or ``num_frames``) frames at ``fps``. A video longer than the motion
adapter's window (the registry's ``context_frames``) is denoised as one sample in overlapping
windows (FreeNoise, :mod:`dualplane.tasks.free_noise`), never as one clip repeated. The bounds on
frames and size are per model, from the registry's ``limits`` (``max_frames`` on the adapter,
``max_width`` / ``max_height`` on the base); the schema's own bounds only stop absurd requests.
Frames are decoded a window at a time and streamed to ffmpeg, so a long video never sits decoded
in memory.
"""

from __future__ import annotations

import io
import itertools
import random
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dualplane.common.access import ObjectKey
from dualplane.common.context import TaskContext
from dualplane.common.errors import TaskCancelled
from dualplane.common.registry import task
from dualplane.ml.model_store import BUILD_LOCK
from dualplane.ml.rng import GLOBAL_RNG
from dualplane.tasks.free_noise import context_windows, free_noise, split_inference
from dualplane.tasks.latent_preview import LatentPreviews, preview_size

#: Kind the motion adapter's registry entry must have.
MOTION_ADAPTER_KIND = "animatediff-motion-adapter"
#: Adapter name a job's LoRA gets inside the pipeline (unloaded after the render).
_LORA_ADAPTER = "job_lora"
#: Frames the motion adapter sees at once when its registry entry does not say (the v1.5 adapters).
DEFAULT_CONTEXT_FRAMES = 16
#: Schema bounds: requests past them are refused before any model is looked at. The real bounds
#: are the registry's per-model limits, which are checked when the task runs.
MAX_FRAMES = 7200
MAX_SIDE = 2048


class VideoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(..., min_length=1, max_length=2000, description="What the video should show.")
    negative_prompt: str | None = Field(None, max_length=2000, description="What the video should not show.")
    num_frames: int = Field(8, ge=1, le=MAX_FRAMES,
                            description="Frames to generate (the motion adapter's registry entry "
                                        "bounds it: limits.max_frames).")
    duration_s: float | None = Field(None, gt=0, le=600,
                                     description="Length in seconds instead of num_frames: "
                                                 "round(duration_s * fps) frames.")
    fps: int = Field(8, ge=1, le=60, description="Frames per second of the MP4.")
    steps: int = Field(4, ge=1, le=500, description="Denoising steps.")
    guidance_scale: float = Field(7.5, ge=0, le=30, description="Classifier-free guidance (1 or less: none).")
    width: int = Field(64, ge=16, le=MAX_SIDE, multiple_of=8,
                       description="Frame width in pixels (multiple of 8; the base model's limits.max_width).")
    height: int = Field(64, ge=16, le=MAX_SIDE, multiple_of=8,
                        description="Frame height in pixels (multiple of 8; the base model's limits.max_height).")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Seed for reproducible sampling.")
    model: str = Field("sd15", min_length=1, description="Model registry name of the SD 1.5-class base.")
    motion_adapter: str = Field("animatediff-motion-adapter", min_length=1,
                                description="Model registry name of the AnimateDiff motion adapter.")
    lora: ObjectKey | None = Field(None,
                             description="Object key of a diffusers LoRA (.safetensors), "
                                         "e.g. a train_lora output.")
    lora_scale: float = Field(1.0, ge=0, le=4, description="Weight of the LoRA.")

    @model_validator(mode="after")
    def _one_length(self) -> VideoParams:
        if self.duration_s is not None:
            if "num_frames" in self.model_fields_set:
                raise ValueError("give num_frames or duration_s, not both")
            if not 1 <= self.frames <= MAX_FRAMES:
                raise ValueError(f"duration_s * fps gives {self.frames} frames; 1 to {MAX_FRAMES} are possible")
        return self

    @property
    def frames(self) -> int:
        """Frames to render: ``num_frames``, or ``duration_s`` at ``fps``."""
        return self.num_frames if self.duration_s is None else round(self.duration_s * self.fps)


@dataclass
class VideoPipeline:
    """The warm object: an AnimateDiffPipeline and the lock that serialises jobs using it
    (a render changes per-call state: ``_interrupt``, a loaded LoRA)."""

    pipe: Any
    lock: threading.Lock = field(default_factory=threading.Lock)


def load_animatediff(path: Path, device: str, dtype: Any, adapter_path: Path) -> VideoPipeline:
    """The loader for ``ctx.models.load(base, ..., extra=(adapter,))``: the SD base at ``path``
    plus the motion adapter in ``adapter_path``."""
    from diffusers import AnimateDiffPipeline, MotionAdapter

    adapter = MotionAdapter.from_pretrained(adapter_path, dtype=dtype, local_files_only=True)
    pipe = AnimateDiffPipeline.from_pretrained(
        path, motion_adapter=adapter, dtype=dtype, local_files_only=True,
        feature_extractor=None, image_encoder=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return VideoPipeline(pipe.to(device))


def load_video_pipeline(models: Any, p: VideoParams) -> Any:
    """The warm AnimateDiff pipeline of ``p.model`` + ``p.motion_adapter`` (a LoadedModel)."""
    return models.load(p.model, load_animatediff, key=f"animatediff:{p.motion_adapter}",
                       extra=(p.motion_adapter,))


@task("render_video", plane="python", params=VideoParams, gpu=True, kind="video",
      title="Generate a video from a prompt (AnimateDiff)")
def render_video(ctx: TaskContext, p: VideoParams) -> dict[str, Any]:
    """Render a video from a text prompt with AnimateDiff; writes `video.mp4` (H.264) and `poster.png`."""
    if ctx.models is None:
        raise RuntimeError("this worker has no model manager (ctx.models)")
    adapter = ctx.models.entry(p.motion_adapter)
    if adapter.kind != MOTION_ADAPTER_KIND:
        raise ValueError(f"model {p.motion_adapter!r} is a {adapter.kind!r}, not a {MOTION_ADAPTER_KIND!r}")
    context = check_limits(p, ctx.models.entry(p.model).limits, adapter.limits)
    ctx.progress(0.0, f"loading {p.model} + {p.motion_adapter}")
    loaded = load_video_pipeline(ctx.models, p)
    lora = ctx.get_artifact(p.lora) if p.lora else None
    seed = p.seed if p.seed is not None else random.randrange(2**63)
    held: VideoPipeline = loaded.model
    with ctx.holding(held.lock):
        latents, denoise = _denoise(ctx, held.pipe, p, seed, lora, context)
        segments = _decoded(ctx, held.pipe, latents, context)
        first = next(segments)
        poster = first[0]
        video = encode_mp4(itertools.chain([first], segments), p.fps)

    # the MP4 uploads while the poster is stored; both are stored before the node ends
    video_upload = ctx.put_artifact_nowait("video.mp4", video, "video/mp4")
    poster_ref = ctx.put_artifact("poster.png", png_bytes(poster), "image/png")
    video_ref = ctx.wait(video_upload)
    frames = int(latents.shape[2])
    return {
        "video": video_ref["key"],
        "poster": poster_ref["key"],
        "format": "mp4",
        "codec": "h264",
        "frames": frames,
        "fps": p.fps,
        "duration_s": round(frames / p.fps, 4),
        "width": int(poster.shape[1]),
        "height": int(poster.shape[0]),
        "segments": context_windows(frames, context),
        "context_frames": context,
        "steps": denoise.steps,
        "steps_per_s": round(denoise.steps / denoise.elapsed_s, 2) if denoise.elapsed_s > 0 else None,
        "previews": denoise.previews.sent,
        "seed": seed,
        "lora": p.lora,
        "model": p.model,
        "motion_adapter": p.motion_adapter,
        "device": loaded.device,
        "model_load_s": round(loaded.load_s, 4),
    }


def check_limits(p: VideoParams, base: Mapping[str, float], adapter: Mapping[str, float]) -> int:
    """Refuse what the models' registry limits do not allow; the adapter's window (frames it
    sees at once). A registry entry without a limit leaves that bound to the schema."""
    bounds = [("max_frames", p.frames, adapter, p.motion_adapter, "frames"),
              ("max_width", p.width, base, p.model, "width"),
              ("max_height", p.height, base, p.model, "height")]
    for name, value, limits, model, what in bounds:
        if name in limits and value > limits[name]:
            raise ValueError(f"{what} {value} is over the limit {name}={limits[name]:g} of model {model!r} "
                             "(model registry limits)")
    context = int(adapter.get("context_frames", DEFAULT_CONTEXT_FRAMES))
    if context < 1:
        raise ValueError(f"model {p.motion_adapter!r}: limits.context_frames must be at least 1, got {context}")
    return context


def _denoise(ctx: TaskContext, pipe: Any, p: VideoParams, seed: int, lora: bytes | None,
             context: int) -> tuple[Any, _Denoise]:
    """The denoised latents ``(1, c, frames, h, w)``; FreeNoise and a LoRA are on only meanwhile."""
    import torch

    ctx.check_cancelled()
    long = p.frames > context
    denoise = _Denoise(ctx, p.steps, LatentPreviews(ctx, p.steps, preview_size(p.width, p.height)))
    with ExitStack() as stack:
        # the order matters: FreeNoise copies blocks by state dict (no LoRA layers yet), split
        # inference wraps modules (after the LoRA found them by their paths); undone in reverse
        if long:
            stack.enter_context(free_noise(ctx, pipe, context))
        if lora is not None:
            stack.enter_context(_job_lora(ctx, pipe, lora, p.lora_scale))
        if long:
            stack.enter_context(split_inference(pipe, context))
        with torch.inference_mode():
            latents = pipe(
                prompt=p.prompt, negative_prompt=p.negative_prompt, num_frames=p.frames,
                num_inference_steps=p.steps, guidance_scale=p.guidance_scale, width=p.width, height=p.height,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="latent",
                callback_on_step_end=denoise, callback_on_step_end_tensor_inputs=["latents"],
            ).frames
    denoise.finish()
    if denoise.interrupted:  # the pipeline skipped the remaining steps; skip decoding too
        raise TaskCancelled(f"job {ctx.job_id} cancelled at step {denoise.steps}/{p.steps}")
    return latents, denoise


def _decoded(ctx: TaskContext, pipe: Any, latents: Any, segment: int) -> Iterator[Any]:
    """uint8 RGB frames ``(n, h, w, 3)``, decoded from the latents ``segment`` frames at a time."""
    import torch

    total = int(latents.shape[2])
    for start in range(0, total, segment):
        ctx.check_cancelled()
        end = min(total, start + segment)
        ctx.progress(0.95 + 0.05 * start / total, f"decoding frames {start + 1}-{end} of {total}")
        with torch.inference_mode():
            video = pipe.decode_latents(latents[:, :, start:end], decode_chunk_size=segment)
        frames = pipe.video_processor.postprocess_video(video=video, output_type="np")[0]
        yield (frames.clip(0, 1) * 255).round().astype("uint8")


@contextmanager
def _job_lora(ctx: TaskContext, pipe: Any, data: bytes, scale: float) -> Iterator[None]:
    """The job's LoRA on ``pipe`` inside the block; the warm pipeline goes back to the base weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    try:
        state = load_safetensors(data)
    except SafetensorError as exc:
        raise ValueError(f"lora: not a safetensors file ({exc})") from None
    try:
        # builds peft layers: must not overlap another thread's from_pretrained, and their random
        # init (overwritten at once) draws from the global generator a seeded job may be using
        # (taken first: a generation holds it for long, and holding BUILD_LOCK would stall loads)
        with ctx.holding(GLOBAL_RNG), BUILD_LOCK:
            pipe.load_lora_weights(state, adapter_name=_LORA_ADAPTER)
        pipe.set_adapters([_LORA_ADAPTER], adapter_weights=[scale])
        yield
    finally:
        pipe.unload_lora_weights()


class _Denoise:
    """``callback_on_step_end``: progress and a preview when due per step; on cancellation it sets
    the pipeline's ``_interrupt`` so the remaining steps are skipped (no exception inside diffusers)."""

    def __init__(self, ctx: TaskContext, total: int, previews: LatentPreviews) -> None:
        self.ctx = ctx
        self.total = total
        self.previews = previews
        self.steps = 0
        self.interrupted = False
        self._started = time.perf_counter()
        self.elapsed_s = 0.0

    def __call__(self, pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.steps = i + 1
        try:
            self.ctx.on_step(self.steps, self.total)
        except TaskCancelled:
            self.interrupted = True
            pipe._interrupt = True
            return {}
        self.previews.step(self.steps, kwargs["latents"])
        return {}

    def finish(self) -> None:
        self.elapsed_s = time.perf_counter() - self._started


# -- encoding --------------------------------------------------------------------------


def encode_mp4(segments: Iterable[Any], fps: int) -> bytes:
    """H.264 MP4 (yuv420p) of uint8 RGB frames arriving in segments ``(n, h, w, 3)`` of one size
    (width and height even); each segment goes to ffmpeg before the next is asked for."""
    import imageio_ffmpeg
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="dp-video-") as tmp:
        path = Path(tmp, "video.mp4")
        writer = None
        try:
            for frames in segments:
                if writer is None:  # ffmpeg needs the size, which the first segment tells
                    height, width = frames.shape[1:3]
                    writer = imageio_ffmpeg.write_frames(
                        str(path), (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24",
                        pix_fmt_out="yuv420p", macro_block_size=2, ffmpeg_log_level="error",
                        output_params=["-movflags", "+faststart"],
                    )
                    writer.send(None)  # start ffmpeg
                for frame in frames:
                    writer.send(np.ascontiguousarray(frame))
        finally:
            if writer is not None:
                writer.close()  # also when a segment failed: ffmpeg must not outlive the render
        if writer is None:
            raise ValueError("no frames to encode")
        return path.read_bytes()


def mp4_bytes(frames: Any, fps: int) -> bytes:
    """H.264 MP4 (yuv420p) of uint8 RGB frames ``(n, h, w, 3)``; width and height must be even."""
    return encode_mp4([frames], fps)


def png_bytes(frame: Any) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()
