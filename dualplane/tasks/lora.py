"""Stable Diffusion LoRA training (peft), on the python plane, resumable after a crash.

The UNet of a SD 1.5-class model (``sd15`` from the worker's model store) gets LoRA layers on its
attention projections and learns a set of images under one instance prompt. The frozen parts
(tokenizer, text encoder, VAE) stay warm in ``ctx.models``; the UNet is loaded fresh per job,
since training changes it.

Resuming: every ``checkpoint_every_s`` seconds of training (or every ``checkpoint_every`` steps,
when given) the LoRA weights, the optimizer state and the step count go to the object store as
one ``checkpoint.safetensors`` under the node's deterministic prefix (``jobs/<job>/<node>/``). Every attempt (a retry, or a message re-delivered after a
worker died) first looks for that object and continues from its step. The noise and the
images of step ``s`` depend only on (seed, s), so a resumed run draws what an uninterrupted one
would have.

The output is ``pytorch_lora_weights.safetensors`` in the diffusers format, which
``render_video`` (``lora=``) and any SD 1.5 pipeline's ``load_lora_weights`` read.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dualplane.common.access import InputRef
from dualplane.common.artifacts import ArtifactStore
from dualplane.common.context import TaskContext
from dualplane.common.errors import ObjectNotFound
from dualplane.common.inputs import shown
from dualplane.common.registry import task
from dualplane.ml.model_store import BUILD_LOCK
from dualplane.ml.rng import GLOBAL_RNG, seeded
from dualplane.ml.safetensors_meta import safetensors_metadata

#: Name of the resumable state under the node's prefix.
CHECKPOINT = "checkpoint.safetensors"
#: Name of the diffusers-format LoRA the task outputs.
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
#: Layout version written into a checkpoint's metadata.
CHECKPOINT_FORMAT = "dualplane-lora-checkpoint/1"
#: UNet modules that get LoRA layers (the attention projections, as diffusers' scripts do).
TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]
#: Largest image fetched from a URL.
MAX_IMAGE_BYTES = 50 * 1024 * 1024

_OPTIMIZER_PREFIX = "optimizer."
_LORA_PREFIX = "lora."


class LoraParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: list[InputRef] = Field(..., min_length=1, max_length=1000,
                              description="Training images: object keys (POST /uploads, artifacts) "
                                          "or http(s) URLs.")
    instance_prompt: str = Field("sks style", min_length=1, max_length=1000,
                                 description="Prompt the images are learnt under (use it when rendering).")
    steps: int = Field(10, ge=1, le=100_000,
                       description="Optimizer steps in all (a resumed run counts the earlier ones).")
    rank: int = Field(4, ge=1, le=256, description="LoRA rank (alpha = rank).")
    learning_rate: float = Field(1e-4, gt=0, le=1, description="AdamW learning rate.")
    resolution: int = Field(32, ge=8, le=1024, multiple_of=8,
                            description="Square size images are resized and center-cropped to (multiple of 8).")
    batch_size: int = Field(1, ge=1, le=64, description="Images per step (cycling through the set).")
    seed: int | None = Field(None, ge=0, le=2**63 - 1,
                             description="Seed of the LoRA init, noise and timesteps; "
                                         "by default derived from the job and node ids.")
    model: str = Field("sd15", min_length=1, description="Model registry name of the SD 1.5-class base.")
    # by time by default: a step takes milliseconds on a tiny model and seconds on a big one, so
    # no step count suits both; a crash loses at most this much training
    checkpoint_every_s: float = Field(60.0, gt=0, le=86_400,
                                      description="Write a resumable checkpoint once this many seconds of "
                                                  "training have passed since the last one.")
    checkpoint_every: int | None = Field(None, ge=1, le=100_000,
                                         description="Write a resumable checkpoint every this many steps "
                                                     "instead (checkpoint_every_s is then ignored).")


def load_sd_frozen(path: Path, device: str, dtype: Any) -> dict[str, Any]:
    """The parts training does not change: tokenizer, text encoder, VAE, noise scheduler."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype,
                                                 local_files_only=True)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", dtype=dtype, local_files_only=True)
    scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
    for module in (text_encoder, vae):
        module.requires_grad_(False)
        module.to(device).eval()
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae, "scheduler": scheduler}


