"""GPU task benchmark: per-task throughput, and the worker's overhead over calling the pipeline directly.

    .venv/bin/python bench/gpu_tasks.py [--size tiny|full-cpu|full] [--tasks music,video,lora,voice,speak] [--runs 9]

Starts its own redis-server and SeaweedFS (``weed mini``) in a temporary directory, builds the
models (``--size tiny``: the tiny random-weight models of ``dualplane/ml/tiny.py``;
``--size full``: random weights in the *full-size* configurations of the real checkpoints, built
below: musicgen-small, Stable Diffusion 1.5, the AnimateDiff v1.5 motion adapter, SpeechT5 TTS and
its HiFi-GAN), uploads them under the registry names (``models/<name>/``, where the packaged
``models.toml`` points), runs one ``ControlPlane`` in this process and one worker subprocess
(``python -m dualplane worker``), and for each task:

(a) DIRECT — the core call the task makes, with the same arguments, on the same model loaded
    with the same loader through a ``ModelManager`` over the same object store, timed around the
    call alone. Where: ``--direct worker`` (default) runs it inside the worker process, as a
    ``bench_direct`` job of ``bench/gpu_worker.py`` (the worker this script starts: ``dualplane
    worker`` plus that task), on the worker's own warm model; the queue, the claim and the
    upload happen around it, outside the timing. Two processes running the same tiny model
    differed by up to 20 % between runs of this script on the development machine (memory
    placement, caches), more than the overhead measured; in one process that is gone. The
    worker's idle background (a wake-up every 0.5-2 s) is there on both sides. ``--direct
    process`` runs it in this process instead (its own ``ModelManager``), as a script would:

    * ``generate_music``: the processor + ``model.generate`` (same ``max_new_tokens``, sampling,
      guidance, temperature, seed and a token-counting stopping criterion), audio to numpy;
    * ``render_video``: the AnimateDiff pipeline call (same prompt, frames, size, steps, guidance,
      seeded generator, ``output_type="latent"`` with a per-step callback), then the same VAE decode
      and post-processing to uint8 frames;
    * ``train_lora``: the task's own training loop (``lora._Trainer``: a fresh UNet from disk with
      the LoRA added, image/prompt encoding, the optimizer steps), as the task runs it per job;
    * ``synthesize_voice``: per text chunk, the processor + ``generate_speech`` + the HiFi-GAN
      vocoder, under the same seeded dropout generator, the chunks joined with the same pauses;
    * ``train_voice``: its optimisation loop is not callable apart from the task, so DIRECT runs the
      task function itself in this process with an in-memory stand-in for the TaskContext (clips
      from memory, output kept in memory, progress and cancellation no-ops). That is the whole
      task compute without the framework (no queue, no Redis progress events, no object store).

    Encoding the output (WAV / MP4 + PNG / the LoRA safetensors) the same way the task does is
    part of DIRECT: a user calling the pipeline has to write its result too. It is also shown on
    its own ("encode"), and the overhead over the bare pipeline call is shown as well.

(b) VIA THE WORKER — N identical one-node jobs are submitted one at a time through the in-process
    ``ControlPlane.submit``; each is timed from just before submit to its terminal event in Redis
    (``e2e``). The node's own ``started_at → finished_at`` (stamped by the worker) is read back too
    (``node``). Untimed runs come first on both sides (``--warmup``, default 2: models loaded,
    first-call costs paid; the first timed runs after a single one were still slower on either
    side). Direct and worker runs alternate, so drift on a
    shared machine hits both alike.

Overhead: run i of the worker is paired with run i of DIRECT (they alternate), and the overhead
is the median of the paired ratios e2e_i / direct_i − 1, with their interquartile range (pairing
cancels most of the drift of a shared machine; the spread says how far to trust the median).
"best-of" compares the fastest run of each side: noise on a shared machine only ever adds time,
so the minima are the least disturbed estimate of what each side costs.
What it contains: queueing and dispatch (submit, stream read, hand-back), progress events to
Redis, the task's input fetches (images, clips) and output upload to the object store, and on
train_lora the checkpoint uploads (overlapped with training). "node ovh" uses the node's own
run time instead of e2e; "vs bare" compares e2e with the bare pipeline call (no encode). The
sizes are chosen so that a direct run takes about a second on a 2-core CPU with the tiny models;
with smaller ones the fixed costs (an upload, a few Redis round trips) dominate. Throughput is
given both for the direct call and as the worker delivers it end to end.

Threads: both sides run the pipeline in a pool thread (the worker runs sync tasks in one). On a
host without an NVIDIA driver both run torch with ONE intra-op thread by default
(``--torch-threads``), and numpy's BLAS with one too (``OMP/MKL/OPENBLAS_NUM_THREADS``, set in
this process before torch loads and passed to the worker): with torch's default of one per core,
the tiny pipelines called from a non-main thread ran 2-5x slower than from the main thread on the
2-core development machine, and unevenly between the two processes, which swamped the
comparison; with numpy on two threads here and one in the worker, train_voice's direct runs used
more CPU than its jobs. With a driver the defaults are the libraries' own.

``--size full`` is for a CUDA host (its jobs, 16 frames at 512x512 and 25 steps, would take hours
on a CPU): the builders below give the real parameter counts (MusicGen small 587 M, UNet 860 M,
VAE 84 M, CLIP text 123 M, motion adapter 453 M, SpeechT5 144 M, HiFi-GAN 13 M).
``--size full-cpu`` builds the same full-size models and trims the jobs (2 s of music; 4 frames of
128x128 in 2 steps; 4 training steps at 128 px) so that one takes 10-20 s on a 2-core CPU: the
framework's per-job work (dispatch, events, fetches, uploads, a fresh UNet per training job) is
that of a real job, against a real model's compute.

Prints figures; asserts nothing about speed. Needs torch (``make venv-ml``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gpu_worker  # bench/ is this script's directory
from gpu_direct import DIRECT, Direct

from dualplane.cli.planes import run_async
from dualplane.common.artifacts import ArtifactStore, store_from_settings
from dualplane.common.settings import Settings
from dualplane.common.statuses import FINISHED
from dualplane.control_plane import ControlPlane
from dualplane.devstack.services import start_redis, start_s3
from dualplane.ml.model_store import ModelManager, ModelRegistry, ModelStore, upload_model_dir

log = logging.getLogger("bench.gpu_tasks")

#: Per task: the job params every size shares (inputs such as images and clips are added at run time).
BASE_PARAMS: dict[str, dict[str, Any]] = {
    "music": {"prompt": "lo fi hip hop beat with piano and drums", "seed": 1},
    "video": {"prompt": "a cat with a dog", "fps": 8, "seed": 7},
    "lora": {"instance_prompt": "sks style", "rank": 4, "seed": 1},
    "voice": {"transcripts": ["the cat and the dog", ""], "learning_rate": 0.05, "seed": 3},
    "speak": {"text": "hello rainy night. the cat and the dog play jazz with piano and bass. "
                      "a slow happy song of the night!", "seed": 7},
}
#: Per size and task: the params that set how much work a job is.
JOB_SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "music": {"duration_s": 20.0},
        "video": {"num_frames": 8, "steps": 4, "width": 32, "height": 32},
        "lora": {"steps": 24, "resolution": 32},
        "voice": {"steps": 100},
        "speak": {"minlenratio": 16.0, "maxlenratio": 16.0},
    },
    # full-size configurations with the job trimmed so a CPU runs one in seconds, not hours: the
    # per-job work of the framework is the same as at "full", the compute much smaller
    "full-cpu": {
        "music": {"duration_s": 2.0},
        "video": {"num_frames": 4, "steps": 2, "width": 128, "height": 128},
        "lora": {"steps": 4, "resolution": 128},
        "voice": {"steps": 20},
        "speak": {"minlenratio": 4.0, "maxlenratio": 4.0},
    },
    "full": {
        "music": {"duration_s": 10.0},
        "video": {"num_frames": 16, "steps": 25, "width": 512, "height": 512},
        "lora": {"steps": 50, "resolution": 512},
        "voice": {"steps": 20},
        "speak": {"minlenratio": 4.0, "maxlenratio": 4.0},
    },
}
#: Per size and task: the job params.
SIZES = {size: {name: {**BASE_PARAMS[name], **scale[name]} for name in BASE_PARAMS}
         for size, scale in JOB_SIZES.items()}
#: Seconds of each training clip of train_voice, by size.
CLIP_SECONDS = {"tiny": (1.2, 0.9), "full-cpu": (4.0, 3.0), "full": (4.0, 3.0)}
ALL_TASKS = ("music", "video", "lora", "voice", "speak")


# -- results ---------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    task: str
    unit: str
    sizes: str
    direct: list[Direct] = field(default_factory=list)
    e2e_s: list[float] = field(default_factory=list)
    node_s: list[float] = field(default_factory=list)
    direct_cpu_s: list[float] = field(default_factory=list)  # CPU seconds of the whole stack, per run
    worker_cpu_s: list[float] = field(default_factory=list)
    reported_s: list[float] = field(default_factory=list)  # the task's own compute time, if it says
    work: list[float] = field(default_factory=list)  # units of work per worker run
    audio_s: list[float] = field(default_factory=list)


class CpuClock:
    """CPU seconds (user + system, all threads) used so far by a set of processes, from /proc:
    this one, the worker, redis-server and weed. Contention from other work on the host inflates
    wall-clock times, much less the CPU each side spends. NaN where /proc is not there."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __call__(self) -> float:
        total = 0
        for pid in self.pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                return math.nan
            fields = stat.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        return total / self._tick


