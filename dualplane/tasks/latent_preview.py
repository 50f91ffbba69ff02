"""Live previews of a render while it denoises: the current latents of one frame as a small JPEG.

Decoding latents with the VAE costs about as much as a denoising step, so a preview instead
projects them to RGB with a fixed per-channel matrix (what ComfyUI and A1111 call "latent2rgb"):
one tiny matmul on the device the latents are on, then a few KiB of uint8 to the CPU. The colours
are approximate, which is all a preview needs. Latents of a channel count with no known matrix
show their first three channels, each stretched to the full range.

A preview goes out on the first step (so every render has one, however few steps it has) and then
at most every :data:`PREVIEW_INTERVAL_S`; when none is due a step costs one clock read.
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass
from typing import Any

from dualplane.common.context import TaskContext

#: Long side of a preview at most (the video's own size when that is smaller).
PREVIEW_MAX_SIDE = 256
#: At most one preview this often: a JPEG a second looks live and keeps the events stream small
#: (previews are events, stored with the job like the others).
PREVIEW_INTERVAL_S = 1.0
#: A preview's base64 stays within this (the UI's contract; well under the 64 KiB data-event limit).
MAX_PREVIEW_B64 = 48 * 1024
#: JPEG qualities tried in turn until the image fits; past the last one the image is halved.
JPEG_QUALITIES = (80, 60, 40)


@dataclass(frozen=True)
class Projection:
    """latent2rgb: ``rgb = latent @ factors + bias`` per pixel, with rgb in about [-1, 1]."""

    factors: tuple[tuple[float, float, float], ...]  # one (r, g, b) row per latent channel
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)


#: By latent channel count. 4: the SD 1.5 VAE (the bases render_video's AnimateDiff runs on),
#: ComfyUI's fit, which has no bias.
PROJECTIONS = {
    4: Projection(((0.3512, 0.2297, 0.3227),
                   (0.3250, 0.4974, 0.2350),
                   (-0.2829, 0.1762, 0.2721),
                   (-0.2120, -0.2616, -0.7177))),
}


def preview_size(width: int, height: int, max_side: int = PREVIEW_MAX_SIDE) -> tuple[int, int]:
    """(width, height) of a preview of a ``width`` x ``height`` video: its aspect, the long side at most ``max_side``."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def latent_rgb(latent: Any) -> Any:
    """uint8 RGB ``(h, w, 3)`` on the CPU of one frame's latent ``(c, h, w)``, projected where it lies."""
    import torch

    x = latent.float()
    projection = PROJECTIONS.get(x.shape[0])
    if projection is not None:
        factors = torch.tensor(projection.factors, dtype=x.dtype, device=x.device)
        bias = torch.tensor(projection.bias, dtype=x.dtype, device=x.device)
        rgb = ((torch.einsum("chw,cr->hwr", x, factors) + bias + 1.0) / 2.0).clamp(0.0, 1.0)
    else:
        first = x[torch.arange(3, device=x.device) % x.shape[0]]  # fewer than 3 channels: repeated
        low = first.amin(dim=(1, 2), keepdim=True)
        high = first.amax(dim=(1, 2), keepdim=True)
        rgb = ((first - low) / (high - low).clamp_min(1e-6)).permute(1, 2, 0)
    return (rgb * 255.0).round().to(torch.uint8).cpu().numpy()


def jpeg_within(image: Any, max_b64: int = MAX_PREVIEW_B64) -> tuple[bytes, Any]:
    """(JPEG bytes whose base64 fits ``max_b64``, the PIL image encoded): the first quality of
    :data:`JPEG_QUALITIES` that fits, halving the image while none does (noise-like latents of
    early steps compress worst)."""
    from PIL import Image

    while True:
        for quality in JPEG_QUALITIES:
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=quality)
            if 4 * -(-buf.tell() // 3) <= max_b64:
                return buf.getvalue(), image
        image = image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.BILINEAR)


def preview_event(latents: Any, size: tuple[int, int], step: int, of: int) -> dict[str, Any]:
    """The ``preview`` data of a render's latents ``(1, c, frames, h, w)``: its middle frame at ``size``."""
    from PIL import Image

    frame = latent_rgb(latents[0, :, latents.shape[2] // 2])
    image = Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR)
    data, image = jpeg_within(image)
    return {"preview": {"mime": "image/jpeg", "b64": base64.b64encode(data).decode("ascii"),
                        "width": image.width, "height": image.height, "step": step, "of": of}}


class LatentPreviews:
    """Called on every denoising step; sends a preview of the latents when one is due."""

    def __init__(self, ctx: TaskContext, total_steps: int, size: tuple[int, int],
                 interval_s: float = PREVIEW_INTERVAL_S) -> None:
        self.ctx = ctx
        self.total = total_steps
        self.size = size
        self.interval_s = interval_s
        self.sent = 0
        self._last = float("-inf")

    def step(self, step: int, latents: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return
        self._last = now
        self.ctx.emit_data(preview_event(latents, self.size, step, self.total))
        self.sent += 1