@task("train_lora", plane="python", params=LoraParams, gpu=True, kind="training",
      title="Train a style (LoRA) from images")
def train_lora(ctx: TaskContext, p: LoraParams) -> dict[str, Any]:
    """Train a Stable Diffusion LoRA on a few images (resumable); writes `pytorch_lora_weights.safetensors`."""
    if ctx.models is None:
        raise RuntimeError("this worker has no model manager (ctx.models)")
    # a checkpoint of an earlier delivery, read while the model and images load
    checkpoint = ctx.get_artifact_nowait(ArtifactStore.key_for(ctx.job_id, ctx.node_id, CHECKPOINT))
    ctx.progress(0.0, f"loading {p.model}")
    loaded = ctx.models.load(p.model, load_sd_frozen)
    pixels = _load_images(ctx, p)
    trainer = _Trainer(ctx, p, loaded.model, loaded.path, loaded.device, loaded.dtype)
    trainer.encode(pixels)
    resumed = trainer.resume(checkpoint)
    if resumed:
        ctx.emit_data({"resumed_from_step": resumed, "checkpoint": trainer.checkpoint_key},
                      message=f"resumed from step {resumed}")
    started = time.perf_counter()
    final_loss = trainer.train()
    elapsed = time.perf_counter() - started
    ref = ctx.put_artifact(LORA_WEIGHTS, trainer.lora_bytes(), "application/octet-stream")
    done_here = p.steps - resumed
    return {
        "lora": ref["key"],
        "steps": trainer.step,
        "resumed_from_step": resumed,
        "final_loss": final_loss,
        "steps_per_s": round(done_here / elapsed, 2) if elapsed > 0 and done_here else None,
        "instance_prompt": p.instance_prompt,
        "rank": p.rank,
        "model": p.model,
        "device": loaded.device,
        "model_load_s": round(loaded.load_s, 4),
        # the UNet under training is the job's own copy, loaded for it whether the rest was warm or not
        "unet_load_s": round(trainer.unet_load_s, 4),
    }


# -- images ------------------------------------------------------------------------------


def _load_images(ctx: TaskContext, p: LoraParams) -> Any:
    """All images as one float tensor ``(n, 3, r, r)`` in [-1, 1]."""
    import numpy as np
    import torch

    blobs = ctx.fetch_inputs(p.images, max_bytes=MAX_IMAGE_BYTES, what="image")
    arrays = [image_array(blob, p.resolution, what=f"images[{i}] ({shown(ref)})")
              for i, (ref, blob) in enumerate(zip(p.images, blobs, strict=True))]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def image_array(data: bytes, resolution: int, *, what: str = "image") -> Any:
    """Decode, resize the short side to ``resolution``, center-crop; float32 HWC in [-1, 1]."""
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        image: Image.Image = Image.open(io.BytesIO(data))
        image = ImageOps.exif_transpose(image).convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{what}: not a readable image ({exc})") from None
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    return np.asarray(image, dtype=np.float32) / 127.5 - 1.0


# -- training ----------------------------------------------------------------------------