def reported_music(out: dict[str, Any]) -> tuple[float, float | None, float | None]:
    """(units of work, the task's own compute seconds, audio seconds) from a node's output."""
    return out["tokens"], out["tokens"] / out["tokens_per_s"], out["duration_s"]


def reported_steps(out: dict[str, Any]) -> tuple[float, float | None, float | None]:
    rate = out.get("steps_per_s")
    return out["steps"], (out["steps"] / rate if rate else None), None


def reported_speak(out: dict[str, Any]) -> tuple[float, float | None, float | None]:
    return out["frames"], out["generate_s"], out["duration_s"]


@dataclass(frozen=True)
class Bench:
    name: str
    task: str
    unit: str
    models: tuple[str, ...]
    direct: Callable[[ModelManager, dict[str, Any], dict[str, bytes]], Direct]
    reported: Callable[[dict[str, Any]], tuple[float, float | None, float | None]]


BENCHES = {
    "music": Bench("music", "generate_music", "tokens", ("musicgen-small",), DIRECT["music"], reported_music),
    "video": Bench("video", "render_video", "steps", ("sd15", "animatediff-motion-adapter"),
                   DIRECT["video"], reported_steps),
    "lora": Bench("lora", "train_lora", "steps", ("sd15",), DIRECT["lora"], reported_steps),
    "voice": Bench("voice", "train_voice", "steps", ("speecht5-tts",), DIRECT["voice"], reported_steps),
    "speak": Bench("speak", "synthesize_voice", "frames", ("speecht5-tts", "speecht5-hifigan"),
                   DIRECT["speak"], reported_speak),
}


