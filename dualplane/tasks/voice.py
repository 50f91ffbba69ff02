"""Voices on the python plane: ``train_voice`` adapts SpeechT5 to a speaker from a few clips,
``synthesize_voice`` speaks text (lyrics) with the adapted voice, or, without one, with a
pretrained Piper voice (:mod:`dualplane.tasks.piper_voice`; the registry entry's kind decides).

What is trained, and why it is a speaker adaptation
---------------------------------------------------
SpeechT5 (``SpeechT5ForTextToSpeech``) conditions its speech decoder on a *speaker embedding*
(512 dimensions in ``microsoft/speecht5_tts``: an x-vector, L2-normalised inside the decoder
prenet). Everything speaker-specific the model produces — spectral envelope, pitch range,
brightness — flows through that vector. ``train_voice`` fits it to the clips the way the
speaker-adaptation approach of "Neural Voice Cloning with a Few Samples" (Arık et al., 2018)
does: **the model stays frozen and only the speaker embedding is optimised** by gradient descent
on the model's own TTS loss against the clips' log-mel spectrograms (the processor's feature
extractor makes the same features the model was trained to output). Optionally (``lora_rank``)
a small LoRA (peft) on the decoder's attention projections is fitted too, for more capacity than
one vector; it is trained on a private copy of the model, never on the shared warm one.

* **With transcripts** the loss is SpeechT5's: L1 on the mel frames (before and after the
  postnet), the stop-token loss, and the guided-attention loss when the config enables it — the
  standard SpeechT5 fine-tuning objective, restricted to the speaker parameters.
* **Without transcripts** the encoder gets no text (only the end-of-sequence token) and the
  decoder, teacher-forced on the clip, must predict every mel frame from the previous ones and
  the speaker embedding: an autoregressive *reconstruction* of the clip (L1 only, on random
  windows of the clip; no stop or alignment term, since a window's end is not an utterance's
  end). Content cannot come from the text, so what the embedding can learn is how *this*
  speaker's frames look and follow each other — exactly the information it carries at synthesis.

The embedding starts from the clips' statistics (mean and spread of each mel bin, centred, then a
fixed seeded random projection to the embedding size, which keeps distances between speakers'
statistics — Johnson–Lindenstrauss), so two different speakers start apart; gradient descent
does the fitting. The result is ``voice.safetensors``: the embedding (+ LoRA tensors) with
metadata (model, sizes, steps, losses, the clips' sha256).

Audio in: WAV (PCM 8/16/24/32-bit or IEEE float), any rate, any channel count, read with the
standard ``wave`` module (and a small RIFF reader for the float/extensible formats it refuses),
mixed to mono and resampled to 16 kHz with a windowed-sinc (band-limited) interpolator.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
import re
import struct
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dualplane.common.access import InputRef, ObjectKey
from dualplane.common.context import TaskContext
from dualplane.common.inputs import shown
from dualplane.common.registry import task
from dualplane.tasks.audio_files import put_audio
from dualplane.tasks.music import wav_bytes
from dualplane.tasks.piper_voice import DEFAULT_PIPER_MODEL, PIPER_KIND, load_piper_voice, speak

#: SpeechT5's feature extractor and HiFi-GAN vocoder work at 16 kHz.
SAMPLE_RATE = 16000
#: Format tag in the metadata of a voice file.
VOICE_FORMAT = "dualplane-voice"
VOICE_VERSION = "1"
#: Seed of the fixed projection from clip statistics to the embedding (not the task's seed:
#: the same clips must always start from the same point).
_INIT_PROJECTION_SEED = 20180214
#: Largest clip accepted (bytes), from the store or a URL.
MAX_CLIP_BYTES = 200 << 20
#: The registry name used for a trained voice when a request names no model.
DEFAULT_SPEECHT5_MODEL = "speecht5-tts"
#: Params that only SpeechT5 reads: given explicitly, they pick SpeechT5, and a Piper voice refuses them.
_SPEECHT5_ONLY = ("vocoder", "minlenratio", "maxlenratio", "threshold")
#: Decoder attention projections a LoRA adapts (self- and cross-attention, queries and values).
LORA_TARGETS = r".*decoder\.wrapped_decoder\.layers\.\d+\.(self_attn|encoder_attn)\.(q_proj|v_proj)"


# -- params ---------------------------------------------------------------------------------


class TrainVoiceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    clips: list[InputRef] = Field(..., min_length=1, max_length=64,
                             description="WAV clips of the speaker: object keys (uploads, artifacts) or http(s) URLs.")
    transcripts: list[str] | None = Field(
        None, description="What each clip says (same length as clips; '' for an unknown one). "
                          "Without them the embedding is fitted by text-free reconstruction of the clips.")
    steps: int = Field(10, ge=1, le=10000, description="Optimisation steps (each sees every clip).")
    learning_rate: float = Field(0.01, gt=0, le=10, description="Adam learning rate of the speaker embedding.")
    seed: int = Field(0, ge=0, description="Seed of the decoder prenet's dropout and the reconstruction windows.")
    model: str = Field("speecht5-tts", min_length=1, description="Model registry name (a SpeechT5 TTS model).")
    lora_rank: int | None = Field(None, ge=1, le=64,
                                  description="Also fit a LoRA of this rank on the decoder's attention (optional).")
    lora_learning_rate: float = Field(1e-3, gt=0, le=1, description="Adam learning rate of the LoRA weights.")
    max_clip_s: float = Field(8.0, gt=0.1, le=60, description="Longest stretch of a clip used in one step, seconds "
                                                                   "(a random window of an untranscribed clip; "
                                                                   "a transcribed one is cut there).")

    @field_validator("clips")
    @classmethod
    def _clip_refs(cls, clips: list[str]) -> list[str]:
        for clip in clips:
            if not clip or clip.startswith("/") or ".." in clip.split("/"):
                raise ValueError(f"clip {clip!r}: give an object key or an http(s) URL")
        return clips

    @model_validator(mode="after")
    def _same_length(self) -> TrainVoiceParams:
        if self.transcripts is not None and len(self.transcripts) != len(self.clips):
            raise ValueError(f"transcripts has {len(self.transcripts)} entries for {len(self.clips)} clips")
        return self


class SynthesizeVoiceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(..., min_length=1, max_length=2000, description="What to say (lyrics).")
    voice: ObjectKey | None = Field(None, description="Object key of a train_voice output (SpeechT5); "
                                                      "none: the model's own speaker.")
    model: str | None = Field(None, min_length=1, description=(
        "TTS model registry name: a Piper voice (kind piper-voice) or a SpeechT5 model. None: "
        f"{DEFAULT_PIPER_MODEL!r}, unless a trained voice or a SpeechT5-only setting (vocoder, minlenratio, "
        "maxlenratio, threshold) is given, then 'speecht5-tts'."))
    vocoder: str = Field("speecht5-hifigan", min_length=1, description="Vocoder registry name (SpeechT5 only).")
    seed: int = Field(0, ge=0, description="Seed of the sampling (Piper's noise, SpeechT5's prenet dropout): "
                                           "same seed, same audio.")
    speed: float = Field(1.0, ge=0.25, le=4.0, description="Speaking rate (Piper: the length scale; "
                                                           "SpeechT5: time-stretches the mel frames).")
    minlenratio: float = Field(0.0, ge=0, le=50, description="Least mel steps per text token (SpeechT5 only; "
                                                            "random-weight models need > 0).")
    maxlenratio: float = Field(20.0, gt=0, le=50, description="Most mel steps per text token (SpeechT5 only).")
    threshold: float = Field(0.5, gt=0, le=1, description="Stop-token probability that ends a chunk (SpeechT5 only).")
    pause_s: float = Field(0.25, ge=0, le=5, description="Silence between sentences, seconds.")
    max_chunk_chars: int = Field(200, ge=16, le=1000, description="Longest piece of text generated at once.")

    @field_validator("text")
    @classmethod
    def _something_to_say(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text has nothing to speak")
        return text

    @model_validator(mode="after")
    def _ratios(self) -> SynthesizeVoiceParams:
        if self.minlenratio > self.maxlenratio:
            raise ValueError("minlenratio must not exceed maxlenratio")
        return self

    @model_validator(mode="after")
    def _default_model(self) -> SynthesizeVoiceParams:
        # a request written for SpeechT5 before Piper existed (trained voice, tuned lengths)
        # keeps meaning SpeechT5; everything else gets real speech out of the box
        if self.model is None:
            speecht5 = self.voice is not None or bool(self.speecht5_settings())
            self.model = DEFAULT_SPEECHT5_MODEL if speecht5 else DEFAULT_PIPER_MODEL
        return self

    def speecht5_settings(self) -> list[str]:
        """The SpeechT5-only settings this request gives explicitly."""
        return sorted(self.model_fields_set & set(_SPEECHT5_ONLY))


# -- loaders --------------------------------------------------------------------------------


def load_speecht5_tts(path: Path, device: str, dtype: Any) -> tuple[Any, Any]:
    """(processor, model) from a ``save_pretrained`` directory; never touches the network."""
    from transformers import SpeechT5ForTextToSpeech, SpeechT5Processor

    processor = SpeechT5Processor.from_pretrained(path, local_files_only=True)
    model = SpeechT5ForTextToSpeech.from_pretrained(path, dtype=dtype, local_files_only=True)
    return processor, model.to(device).eval()


def load_speecht5_vocoder(path: Path, device: str, dtype: Any) -> Any:
    from transformers import SpeechT5HifiGan

    return SpeechT5HifiGan.from_pretrained(path, dtype=dtype, local_files_only=True).to(device).eval()


# -- the decoder prenet's dropout ----------------------------------------------------------

_dropout = threading.local()
_patch_lock = threading.Lock()
_patched = False


@contextlib.contextmanager
def dropout_rng(device: str, seed: int) -> Iterator[None]:
    """Run SpeechT5 with its decoder-prenet dropout drawn from a private, seeded generator.

    SpeechT5 applies that dropout at inference too (it is what varies the prosody), and draws it
    from torch's *global* generator, which every task thread of the worker shares: two jobs
    seeding it at once would interleave their draws. This installs (once) a wrapper of the
    prenet's ``_consistent_dropout`` that uses the calling thread's generator while this context
    is open, and the original behaviour otherwise.
    """
    import torch

    _install_dropout_patch()
    previous = getattr(_dropout, "generator", None)
    _dropout.generator = torch.Generator(device=device).manual_seed(seed)
    try:
        yield
    finally:
        _dropout.generator = previous


def _install_dropout_patch() -> None:
    global _patched
    with _patch_lock:
        if _patched:
            return
        import torch
        from transformers.models.speecht5 import modeling_speecht5

        prenet = modeling_speecht5.SpeechT5SpeechDecoderPrenet
        original = prenet._consistent_dropout

        def _consistent_dropout(self: Any, inputs_embeds: Any, p: float) -> Any:
            generator = getattr(_dropout, "generator", None)
            if generator is None:
                return original(self, inputs_embeds, p)
            # the same computation as transformers', with the generator
            mask = torch.bernoulli(inputs_embeds[0], p=p, generator=generator)
            all_masks = mask.unsqueeze(0).repeat(inputs_embeds.size(0), 1, 1)
            return torch.where(all_masks == 1, inputs_embeds, 0) * 1 / (1 - p)

        prenet._consistent_dropout = _consistent_dropout
        _patched = True


# -- train_voice ----------------------------------------------------------------------------


@task("train_voice", plane="python", params=TrainVoiceParams, gpu=True, kind="training",
      title="Train a voice from recordings")
def train_voice(ctx: TaskContext, p: TrainVoiceParams) -> dict[str, Any]:
    """Adapt SpeechT5 to a speaker from WAV clips (speaker embedding, optional LoRA); writes `voice.safetensors`."""
    import numpy as np
    import torch

    if ctx.models is None:
        raise RuntimeError("this worker has no model manager (ctx.models)")
    ctx.progress(0.0, f"fetching {len(p.clips)} clips")
    clips, digests = [], []
    for i, (ref, data) in enumerate(zip(p.clips, ctx.fetch_inputs(p.clips, max_bytes=MAX_CLIP_BYTES, what="clip"),
                                        strict=True)):
        digests.append(hashlib.sha256(data).hexdigest())
        try:
            samples, rate = decode_wav(data)
        except ValueError as exc:
            raise ValueError(f"clip {i} ({shown(ref)}): {exc}") from None
        clips.append(resample(samples, rate, SAMPLE_RATE))
        ctx.check_cancelled()

    ctx.progress(0.02, f"loading {p.model}")
    loaded = ctx.models.load(p.model, load_speecht5_tts)
    processor, base = loaded.model
    ctx.check_cancelled()
    config = base.config
    device, rf, n_mels = loaded.device, config.reduction_factor, config.num_mel_bins
    param_dtype = next(base.parameters()).dtype

    # log-mel targets, the features the model was trained to output
    mels = []
    for i, samples in enumerate(clips):
        mel = processor.feature_extractor(audio_target=samples, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        mel = mel["input_values"][0].float()  # (frames, n_mels)
        if mel.shape[-1] != n_mels:
            raise ValueError(f"feature extractor gives {mel.shape[-1]} mel bins, the model wants {n_mels}")
        if mel.shape[0] < 2 * rf:
            raise ValueError(f"clip {i} ({shown(p.clips[i])}) is too short: {len(samples) / SAMPLE_RATE:.3f} s")
        mels.append(mel)
    hop = processor.feature_extractor.hop_length * SAMPLE_RATE // 1000  # ms → samples
    window = max(2 * rf, int(p.max_clip_s * SAMPLE_RATE / hop) // rf * rf)
    # the decoder sees frames / rf positions: stay inside its position table
    window = min(window, (config.max_speech_positions - 2) * rf)

    transcripts = p.transcripts or [""] * len(clips)
    texts = [t.strip() for t in transcripts]
    inputs = []
    for text in texts:
        enc = processor(text=text, return_tensors="pt")  # "" → just </s>: the text-free case
        ids = enc["input_ids"][:, : config.max_text_positions - 1]
        inputs.append((ids.to(device), enc["attention_mask"][:, : ids.shape[1]].to(device)))

    dim = config.speaker_embedding_dim
    init = initial_embedding(mels, dim)
    embedding = init.clone().to(device).requires_grad_(True)

    model, lora_params, lora_config = base, [], None
    if p.lora_rank is not None:
        model, lora_config = _with_lora(base, p.lora_rank)
        lora_params = [t for n, t in model.named_parameters() if "lora_" in n]
    groups = [{"params": [embedding], "lr": p.learning_rate}]
    if lora_params:
        groups.append({"params": lora_params, "lr": p.lora_learning_rate})
    optimizer = torch.optim.Adam(groups)
    trained = [embedding, *lora_params]

    rng = np.random.default_rng(p.seed)
    eval_windows = [_window(m.shape[0], window, rf, None) for m in mels]

    def loss_over_clips(windows: list[tuple[int, int]], *, grad: bool) -> torch.Tensor:
        total = None
        for (ids, mask), mel, text, (start, end) in zip(inputs, mels, texts, windows, strict=True):
            labels = mel[start:end].unsqueeze(0).to(device=device, dtype=param_dtype)
            speaker = embedding.to(param_dtype).unsqueeze(0)
            with torch.set_grad_enabled(grad):
                loss = _tts_loss(model, ids, mask, labels, speaker, transcribed=bool(text))
            total = loss if total is None else total + loss
        assert total is not None
        return total / len(mels)

    def eval_loss() -> float:
        with dropout_rng(device, p.seed):
            return float(loss_over_clips(eval_windows, grad=False))

    initial_loss = eval_loss()
    started = time.perf_counter()
    for step in range(1, p.steps + 1):
        ctx.check_cancelled()
        windows = [_window(m.shape[0], window, rf, rng) if not t else eval_windows[i]
                   for i, (m, t) in enumerate(zip(mels, texts, strict=True))]
        with dropout_rng(device, p.seed * 1_000_003 + step):
            loss = loss_over_clips(windows, grad=True)
        grads = torch.autograd.grad(loss, trained)  # only the speaker parameters, never the model's
        for tensor, g in zip(trained, grads, strict=True):
            tensor.grad = g
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():  # the decoder normalises it anyway; keep it on the unit sphere
            embedding.div_(embedding.norm().clamp_min(1e-8))
        ctx.on_step(step, p.steps)
    train_s = time.perf_counter() - started
    final_loss = eval_loss()

    tensors = {"speaker_embedding": embedding.detach().float().cpu().contiguous()}
    metadata = {
        "format": VOICE_FORMAT, "version": VOICE_VERSION, "model": p.model,
        "speaker_embedding_dim": str(dim), "num_mel_bins": str(n_mels), "steps": str(p.steps),
        "seed": str(p.seed), "learning_rate": repr(p.learning_rate),
        "initial_loss": repr(initial_loss), "final_loss": repr(final_loss),
        "objective": "tts" if all(texts) else ("reconstruction" if not any(texts) else "mixed"),
        "clips_sha256": json.dumps(digests), "clip_seconds": repr(round(sum(len(c) for c in clips) / SAMPLE_RATE, 3)),
        "init_cosine": repr(round(float(torch.nn.functional.cosine_similarity(
            init, tensors["speaker_embedding"], dim=0)), 6)),
    }
    if lora_config is not None:
        from peft import get_peft_model_state_dict

        for name, value in get_peft_model_state_dict(model).items():
            tensors[f"lora.{name}"] = value.detach().float().cpu().contiguous()
        metadata.update({"lora_rank": str(lora_config.r), "lora_alpha": str(lora_config.lora_alpha),
                         "lora_target_modules": LORA_TARGETS, "lora_learning_rate": repr(p.lora_learning_rate)})
    from safetensors.torch import save

    ref = ctx.put_artifact("voice.safetensors", save(tensors, metadata=metadata), "application/octet-stream")
    return {
        "voice": ref["key"],
        "steps": p.steps,
        "initial_loss": round(initial_loss, 6),
        "final_loss": round(final_loss, 6),
        "steps_per_s": round(p.steps / train_s, 3) if train_s > 0 else None,
        "objective": metadata["objective"],
        "clips": len(clips),
        "clip_seconds": float(metadata["clip_seconds"]),
        "speaker_embedding_dim": dim,
        "lora_rank": p.lora_rank,
        "model": p.model,
        "device": device,
        "model_load_s": round(loaded.load_s, 4),
    }


def _tts_loss(model: Any, ids: Any, mask: Any, labels: Any, speaker: Any, *, transcribed: bool) -> Any:
    """SpeechT5's own loss with a transcript; teacher-forced L1 reconstruction without one."""
    import torch
    from transformers.models.speecht5.modeling_speecht5 import shift_spectrograms_right

    if transcribed:
        return model(input_ids=ids, attention_mask=mask, labels=labels, speaker_embeddings=speaker).loss
    decoder_inputs, _ = shift_spectrograms_right(labels, model.config.reduction_factor)
    out = model.speecht5(input_values=ids, attention_mask=mask, decoder_input_values=decoder_inputs,
                         speaker_embeddings=speaker, return_dict=True)
    before, after, _ = model.speech_decoder_postnet(out.last_hidden_state)
    return torch.nn.functional.l1_loss(after, labels) + torch.nn.functional.l1_loss(before, labels)


