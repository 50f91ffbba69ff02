"""Text-to-video with AnimateDiff (diffusers), on the python plane.

A Stable Diffusion 1.5-class pipeline (``sd15``) plus a motion adapter
(``animatediff-motion-adapter``), both from the worker's model store (``ctx.models``): the tiny
random-weight models of `dualplane models make-tiny`, or the real checkpoints on a GPU host; the
code path is the same. The assembled pipeline is kept warm per (model, adapter) pair.

Denoising reports progress per step through ``callback_on_step_end``; a cancelled job sets the
pipeline's ``_interrupt`` (diffusers' own mechanism: the remaining steps are skipped), the frames
are not decoded, and the task raises :class:`TaskCancelled`. An optional LoRA (a
``train_lora`` output) is loaded for one render only and unloaded afterwards, so it never leaks
into the warm pipeline the next job gets.
"""

from __future__ import annotations

import io
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dualplane.common.access import ObjectKey
from dualplane.common.context import TaskContext
from dualplane.common.errors import TaskCancelled
from dualplane.common.registry import task
from dualplane.data_plane.model_store import BUILD_LOCK
from dualplane.data_plane.rng import GLOBAL_RNG

#: Kind the motion adapter's registry entry must have.
MOTION_ADAPTER_KIND = "animatediff-motion-adapter"
#: Adapter name a job's LoRA gets inside the pipeline (unloaded after the render).
_LORA_ADAPTER = "job_lora"


class VideoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(..., min_length=1, max_length=2000, description="What the video should show.")
    negative_prompt: str | None = Field(None, max_length=2000, description="What the video should not show.")
    num_frames: int = Field(8, ge=1, le=32,
                            description="Frames to generate (the v1.5 motion adapters see 32 at most).")
    fps: int = Field(8, ge=1, le=60, description="Frames per second of the MP4.")
    steps: int = Field(4, ge=1, le=500, description="Denoising steps.")
    guidance_scale: float = Field(7.5, ge=0, le=30, description="Classifier-free guidance (1 or less: none).")
    width: int = Field(64, ge=16, le=1024, multiple_of=8, description="Frame width in pixels (multiple of 8).")
    height: int = Field(64, ge=16, le=1024, multiple_of=8, description="Frame height in pixels (multiple of 8).")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Seed for reproducible sampling.")
    model: str = Field("sd15", min_length=1, description="Model registry name of the SD 1.5-class base.")
    motion_adapter: str = Field("animatediff-motion-adapter", min_length=1,
                                description="Model registry name of the AnimateDiff motion adapter.")
    lora: ObjectKey | None = Field(None,
                             description="Object key of a diffusers LoRA (.safetensors), "
                                         "e.g. a train_lora output.")
    lora_scale: float = Field(1.0, ge=0, le=4, description="Weight of the LoRA.")


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


@task("render_video", plane="python", params=VideoParams, gpu=True)
def render_video(ctx: TaskContext, p: VideoParams) -> dict[str, Any]:
    """Render a short video from a text prompt with AnimateDiff; writes `video.mp4` (H.264) and `poster.png`."""
    if ctx.models is None:
        raise RuntimeError("this worker has no model manager (ctx.models)")
    kind = ctx.models.entry(p.motion_adapter).kind
    if kind != MOTION_ADAPTER_KIND:
        raise ValueError(f"model {p.motion_adapter!r} is a {kind!r}, not a {MOTION_ADAPTER_KIND!r}")
    ctx.progress(0.0, f"loading {p.model} + {p.motion_adapter}")
    loaded = load_video_pipeline(ctx.models, p)
    lora = ctx.get_artifact(p.lora) if p.lora else None
    seed = p.seed if p.seed is not None else random.randrange(2**63)
    held: VideoPipeline = loaded.model
    with ctx.holding(held.lock):
        frames, denoise = _render(ctx, held.pipe, p, seed, lora)

    ctx.progress(0.95, "encoding")
    # the MP4 uploads while the poster is encoded; both are stored before the node ends
    video_upload = ctx.put_artifact_nowait("video.mp4", mp4_bytes(frames, p.fps), "video/mp4")
    poster = ctx.put_artifact("poster.png", png_bytes(frames[0]), "image/png")
    video = video_upload.result()
    return {
        "video": video["key"],
        "poster": poster["key"],
        "frames": int(frames.shape[0]),
        "fps": p.fps,
        "width": int(frames.shape[2]),
        "height": int(frames.shape[1]),
        "steps": denoise.steps,
        "steps_per_s": round(denoise.steps / denoise.elapsed_s, 2) if denoise.elapsed_s > 0 else None,
        "seed": seed,
        "lora": p.lora,
        "model": p.model,
        "motion_adapter": p.motion_adapter,
        "device": loaded.device,
        "model_load_s": round(loaded.load_s, 4),
    }


def _render(ctx: TaskContext, pipe: Any, p: VideoParams, seed: int, lora: bytes | None) -> tuple[Any, _Denoise]:
    """Denoise, then decode to uint8 frames ``(n, h, w, 3)``; a LoRA is loaded only meanwhile."""
    import torch

    ctx.check_cancelled()
    if lora is not None:
        _load_lora(ctx, pipe, lora, p.lora_scale)
    try:
        denoise = _Denoise(ctx, p.steps)
        with torch.inference_mode():
            latents = pipe(
                prompt=p.prompt, negative_prompt=p.negative_prompt, num_frames=p.num_frames,
                num_inference_steps=p.steps, guidance_scale=p.guidance_scale, width=p.width, height=p.height,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="latent",
                callback_on_step_end=denoise, callback_on_step_end_tensor_inputs=["latents"],
            ).frames
            denoise.finish()
            if denoise.interrupted:  # the pipeline skipped the remaining steps; skip decoding too
                raise TaskCancelled(f"job {ctx.job_id} cancelled at step {denoise.steps}/{p.steps}")
            video = pipe.decode_latents(latents, decode_chunk_size=16)
            frames = pipe.video_processor.postprocess_video(video=video, output_type="np")[0]
    finally:
        if lora is not None:
            pipe.unload_lora_weights()  # the warm pipeline goes back to the base weights
    return (frames.clip(0, 1) * 255).round().astype("uint8"), denoise


def _load_lora(ctx: TaskContext, pipe: Any, data: bytes, scale: float) -> None:
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
    except BaseException:
        pipe.unload_lora_weights()
        raise


class _Denoise:
    """``callback_on_step_end``: progress per step; on cancellation it sets the pipeline's
    ``_interrupt`` so the remaining steps are skipped (no exception inside diffusers)."""

    def __init__(self, ctx: TaskContext, total: int) -> None:
        self.ctx = ctx
        self.total = total
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

    def finish(self) -> None:
        self.elapsed_s = time.perf_counter() - self._started


# -- encoding --------------------------------------------------------------------------


def mp4_bytes(frames: Any, fps: int) -> bytes:
    """H.264 MP4 (yuv420p) of uint8 RGB frames ``(n, h, w, 3)``; width and height must be even."""
    import imageio_ffmpeg
    import numpy as np

    height, width = frames.shape[1:3]
    with tempfile.TemporaryDirectory(prefix="dp-video-") as tmp:
        path = Path(tmp, "video.mp4")
        writer = imageio_ffmpeg.write_frames(
            str(path), (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
            macro_block_size=2, ffmpeg_log_level="error", output_params=["-movflags", "+faststart"],
        )
        writer.send(None)  # start ffmpeg
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        return path.read_bytes()


def png_bytes(frame: Any) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()