# -- inputs ------------------------------------------------------------------------------------


def png_images(count: int = 2) -> list[bytes]:
    """Small striped PNGs (as the tests use); train_lora resizes them to its resolution."""
    import numpy as np
    from PIL import Image

    out = []
    for i in range(count):
        pixels = np.zeros((48, 40, 3), dtype=np.uint8)
        pixels[:, ::4] = (255, 40 * i, 0)
        pixels[::6, :] = (0, 0, 255)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def voiced_wav(f0: float, seconds: float, seed: int, rate: int = 16000) -> bytes:
    """A buzzy harmonic tone with vibrato: speech-like enough for mel features (16-bit mono WAV)."""
    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))) / rate
    x = sum(0.25 / k * np.sin(k * phase) for k in range(1, 8))
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t) ** 2) + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(x, -1, 1) * 32767).round().astype("<i2").tobytes())
    return buf.getvalue()


async def prepare_inputs(name: str, size: str, store: ArtifactStore, blobs: dict[str, bytes]) -> dict[str, Any]:
    """The job params of a task, with its input files uploaded (and kept in ``blobs`` for direct)."""
    params = dict(SIZES[size][name])
    if name == "lora":
        params["images"] = []
        for i, data in enumerate(png_images()):
            ref = await store.put_upload("bench", f"img{i}.png", data, "image/png")
            blobs[ref["key"]] = data
            params["images"].append(ref["key"])
        params["checkpoint_every"] = params["steps"]  # no mid-run checkpoint: time the training
    elif name == "voice":
        params["clips"] = []
        for i, (f0, seconds) in enumerate(zip((110.0, 240.0), CLIP_SECONDS[size], strict=True)):
            data = voiced_wav(f0, seconds, seed=i)
            ref = await store.put_upload("bench", f"clip{i}.wav", data, "audio/wav")
            blobs[ref["key"]] = data
            params["clips"].append(ref["key"])
    return params


