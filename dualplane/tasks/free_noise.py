"""Long AnimateDiff renders: FreeNoise context windows on a shared (warm) pipeline, for one render.

A motion adapter sees a fixed number of frames (16 for the v1.5 ones). FreeNoise (diffusers'
``enable_free_noise``) denoises a longer video in windows of that many frames sliding by
:data:`CONTEXT_STRIDE`, blending the overlaps at every step, so the whole video is one coherent
sample rather than clips glued together or one clip looped. Each frame gets its own noise
(``noise_type="random"``): diffusers' default shuffles the first window's noise along the video,
which repeats it by design, the opposite of what a long video should do.

Split inference bounds memory: the spatial layers see ``context_frames`` frames at a time instead
of the whole video in one batch (hundreds of frames would not fit a GPU at 512x512).

Both change the pipeline's modules in place; the warm pipeline is shared by later jobs, so each
context manager puts back exactly what it found.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dualplane.common.context import TaskContext
from dualplane.ml.model_store import BUILD_LOCK
from dualplane.ml.rng import GLOBAL_RNG

#: Frames between the starts of two context windows (diffusers' default: each frame is in 4 windows
#: of 16, which is what FreeNoise was evaluated with).
CONTEXT_STRIDE = 4
#: Positions of the motion modules' batch (height x width of the latents) processed at once.
SPATIAL_SPLIT = 256


def context_windows(num_frames: int, context_frames: int, stride: int = CONTEXT_STRIDE) -> int:
    """How many windows FreeNoise denoises ``num_frames`` in (the same as diffusers' own split,
    whose last window is shortened to end at the last frame)."""
    if num_frames <= context_frames:
        return 1
    starts = range(0, num_frames - context_frames + 1, stride)
    return len(starts) + (starts[-1] + context_frames < num_frames)


@contextmanager
def free_noise(ctx: TaskContext, pipe: Any, context_frames: int) -> Iterator[None]:
    """FreeNoise on ``pipe`` inside the block. Enter it before loading a LoRA (the blocks it swaps
    are copied by their state dicts, which must not hold LoRA layers)."""
    # swapping the blocks builds modules: their random init draws from the global generator a
    # seeded job may be using, and must not overlap another thread's from_pretrained
    with ctx.holding(GLOBAL_RNG), BUILD_LOCK:
        pipe.enable_free_noise(context_length=context_frames, context_stride=CONTEXT_STRIDE,
                               noise_type="random")
    try:
        yield
    finally:
        with ctx.holding(GLOBAL_RNG), BUILD_LOCK:
            pipe.disable_free_noise()


@contextmanager
def split_inference(pipe: Any, context_frames: int) -> Iterator[None]:
    """Chunked spatial and motion layers inside the block; enter it after loading a LoRA (it wraps
    modules, which renames the paths a LoRA's keys name) and leave it before unloading one."""
    pipe.enable_free_noise_split_inference(spatial_split_size=SPATIAL_SPLIT, temporal_split_size=context_frames)
    try:
        yield
    finally:
        _unwrap_split_modules(pipe.unet)


def _unwrap_split_modules(root: Any) -> None:
    """Replace every ``SplitInferenceModule`` under ``root`` by the module it wraps (diffusers has
    no way back from ``enable_free_noise_split_inference``)."""
    from diffusers.pipelines.free_noise_utils import SplitInferenceModule

    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            while isinstance(child, SplitInferenceModule):
                child = child.module
                setattr(parent, name, child)
