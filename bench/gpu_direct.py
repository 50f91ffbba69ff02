"""The DIRECT side of ``bench/gpu_tasks.py``: each task's pipeline called the way a user's script
calls it, on the worker's warm models, without the framework around it.

``bench/gpu_worker.py`` runs these inside the worker process (its ``bench_direct`` task);
``gpu_tasks.py`` names them in its ``BENCHES``. Both import this module, and neither imports
the other's way back: the benchmark imports the worker script (its catalog), never the reverse.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from dualplane.ml.model_store import ModelManager

log = logging.getLogger("bench.gpu_direct")


@dataclass
class Direct:
    """One direct run: seconds of the core call, seconds of the output encoding, units of work."""

    core_s: float
    encode_s: float
    work: float
    audio_s: float | None = None



# -- a TaskContext stand-in for the direct runs --------------------------------------------------


class DirectContext:
    """What a task (or its training loop) reads of a TaskContext, without the framework:
    artifacts in memory, progress and cancellation as no-ops."""

    def __init__(self, models: ModelManager, blobs: dict[str, bytes]) -> None:
        self.job_id, self.node_id, self.attempt = "direct", "bench", 1
        self.models = models
        self.log = log
        self._blobs = blobs
        self.outputs: dict[str, bytes] = {}

    def progress(self, fraction: float, message: str | None = None) -> None:
        pass

    def on_step(self, step: int, total: int, state: Any = None) -> None:
        pass

    def check_cancelled(self) -> None:
        pass

    @contextmanager
    def holding(self, lock: Any) -> Iterator[None]:
        with lock:
            yield

    def emit_data(self, data: dict[str, Any], message: str | None = None) -> None:
        pass

    def get_artifact(self, key: str) -> bytes:
        return self._blobs[key]

    def fetch_inputs(self, refs: list[str], *, max_bytes: int, what: str = "input") -> list[bytes]:
        return [self._blobs[ref] for ref in refs]

    def put_artifact(self, name: str, data: bytes, content_type: str) -> dict[str, Any]:
        self.outputs[name] = data
        return {"key": f"jobs/{self.job_id}/{self.node_id}/{name}", "size": len(data)}

    def put_artifact_nowait(self, name: str, data: bytes, content_type: str, *,
                            record: bool = True) -> Future[dict[str, Any]]:
        done: Future[dict[str, Any]] = Future()
        done.set_result(self.put_artifact(name, data, content_type))
        return done


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# -- the tasks, direct -----------------------------------------------------------------------------


def direct_music(models: ModelManager, params: dict[str, Any], blobs: dict[str, bytes]) -> Direct:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    from dualplane.ml.audio import wav_bytes
    from dualplane.tasks.music import MusicParams, load_musicgen

    p = MusicParams(**params)
    loaded = models.load(p.model, load_musicgen)
    processor, model = loaded.model
    audio_cfg = model.config.audio_encoder
    max_new_tokens = max(1, round(p.duration_s * audio_cfg.frame_rate)) + model.decoder.num_codebooks - 1
    tokens = 0

    class _Count(StoppingCriteria):  # what the task's progress criterion does, minus the progress
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            nonlocal tokens
            tokens += 1
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    started = time.perf_counter()
    inputs = processor(text=[p.prompt], padding=True, return_tensors="pt").to(loaded.device)
    torch.manual_seed(p.seed or 0)
    with torch.inference_mode():
        audio = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=True, guidance_scale=p.guidance_scale,
            temperature=p.temperature, stopping_criteria=StoppingCriteriaList([_Count()]),
        )
    samples = audio[0].float().cpu().numpy()
    core = time.perf_counter() - started
    rate = int(audio_cfg.sampling_rate)
    wav_bytes(samples, rate)
    return Direct(core, time.perf_counter() - started - core, tokens, samples.shape[-1] / rate)


def direct_video(models: ModelManager, params: dict[str, Any], blobs: dict[str, bytes]) -> Direct:
    import torch

    from dualplane.tasks.video import VideoParams, load_video_pipeline, mp4_bytes, png_bytes

    p = VideoParams(**params)
    loaded = load_video_pipeline(models, p)
    pipe = loaded.model.pipe
    steps = 0

    def on_step(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        nonlocal steps
        steps = i + 1
        return {}

    started = time.perf_counter()
    with torch.inference_mode():
        latents = pipe(
            prompt=p.prompt, negative_prompt=p.negative_prompt, num_frames=p.num_frames,
            num_inference_steps=p.steps, guidance_scale=p.guidance_scale, width=p.width, height=p.height,
            generator=torch.Generator("cpu").manual_seed(p.seed or 0), output_type="latent",
            callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"],
        ).frames
        video = pipe.decode_latents(latents, decode_chunk_size=16)
        frames = pipe.video_processor.postprocess_video(video=video, output_type="np")[0]
    frames = (frames.clip(0, 1) * 255).round().astype("uint8")
    core = time.perf_counter() - started
    mp4_bytes(frames, p.fps)
    png_bytes(frames[0])
    return Direct(core, time.perf_counter() - started - core, steps)


def direct_lora(models: ModelManager, params: dict[str, Any], blobs: dict[str, bytes]) -> Direct:
    import numpy as np
    import torch

    from dualplane.tasks.lora import LoraParams, _Trainer, image_array, load_sd_frozen

    p = LoraParams(**params)
    loaded = models.load(p.model, load_sd_frozen)
    ctx = DirectContext(models, blobs)
    started = time.perf_counter()
    pixels = torch.from_numpy(np.stack([image_array(blobs[key], p.resolution) for key in p.images]))
    trainer = _Trainer(ctx, p, loaded.model, loaded.path, loaded.device, loaded.dtype)  # type: ignore[arg-type]
    trainer.encode(pixels.permute(0, 3, 1, 2).contiguous())
    trainer.train()
    _sync(loaded.device)
    core = time.perf_counter() - started
    trainer.lora_bytes()
    return Direct(core, time.perf_counter() - started - core, trainer.step)


def direct_voice(models: ModelManager, params: dict[str, Any], blobs: dict[str, bytes]) -> Direct:
    from dualplane.tasks.train_voice import TrainVoiceParams, train_voice

    p = TrainVoiceParams(**params)
    ctx = DirectContext(models, blobs)
    started = time.perf_counter()
    out = train_voice(ctx, p)  # type: ignore[arg-type]
    return Direct(time.perf_counter() - started, 0.0, out["steps"])


def direct_speak(models: ModelManager, params: dict[str, Any], blobs: dict[str, bytes]) -> Direct:
    import numpy as np
    import torch

    from dualplane.ml.audio import wav_bytes
    from dualplane.ml.speecht5_dropout import dropout_rng
    from dualplane.tasks.speecht5 import load_speecht5_tts, load_speecht5_vocoder
    from dualplane.tasks.synthesize_voice import SynthesizeVoiceParams, split_text

    p = SynthesizeVoiceParams(**params)
    tts = models.load(p.model, load_speecht5_tts)
    processor, model = tts.model
    vocoder = models.load(p.vocoder, load_speecht5_vocoder).model
    device, config = tts.device, model.config
    dtype = next(model.parameters()).dtype
    speaker = torch.zeros(1, config.speaker_embedding_dim, device=device, dtype=dtype)
    sample_rate = int(vocoder.config.sampling_rate)
    hop = int(np.prod(vocoder.config.upsample_rates))
    gap = np.zeros(round(p.pause_s * sample_rate), dtype=np.float32)
    started = time.perf_counter()
    pieces: list[Any] = []
    for i, chunk in enumerate(split_text(p.text, p.max_chunk_chars)):
        ids = processor(text=chunk, return_tensors="pt")["input_ids"][:, : config.max_text_positions - 1]
        with dropout_rng(device, p.seed * 1_000_003 + i), torch.inference_mode():
            mel = model.generate_speech(ids.to(device), speaker, threshold=p.threshold,
                                        minlenratio=p.minlenratio, maxlenratio=p.maxlenratio)
            audio = vocoder(mel.to(next(vocoder.parameters()).dtype))
        if pieces and gap.size:
            pieces.append(gap)
        pieces.append(audio.float().cpu().numpy().reshape(-1))
    samples = np.concatenate(pieces)[None, :]
    core = time.perf_counter() - started
    wav_bytes(samples, sample_rate)
    return Direct(core, time.perf_counter() - started - core, samples.shape[-1] // hop,
                  samples.shape[-1] / sample_rate)


# -- the tasks, as the worker reports them -----------------------------------------------------


#: Bench name (a key of ``gpu_tasks.BENCHES``) → its direct call.
DIRECT = {"music": direct_music, "video": direct_video, "lora": direct_lora, "voice": direct_voice,
          "speak": direct_speak}