def describe(name: str, params: dict[str, Any]) -> str:
    p = params
    if name == "music":
        return f"duration_s={p['duration_s']}"
    if name == "video":
        return f"{p['num_frames']} frames {p['width']}x{p['height']}, {p['steps']} steps"
    if name == "lora":
        return f"{p['steps']} steps @{p['resolution']}px, rank {p['rank']}, {len(p['images'])} images"
    if name == "voice":
        return f"{p['steps']} steps, {len(p['clips'])} clips"
    return f"{len(p['text'])} chars, len ratio {p['minlenratio']}"


# -- full-size models ------------------------------------------------------------------------------
#
# Random weights in the configurations of the real checkpoints (what matters for timing), saved in
# float16 (the loaders cast to the worker's dtype). The tokenizers / processors are the tiny ones
# (their ids fit the full vocabularies); the CLIP tokenizer pads to 77 tokens as the real one does.


def _tiny_dir(builder: Callable[[Path], Path], tmp: str) -> Path:
    return builder(Path(tmp) / "tiny")


def build_full_musicgen(out: Path) -> Path:
    """musicgen-small: T5-base text encoder, EnCodec 32 kHz (4 codebooks of 2048, 50 frames/s),
    a 24-layer 1024-wide decoder."""
    import torch
    from transformers import (
        EncodecConfig,
        EncodecFeatureExtractor,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        MusicgenProcessor,
        T5Config,
    )

    from dualplane.ml.tiny import build_musicgen

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = MusicgenProcessor.from_pretrained(_tiny_dir(build_musicgen, tmp)).tokenizer
    torch.manual_seed(0)
    text = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
                    feed_forward_proj="relu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    audio = EncodecConfig(
        sampling_rate=32000, audio_channels=1, hidden_size=128, num_filters=64, num_residual_layers=1,
        upsampling_ratios=[8, 5, 4, 4], num_lstm_layers=2, codebook_size=2048, codebook_dim=128,
        target_bandwidths=[2.2], normalize=False, use_causal_conv=False, use_conv_shortcut=False,
        pad_mode="reflect", norm_type="weight_norm", trim_right_ratio=1.0,
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=2048, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, ffn_dim=4096,
        num_codebooks=4, max_position_embeddings=2048, audio_channels=1,
        pad_token_id=2048, bos_token_id=2048, decoder_start_token_id=2048,
    )
    model = MusicgenForConditionalGeneration(
        MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)).eval()
    gen = model.generation_config
    for key in ("decoder_start_token_id", "pad_token_id", "bos_token_id"):
        setattr(gen, key, 2048)
    gen.do_sample, gen.guidance_scale, gen.max_length = True, 3.0, 1500
    out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(out)
    MusicgenProcessor(feature_extractor=EncodecFeatureExtractor(feature_size=1, sampling_rate=32000),
                      tokenizer=tokenizer).save_pretrained(out)
    return out