class _Trainer:
    """One attempt's training state: the LoRA UNet, its optimizer and the step count."""

    def __init__(self, ctx: TaskContext, p: LoraParams, frozen: dict[str, Any], path: Path | None,
                 device: str, dtype: Any) -> None:
        import torch
        from diffusers import UNet2DConditionModel
        from peft import LoraConfig

        assert path is not None
        self.ctx, self.p, self.device, self.dtype = ctx, p, device, dtype
        self.frozen = frozen
        self.seed = p.seed if p.seed is not None else _derived_seed(ctx.job_id, ctx.node_id)
        self.checkpoint_key = ArtifactStore.key_for(ctx.job_id, ctx.node_id, CHECKPOINT)
        self.step = 0
        started = time.perf_counter()
        # from_pretrained and add_adapter must not overlap another thread's load; the LoRA's
        # initial weights come from the seed, drawn from the global generator in turn (taken
        # first: a generation holds it for long, and holding BUILD_LOCK would stall loads)
        with ctx.holding(GLOBAL_RNG), BUILD_LOCK, seeded(self.seed % 2**63, device):
            unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", dtype=dtype, local_files_only=True)
            unet.requires_grad_(False)
            unet.add_adapter(LoraConfig(r=p.rank, lora_alpha=p.rank, init_lora_weights="gaussian",
                                        target_modules=TARGET_MODULES))
            self.unet = unet.to(device).train()
        self.unet_load_s = time.perf_counter() - started  # lock waits included: the job waited too
        self.params = [param for param in unet.parameters() if param.requires_grad]
        for param in self.params:  # the LoRA trains in float32 even over a half-precision base
            param.data = param.data.float()
        self.optimizer = torch.optim.AdamW(self.params, lr=p.learning_rate)
        self.latent_mean: Any = None
        self.latent_std: Any = None
        self.text: Any = None
        self._upload: Future[dict[str, Any]] | None = None  # the checkpoint being stored
        self._upload_step = 0
        self._last_checkpoint_t = time.monotonic()

    def encode(self, pixels: Any) -> None:
        """Encode the images once (their latent distributions) and the instance prompt."""
        import torch

        vae, text_encoder, tokenizer = self.frozen["vae"], self.frozen["text_encoder"], self.frozen["tokenizer"]
        with torch.no_grad():
            dist = vae.encode(pixels.to(self.device, self.dtype)).latent_dist
            self.latent_mean, self.latent_std = dist.mean, dist.std
            ids = tokenizer([self.p.instance_prompt], padding="max_length", truncation=True,
                            max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
            self.text = text_encoder(ids.to(self.device))[0]

    def train(self) -> float | None:
        """Steps from the current one to ``p.steps``; returns the last loss."""
        loss = None
        self._last_checkpoint_t = time.monotonic()
        while self.step < self.p.steps:
            loss = self._one_step(self.step)
            self.step += 1
            self.ctx.on_step(self.step, self.p.steps)  # raises TaskCancelled when cancelled
            if self._checkpoint_due():
                self.save_checkpoint(loss)
            elif self._upload is not None and self._upload.done():
                self._checkpoint_stored()
        if self._upload is not None:
            self._checkpoint_stored()
        return loss

    def _one_step(self, step: int) -> float:
        import torch
        import torch.nn.functional as F

        scheduler, vae = self.frozen["scheduler"], self.frozen["vae"]
        generator = torch.Generator(self.device).manual_seed((self.seed * 1_000_003 + step) % 2**63)
        n, b = self.latent_mean.shape[0], self.p.batch_size
        index = torch.tensor([(step * b + k) % n for k in range(b)], device=self.device)
        mean, std = self.latent_mean[index].float(), self.latent_std[index].float()
        eps = torch.randn(mean.shape, generator=generator, device=self.device, dtype=torch.float32)
        latents = (mean + std * eps) * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator, device=self.device, dtype=torch.float32)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator,
                                  device=self.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        text = self.text.expand(b, -1, -1)
        with torch.autocast(device_type=self.device.split(":")[0], dtype=self.dtype,
                            enabled=self.dtype != torch.float32):
            pred = self.unet(noisy.to(self.dtype), timesteps, text).sample
        loss = F.mse_loss(pred.float(), target.float())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at step {step + 1}; lower the learning rate")
        return value

    # -- checkpoints --------------------------------------------------------------------

    def _checkpoint_due(self) -> bool:
        """After a step: is a checkpoint due (never after the last step: the output follows)."""
        if self.step >= self.p.steps:
            return False
        if self.p.checkpoint_every is not None:
            return self.step % self.p.checkpoint_every == 0
        return time.monotonic() - self._last_checkpoint_t >= self.p.checkpoint_every_s

    def save_checkpoint(self, loss: float | None) -> None:
        """LoRA weights + optimizer state + step, as one object (written atomically by S3).

        The bytes are taken here; the upload runs while training goes on. One is in flight at a
        time (a store slower than the checkpoints waits here rather than piling up copies), and
        a worker killed mid-upload leaves the previous checkpoint whole."""
        from safetensors.torch import save as save_safetensors

        tensors, meta = _optimizer_tensors(self.optimizer)
        lora = _lora_state(self.unet)
        tensors.update({_LORA_PREFIX + k: v.detach().float().contiguous().cpu() for k, v in lora.items()})
        metadata = {
            "format": CHECKPOINT_FORMAT, "step": str(self.step), "steps": str(self.p.steps),
            "rank": str(self.p.rank), "model": self.p.model, "seed": str(self.seed),
            "loss": json.dumps(loss), "optimizer": json.dumps(meta),
        }
        data = save_safetensors(tensors, metadata=metadata)
        if self._upload is not None:
            self._checkpoint_stored()
        # the task's own state, not an output: announced by its `checkpoint` event only
        self._upload = self.ctx.put_artifact_nowait(CHECKPOINT, data, "application/octet-stream", record=False)
        self._upload_step = self.step
        self._last_checkpoint_t = time.monotonic()

    def _checkpoint_stored(self) -> None:
        """Wait for the checkpoint upload in flight (raising its error) and announce it."""
        assert self._upload is not None
        upload, self._upload = self._upload, None
        self.ctx.wait(upload)  # a frozen store must not hold a cancelled job
        self.ctx.emit_data({"checkpoint": {"key": self.checkpoint_key, "step": self._upload_step}},
                           message=f"checkpoint at step {self._upload_step}")

    def resume(self, checkpoint: Future[bytes]) -> int:
        """Load the node's checkpoint (being read from the store) if there is one; returns the
        step it resumes from (0: none)."""
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load as load_safetensors

        # no checkpoint is the usual case: test for it without raising, since a raised error's
        # traceback would tie this frame (and the UNet) to the future in a reference cycle
        error = self.ctx.wait_settled(checkpoint)
        if isinstance(error, ObjectNotFound):
            return 0
        data = checkpoint.result()
        metadata = safetensors_metadata(data)
        if metadata.get("format") != CHECKPOINT_FORMAT or metadata.get("rank") != str(self.p.rank) \
                or metadata.get("model") != self.p.model:
            self.ctx.log.warning("ignoring checkpoint %s: it does not match these params (%s)",
                                 self.checkpoint_key, {k: metadata.get(k) for k in ("format", "rank", "model")})
            return 0
        tensors = load_safetensors(data)
        lora = {k[len(_LORA_PREFIX):]: v for k, v in tensors.items() if k.startswith(_LORA_PREFIX)}
        result = set_peft_model_state_dict(self.unet, lora)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"checkpoint {self.checkpoint_key}: unexpected LoRA keys {unexpected[:3]}")
        for param in self.params:
            param.data = param.data.float()
        _load_optimizer(self.optimizer, tensors, json.loads(metadata["optimizer"]), self.device)
        self.seed = int(metadata["seed"])
        self.step = min(int(metadata["step"]), self.p.steps)
        return self.step

    def lora_bytes(self) -> bytes:
        """The trained LoRA in the diffusers format (what ``load_lora_weights`` reads)."""
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers

        layers = convert_state_dict_to_diffusers(_lora_state(self.unet))
        with tempfile.TemporaryDirectory(prefix="dp-lora-") as tmp:
            StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=layers, safe_serialization=True)
            return Path(tmp, LORA_WEIGHTS).read_bytes()


def _lora_state(unet: Any) -> dict[str, Any]:
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(unet)


def _derived_seed(job_id: str, node_id: str) -> int:
    """Same on every attempt of the node, so a resumed run continues the same noise."""
    return int.from_bytes(hashlib.sha256(f"{job_id}/{node_id}".encode()).digest()[:7], "big")


def _optimizer_tensors(optimizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Flatten ``optimizer.state_dict()``: tensors by ``optimizer.<param>.<name>``, the rest as JSON."""
    import torch

    state = optimizer.state_dict()
    tensors: dict[str, Any] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPTIMIZER_PREFIX}{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _load_optimizer(optimizer: Any, tensors: dict[str, Any], meta: dict[str, Any], device: str) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(_OPTIMIZER_PREFIX):
            index, name = key[len(_OPTIMIZER_PREFIX):].split(".", 1)
            # AdamW keeps ``step`` on the CPU unless capturable; the moments live with the params
            state.setdefault(int(index), {})[name] = value if name == "step" else value.to(device)
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