def _window(frames: int, size: int, rf: int, rng: Any) -> tuple[int, int]:
    """A stretch of at most ``size`` frames, a multiple of ``rf`` long; from the start without rng."""
    length = min(size, frames // rf * rf)
    start = 0 if rng is None or frames <= length else int(rng.integers(0, frames - length + 1))
    return start, start + length


def initial_embedding(mels: list[Any], dim: int) -> Any:
    """A unit vector from the clips' log-mel statistics (per-bin mean and spread over all
    frames, centred), through a fixed seeded Gaussian projection to ``dim``."""
    import torch

    frames = torch.cat(mels, dim=0)
    mean, std = frames.mean(0), frames.std(0, unbiased=False)
    stats = torch.cat([mean - mean.mean(), std - std.mean()])
    stats = stats / stats.norm().clamp_min(1e-8)
    gen = torch.Generator().manual_seed(_INIT_PROJECTION_SEED)
    projection = torch.randn(dim, stats.numel(), generator=gen) / math.sqrt(dim)
    vector = projection @ stats
    return vector / vector.norm().clamp_min(1e-8)


def _with_lora(base: Any, rank: int) -> tuple[Any, Any]:
    """A private copy of the model with LoRA on the decoder's attention (the warm model is shared)."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=LORA_TARGETS,
                        init_lora_weights=True)
    model = copy.deepcopy(base)
    for param in model.parameters():
        param.requires_grad_(False)
    model = inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    return model.eval(), config


# -- synthesize_voice -----------------------------------------------------------------------


@task("synthesize_voice", plane="python", params=SynthesizeVoiceParams, gpu=True, kind="voice",
      title="Speak text (Piper, or a trained voice)")
def synthesize_voice(ctx: TaskContext, p: SynthesizeVoiceParams) -> dict[str, Any]:
    """Speak text with a Piper voice, or with SpeechT5 + HiFi-GAN in a trained voice; writes
    `voice.wav` and `voice.opus`."""
    if ctx.models is None:
        raise RuntimeError("this worker has no model manager (ctx.models)")
    assert p.model is not None  # the params' validator names one
    chunks = split_text(p.text, p.max_chunk_chars)
    kind = ctx.models.entry(p.model).kind
    if kind == PIPER_KIND:
        return _speak_piper(ctx, p, p.model, chunks)
    return {**_speak_speecht5(ctx, p, p.model, chunks), "kind": kind}


def _speak_piper(ctx: TaskContext, p: SynthesizeVoiceParams, model: str, chunks: list[str]) -> dict[str, Any]:
    if p.voice is not None:
        raise ValueError(f"model {model!r} is a Piper voice; a trained voice (train_voice) is spoken by a SpeechT5 "
                         f"model such as {DEFAULT_SPEECHT5_MODEL!r}")
    if p.speecht5_settings():
        raise ValueError(f"model {model!r} is a Piper voice; {', '.join(p.speecht5_settings())} apply to SpeechT5 only")
    ctx.progress(0.0, f"loading {model}")
    loaded = ctx.models.load(model, load_piper_voice)
    voice = loaded.model
    ctx.check_cancelled()

    def chunk_done(i: int) -> None:
        ctx.progress((i + 1) / len(chunks), f"chunk {i + 1}/{len(chunks)}")
        ctx.check_cancelled()

    started = time.perf_counter()
    samples, phonemes = speak(voice, chunks, seed=p.seed, speed=p.speed, pause_s=p.pause_s, on_chunk=chunk_done)
    generate_s = time.perf_counter() - started
    duration_s = samples.size / voice.sample_rate
    audio = put_audio(ctx, "voice", wav_bytes(samples[None, :], voice.sample_rate), sample_rate=voice.sample_rate,
                      channels=1, duration_s=duration_s)
    return {
        **audio,
        "chunks": len(chunks),
        "words": sum(len(chunk.split()) for chunk in chunks),
        "characters": sum(len(chunk) for chunk in chunks),
        "phonemes": phonemes,
        "voice": None,
        "model": model,
        "kind": PIPER_KIND,
        "device": "cpu",
        "generate_s": round(generate_s, 4),
        "real_time_factor": round(generate_s / duration_s, 4) if duration_s > 0 else None,
        "model_load_s": round(loaded.load_s, 4),
    }


def _speak_speecht5(ctx: TaskContext, p: SynthesizeVoiceParams, model_name: str, chunks: list[str]) -> dict[str, Any]:
    import numpy as np
    import torch

    assert ctx.models is not None
    ctx.progress(0.0, f"loading {model_name} and {p.vocoder}")
    tts = ctx.models.load(model_name, load_speecht5_tts)
    processor, model = tts.model
    vocoder_loaded = ctx.models.load(p.vocoder, load_speecht5_vocoder)
    vocoder = vocoder_loaded.model
    ctx.check_cancelled()
    device, config = tts.device, model.config
    dtype = next(model.parameters()).dtype
    dim = config.speaker_embedding_dim

    if p.voice is None:
        speaker = torch.zeros(dim)  # the neutral speaker (what the model card's example uses)
        voice_meta: dict[str, str] = {}
    else:
        tensors, voice_meta = read_voice(ctx.get_artifact(p.voice))
        speaker = tensors["speaker_embedding"]
        if speaker.numel() != dim:
            raise ValueError(f"voice {p.voice!r} has a {speaker.numel()}-dim speaker embedding; "
                             f"model {model_name!r} wants {dim} (trained for {voice_meta.get('model')!r})")
        lora = {k.removeprefix("lora."): v for k, v in tensors.items() if k.startswith("lora.")}
        if lora:
            model = _apply_lora(model, lora, int(voice_meta["lora_rank"]), int(voice_meta["lora_alpha"]),
                                voice_meta.get("lora_target_modules", LORA_TARGETS))
    speaker = speaker.reshape(1, dim).to(device=device, dtype=dtype)

    hop = int(np.prod(vocoder.config.upsample_rates))
    sample_rate = int(vocoder.config.sampling_rate)
    max_tokens = config.max_text_positions - 1
    pieces: list[Any] = []
    gap = np.zeros(round(p.pause_s * sample_rate), dtype=np.float32)
    started = time.perf_counter()
    for i, chunk in enumerate(chunks):
        ctx.check_cancelled()
        ids = processor(text=chunk, return_tensors="pt")["input_ids"][:, :max_tokens].to(device)
        with dropout_rng(device, p.seed * 1_000_003 + i), torch.inference_mode():
            mel = model.generate_speech(ids, speaker, threshold=p.threshold, minlenratio=p.minlenratio,
                                        maxlenratio=p.maxlenratio)
            if p.speed != 1.0:
                frames = max(1, round(mel.shape[0] / p.speed))
                mel = torch.nn.functional.interpolate(mel.T.unsqueeze(0), size=frames, mode="linear",
                                                      align_corners=True)[0].T
            audio = vocoder(mel.to(next(vocoder.parameters()).dtype))
        if pieces and gap.size:
            pieces.append(gap)
        pieces.append(audio.float().cpu().numpy().reshape(-1))
        ctx.progress((i + 1) / len(chunks), f"chunk {i + 1}/{len(chunks)}")
    generate_s = time.perf_counter() - started

    samples = np.concatenate(pieces)[None, :]
    audio = put_audio(ctx, "voice", wav_bytes(samples, sample_rate), sample_rate=sample_rate, channels=1,
                      duration_s=samples.shape[-1] / sample_rate)
    return {
        **audio,
        "chunks": len(chunks),
        "frames": int(samples.shape[-1] // hop),
        "voice": p.voice,
        "model": model_name,
        "vocoder": p.vocoder,
        "device": device,
        "generate_s": round(generate_s, 4),
        "model_load_s": round(tts.load_s + vocoder_loaded.load_s, 4),
    }


def _apply_lora(base: Any, state: dict[str, Any], rank: int, alpha: int, targets: str) -> Any:
    """A copy of the model with the voice's LoRA loaded (the warm model stays untouched)."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets)
    model = inject_adapter_in_model(config, copy.deepcopy(base))
    result = set_peft_model_state_dict(model, state)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise ValueError(f"voice LoRA does not fit the model: unexpected keys {missing[:3]}")
    return model.eval()


def split_text(text: str, max_chars: int) -> list[str]:
    """Sentences (and lines) of ``text``, long ones cut at spaces to at most ``max_chars``."""
    chunks: list[str] = []
    for sentence in re.split(r"(?<=[.!?;])\s+|\n+", text):
        sentence = " ".join(sentence.split())
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", 0, max_chars + 1)
            cut = cut if cut > 0 else max_chars
            chunks.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if sentence:
            chunks.append(sentence)
    if not chunks:
        raise ValueError("text has nothing to speak")
    return chunks


# -- voice files ----------------------------------------------------------------------------


def read_voice(data: bytes) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, metadata) of a ``voice.safetensors``; rejects anything else."""
    from safetensors.torch import load

    if len(data) < 8:
        raise ValueError("not a voice file (too short)")
    (header_len,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8 : 8 + header_len])
    except ValueError:
        raise ValueError("not a voice file (no safetensors header)") from None
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != VOICE_FORMAT:
        raise ValueError(f"not a voice file (format {metadata.get('format')!r}, expected {VOICE_FORMAT!r})")
    tensors = load(data)
    if "speaker_embedding" not in tensors:
        raise ValueError("voice file has no speaker_embedding")
    return tensors, metadata


# -- clips: fetch, decode, resample ---------------------------------------------------------


def decode_wav(data: bytes) -> tuple[Any, int]:
    """(mono float32 samples in [-1, 1], sample rate) of a WAV file."""
    import numpy as np

    try:
        with wave.open(io.BytesIO(data)) as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw, is_float = w.readframes(w.getnframes()), False
    except (wave.Error, EOFError):  # float and WAVE_FORMAT_EXTENSIBLE files (wave reads PCM only)
        channels, width, rate, raw, is_float = _read_riff(data)
    if channels < 1 or rate <= 0:
        raise ValueError(f"bad WAV header ({channels} channels, {rate} Hz)")
    raw = raw[: len(raw) // (width * channels) * width * channels]
    if is_float:
        if width not in (4, 8):
            raise ValueError(f"unsupported float sample width {width}")
        samples = np.frombuffer(raw, dtype="<f4" if width == 4 else "<f8").astype(np.float32)
    elif width == 1:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        samples = (np.where(ints >= 1 << 23, ints - (1 << 24), ints)).astype(np.float32) / float(1 << 23)
    elif width == 4:
        samples = np.frombuffer(raw, dtype="<i4").astype(np.float32) / float(1 << 31)
    else:
        raise ValueError(f"unsupported sample width {width}")
    if samples.size == 0:
        raise ValueError("WAV file has no samples")
    mono = samples.reshape(-1, channels).mean(axis=1)
    return np.clip(np.nan_to_num(mono), -1.0, 1.0).astype(np.float32), rate


def _read_riff(data: bytes) -> tuple[int, int, int, bytes, bool]:
    """(channels, sample width, rate, data bytes, is float) from the RIFF chunks of a WAV file."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV file (no RIFF/WAVE header)")
    pos, fmt, body = 12, None, None
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        chunk = data[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt ":
            fmt = chunk
        elif chunk_id == b"data":
            body = chunk
        pos += 8 + size + (size & 1)
    if fmt is None or body is None or len(fmt) < 16:
        raise ValueError("WAV file without fmt or data chunk")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the subformat GUID starts with the tag
        tag = struct.unpack("<H", fmt[24:26])[0]
    if tag not in (1, 3):
        raise ValueError(f"unsupported WAV encoding (format tag {tag}); use PCM or IEEE float")
    return channels, bits // 8, rate, body, tag == 3


def resample(samples: Any, rate_in: int, rate_out: int, *, zero_crossings: int = 16) -> Any:
    """Band-limited resampling: windowed-sinc interpolation (Hann window, ``zero_crossings``
    on each side), low-passed at the lower of the two Nyquist frequencies."""
    import numpy as np

    x = np.asarray(samples, dtype=np.float64)
    if rate_in == rate_out or x.size == 0:
        return x.astype(np.float32)
    ratio = rate_out / rate_in
    scale = min(1.0, ratio)  # cutoff as a fraction of the input Nyquist
    half = zero_crossings / scale  # half-width of the kernel in input samples
    taps = np.arange(-math.ceil(half) + 1, math.ceil(half) + 1)
    n_out = round(x.size * ratio)
    out = np.empty(n_out, dtype=np.float64)
    for lo in range(0, n_out, 4096):
        t = np.arange(lo, min(n_out, lo + 4096)) / ratio  # output instants in input samples
        idx = np.floor(t).astype(np.int64)[:, None] + taps[None, :]
        d = t[:, None] - idx
        weights = scale * np.sinc(scale * d) * np.where(np.abs(d) < half, 0.5 + 0.5 * np.cos(np.pi * d / half), 0.0)
        valid = (idx >= 0) & (idx < x.size)
        out[lo : lo + t.size] = (x[np.clip(idx, 0, x.size - 1)] * weights * valid).sum(axis=1)
    return out.astype(np.float32)