def build_full_sd15(out: Path) -> Path:
    """Stable Diffusion 1.5: CLIP ViT-L/14 text encoder, the 860M UNet, the KL VAE, DDIM."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from dualplane.ml.tiny import build_sd15

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(_tiny_dir(build_sd15, tmp) / "tokenizer", model_max_length=77)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # the defaults are SD 1.x's
    vae = AutoencoderKL(
        block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4, sample_size=512,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.to(torch.float16).save_pretrained(out)
    return out


def build_full_motion_adapter(out: Path) -> Path:
    """AnimateDiff motion adapter v1.5-2 dimensions (MotionAdapter's defaults)."""
    import torch
    from diffusers import MotionAdapter

    torch.manual_seed(0)
    MotionAdapter().to(torch.float16).save_pretrained(out)
    return out


def build_full_speecht5_tts(out: Path) -> Path:
    """SpeechT5 TTS with the default (microsoft/speecht5_tts) dimensions: 768 wide, 12 + 6 layers,
    80 mel bins, 512-dim speaker embeddings."""
    import torch
    from transformers import (
        SpeechT5Config,
        SpeechT5FeatureExtractor,
        SpeechT5ForTextToSpeech,
        SpeechT5Processor,
    )

    from dualplane.ml.tiny import build_speecht5_tts

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = SpeechT5Processor.from_pretrained(_tiny_dir(build_speecht5_tts, tmp)).tokenizer
    torch.manual_seed(0)
    config = SpeechT5Config(vocab_size=max(81, len(tokenizer)), pad_token_id=1, bos_token_id=0,
                            eos_token_id=2, decoder_start_token_id=2)
    out.mkdir(parents=True, exist_ok=True)
    SpeechT5ForTextToSpeech(config).eval().half().save_pretrained(out)
    SpeechT5Processor(feature_extractor=SpeechT5FeatureExtractor(), tokenizer=tokenizer).save_pretrained(out)
    return out


def build_full_hifigan(out: Path) -> Path:
    """The SpeechT5 HiFi-GAN vocoder with its default (microsoft/speecht5_hifigan) dimensions."""
    import torch
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    torch.manual_seed(0)
    SpeechT5HifiGan(SpeechT5HifiGanConfig()).eval().half().save_pretrained(out)
    return out


FULL_BUILDERS: dict[str, Callable[[Path], Path]] = {
    "musicgen-small": build_full_musicgen,
    "sd15": build_full_sd15,
    "animatediff-motion-adapter": build_full_motion_adapter,
    "speecht5-tts": build_full_speecht5_tts,
    "speecht5-hifigan": build_full_hifigan,
}


async def build_and_upload(size: str, names: list[str], store: ArtifactStore, root: Path) -> None:
    """Build each model, upload it under ``models/<name>/``, and drop the local copy."""
    from dualplane.ml.tiny import BUILDERS

    builders = BUILDERS if size == "tiny" else FULL_BUILDERS
    await store.ensure_bucket()
    for name in names:
        started = time.perf_counter()
        target = root / name
        target.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(builders[name], target)
        built = time.perf_counter()
        await upload_model_dir(store, name, target)
        size_mb = sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) / 1e6
        shutil.rmtree(target, ignore_errors=True)
        print(f"  model {name} ({size}): built in {built - started:.1f} s, {size_mb:,.1f} MB uploaded in "
              f"{time.perf_counter() - built:.1f} s", flush=True)


# -- the run ---------------------------------------------------------------------------------------


def thread_env(threads: int) -> dict[str, str]:
    """Thread-pool sizes of OpenMP (torch), MKL and OpenBLAS (numpy), and the worker's own
    setting for its task threads (DUALPLANE_TORCH_THREADS)."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "DUALPLANE_TORCH_THREADS")
    return {name: str(threads) for name in names}


def start_worker(settings: Settings, cache_dir: Path, log_path: Path, torch_threads: int) -> subprocess.Popen[bytes]:
    """``bench/gpu_worker.py``: ``dualplane worker`` plus the ``bench_direct`` task."""
    assert settings.redis_url and settings.s3_endpoint
    env = dict(os.environ, REDIS_URL=settings.redis_url, S3_ENDPOINT=settings.s3_endpoint,
               S3_ACCESS_KEY=settings.s3_access_key or "", S3_SECRET_KEY=settings.s3_secret_key or "",
               S3_BUCKET=settings.s3_bucket, DUALPLANE_CONCURRENCY="1", DUALPLANE_WORKER_ID="bench-gpu-worker",
               DUALPLANE_WORKER_PORT="0", DUALPLANE_LOG_LEVEL="WARNING",
               DUALPLANE_MODEL_CACHE_DIR=str(cache_dir))
    env.pop("DUALPLANE_MODELS_CONFIG", None)  # the packaged registry, as the direct side uses
    if torch_threads:
        env.update(thread_env(torch_threads))
    return subprocess.Popen([sys.executable, str(Path(__file__).with_name("gpu_worker.py"))], env=env,
                            stdout=log_path.open("wb"), stderr=subprocess.STDOUT)


async def via_worker(plane: ControlPlane, bench: Bench, params: dict[str, Any], timeout_s: float,
                     worker: subprocess.Popen[bytes], log_path: Path) -> tuple[float, float, dict[str, Any]]:
    """One job through the control plane and the worker: (e2e s, node run s, node output)."""
    graph = {"nodes": [{"id": bench.name, "task": bench.task, "plane": "python", "params": params}]}
    started = time.perf_counter()
    job_id = (await plane.submit(graph)).job_id
    deadline = time.monotonic() + timeout_s
    # short waits, so a dead worker or the deadline is noticed between them
    while (job := await plane.wait_finished(job_id, 2.0)).status not in FINISHED:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited ({worker.returncode}); log tail:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} ({bench.task}) not finished after {timeout_s} s")
    e2e = time.perf_counter() - started
    node = job.graph.nodes[0]
    if job.status != "succeeded" or node.output is None:
        raise RuntimeError(f"{bench.task} job {job_id} {job.status}: {node.error}")
    assert node.started_at is not None and node.finished_at is not None
    return e2e, node.finished_at - node.started_at, node.output


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "<no log>"


async def measure(bench: Bench, args: argparse.Namespace, plane: ControlPlane, models: ModelManager,
                  store: ArtifactStore, worker: subprocess.Popen[bytes], log_path: Path, cpu: CpuClock) -> Result:
    blobs: dict[str, bytes] = {}
    params = await prepare_inputs(bench.name, args.size, store, blobs)
    result = Result(bench.name, bench.task, bench.unit, describe(bench.name, params))
    print(f"{bench.task}: {result.sizes}", flush=True)

    def one_direct() -> Direct:
        if args.torch_threads:
            import torch

            torch.set_num_threads(args.torch_threads)
        return bench.direct(models, params, blobs)

    direct_job = dataclasses.replace(bench, task="bench_direct")
    direct_params = {"bench": bench.name, "params": params, "inputs": sorted(blobs)}

    async def direct() -> Direct:
        if args.direct == "process":  # in a pool thread, as the worker runs a task
            return await asyncio.to_thread(one_direct)
        out = (await via_worker(plane, direct_job, direct_params, args.timeout, worker, log_path))[2]
        return Direct(**out)

    t0 = time.perf_counter()
    for _ in range(args.warmup):  # model loaded, first-call costs paid
        await direct()
    t1 = time.perf_counter()
    for _ in range(args.warmup):  # the worker alike
        await via_worker(plane, bench, params, args.timeout, worker, log_path)
    print(f"  warm-up: direct {t1 - t0:.1f} s, worker {time.perf_counter() - t1:.1f} s (model loads included)",
          flush=True)
    for i in range(args.runs):  # alternate which side goes first
        for side in ("direct", "worker") if i % 2 == 0 else ("worker", "direct"):
            before = cpu()
            if side == "direct":
                d = await direct()
                result.direct_cpu_s.append(cpu() - before)
            else:
                e2e, node_s, out = await via_worker(plane, bench, params, args.timeout, worker, log_path)
                result.worker_cpu_s.append(cpu() - before)
        work, reported, audio = bench.reported(out)
        result.direct.append(d)
        result.e2e_s.append(e2e)
        result.node_s.append(node_s)
        result.work.append(work)
        if reported is not None:
            result.reported_s.append(reported)
        if audio is not None:
            result.audio_s.append(audio)
        print(f"  run {i + 1}/{args.runs}: direct {d.core_s * 1e3:8.1f} ms (+{d.encode_s * 1e3:.1f} encode)  "
              f"worker e2e {e2e * 1e3:8.1f} ms  node {node_s * 1e3:8.1f} ms  "
              f"[{d.work:g} / {work:g} {bench.unit}]  cpu {result.direct_cpu_s[-1]:.2f} / "
              f"{result.worker_cpu_s[-1]:.2f} s", flush=True)
    models.clear()  # free this side's copy before the next task's models (GPU memory)
    return result


def med(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def paired_overhead(worker_s: list[float], direct_s: list[float]) -> tuple[float, float, float]:
    """Median and interquartile range of worker_i / direct_i − 1 over the paired runs."""
    ratios = sorted(w / d - 1 for w, d in zip(worker_s, direct_s, strict=True))
    if len(ratios) < 4:
        return statistics.median(ratios), ratios[0], ratios[-1]
    q1, q2, q3 = statistics.quantiles(ratios, n=4)
    return q2, q1, q3


def report(results: list[Result], args: argparse.Namespace) -> None:
    rows = [("task", "sizes", "direct ms", "encode ms", "e2e ms", "overhead [IQR]", "ovh ms", "best-of",
             "node ovh", "vs bare", "cpu ovh", "direct thrpt", "via worker thrpt")]
    for r in results:
        direct_each = [d.core_s + d.encode_s for d in r.direct]
        direct, core = med(direct_each), med([d.core_s for d in r.direct])
        encode = med([d.encode_s for d in r.direct])
        e2e = med(r.e2e_s)
        over, q1, q3 = paired_overhead(r.e2e_s, direct_each)
        node_over = paired_overhead(r.node_s, direct_each)[0]
        bare = paired_overhead(r.e2e_s, [d.core_s for d in r.direct])[0]
        work_direct, work_worker = med([d.work for d in r.direct]), med(r.work)
        cpu_direct, cpu_worker = med(r.direct_cpu_s), med(r.worker_cpu_s)
        rows.append((
            r.task, r.sizes, f"{direct * 1e3:.1f}", f"{encode * 1e3:.1f}", f"{e2e * 1e3:.1f}",
            f"{over:+.1%} [{q1:+.1%}, {q3:+.1%}]", f"{(e2e - direct) * 1e3:+.0f}",
            f"{min(r.e2e_s) / min(direct_each) - 1:+.1%}", f"{node_over:+.1%}",
            f"{bare:+.1%}", f"{(cpu_worker - cpu_direct) / cpu_direct:+.1%} ({cpu_direct:.2f}/{cpu_worker:.2f} s)",
            f"{work_direct / core:.1f} {r.unit}/s", f"{work_worker / e2e:.1f} {r.unit}/s",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"\nmedians of {args.runs} runs each ({args.size} models, device {_device()}):")
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print()
    for r in results:
        reported = med(r.reported_s)
        line = f"{r.task}: the task's own compute timer says {reported * 1e3:.1f} ms" if r.reported_s else r.task
        if r.audio_s and r.name == "speak":
            audio = med(r.audio_s)
            direct = med([d.core_s for d in r.direct])
            line += (f"; {audio:.2f} s of audio: real-time factor {direct / audio:.3f} direct, "
                     f"{med(r.e2e_s) / audio:.3f} via the worker end to end")
        elif r.audio_s:
            line += f"; {med(r.audio_s):.2f} s of audio"
        print(line)
    print("direct = the pipeline call + encoding its output as the task does; overhead = median over "
          "paired runs of e2e / direct - 1 [interquartile range]; ovh ms = median e2e - median direct; "
          "best-of = fastest e2e / fastest direct - 1 (noise on a shared machine only adds time); "
          "node ovh uses the node's started_at->finished_at; vs bare = e2e against the pipeline call "
          "alone; cpu ovh compares the CPU seconds (user+system) the whole stack (this process, worker, "
          "redis, weed) spent per direct run vs per job")


def _device() -> str:
    from dualplane.ml.device import select_device

    return select_device()


async def run(args: argparse.Namespace) -> list[Result]:
    names = [name for name in ALL_TASKS if name in args.tasks]
    tmp = Path(tempfile.mkdtemp(prefix="dp-gpubench-"))
    results: list[Result] = []
    try:
        with start_redis(tmp / "redis") as redis_server, start_s3(tmp / "s3") as s3_server:
            settings = Settings(
                redis_url=redis_server.url, s3_endpoint=s3_server.endpoint, s3_access_key=s3_server.access_key,
                s3_secret_key=s3_server.secret_key, s3_bucket="dp-gpubench", model_cache_dir=str(tmp / "cache-direct"),
            )
            store = store_from_settings(settings.store)
            assert store is not None
            models_needed = list(dict.fromkeys(m for name in names for m in BENCHES[name].models))
            print(f"building and uploading {len(models_needed)} {args.size} models ...", flush=True)
            await build_and_upload(args.size, models_needed, store, tmp / "build")
            log_path = tmp / "worker.log"
            worker = start_worker(settings, tmp / "cache-worker", log_path, args.torch_threads)
            plane = ControlPlane(settings, registry=gpu_worker.registry())  # it validates bench_direct jobs
            await plane.start()
            cpu = CpuClock([os.getpid(), worker.pid, redis_server.process.pid, s3_server.process.pid])
            models = ModelManager(ModelStore(ModelRegistry.load(), store, tmp / "cache-direct"),
                                  max_bytes=settings.model_cache_max_bytes)
            try:
                for name in names:
                    results.append(await measure(BENCHES[name], args, plane, models, store, worker, log_path, cpu))
            finally:
                await plane.stop(1.0)
                worker.terminate()
                try:
                    worker.wait(30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=tuple(SIZES), default="tiny",
                        help="tiny random-weight models (default), or full-size configurations with "
                             "jobs of GPU size (full) or trimmed to seconds on a CPU (full-cpu)")
    parser.add_argument("--tasks", default=",".join(ALL_TASKS),
                        help=f"comma-separated, from {','.join(ALL_TASKS)} (voice = train_voice, "
                             f"speak = synthesize_voice)")
    parser.add_argument("--runs", type=int, default=9, help="timed runs per task and side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per task and side first")
    parser.add_argument("--direct", choices=("worker", "process"), default="worker",
                        help="where the direct call runs: in the worker process (default) or in this one")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one job may take")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch intra-op threads of both sides (0: torch's default); default 1 "
                             "without CUDA, else torch's default")
    args = parser.parse_args()
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(args.tasks) - set(ALL_TASKS))
    if unknown or not args.tasks:
        parser.error(f"unknown tasks {unknown}; choose from {','.join(ALL_TASKS)}")
    if args.runs < 1 or args.warmup < 1:
        parser.error("--runs and --warmup must be at least 1")
    logging.basicConfig(level=logging.WARNING)
    if args.torch_threads is None:  # decided before torch (and numpy, which it imports) loads
        args.torch_threads = 0 if Path("/proc/driver/nvidia/version").exists() else 1
    if args.torch_threads:
        # numpy's BLAS and torch's OpenMP pools read these when they load: the same on both sides
        # (start_worker passes them on), or numpy work in the tasks runs on more cores here
        os.environ.update(thread_env(args.torch_threads))
    import torch

    device = _device()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    gpu = f", {torch.cuda.get_device_name(0)}" if device.startswith("cuda") else ""
    print(f"gpu task benchmark: {args.size} models, device {device}{gpu}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads per side, {os.cpu_count()} CPUs; 1 control plane "
          f"in-process, 1 worker process; {args.runs} timed runs per task", flush=True)
    results = run_async(run(args))
    report(results, args)


if __name__ == "__main__":
    main()
