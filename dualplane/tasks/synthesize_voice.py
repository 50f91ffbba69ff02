"""``synthesize_voice``: speak text (lyrics) with a voice ``train_voice`` adapted (SpeechT5 +
HiFi-GAN), or, without one, with a pretrained Piper voice (:mod:`dualplane.tasks.piper_voice`;
the registry entry's kind decides). Writes ``voice.wav`` and ``voice.opus``."""

from __future__ import annotations

import copy
import re
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dualplane.common.access import ObjectKey
from dualplane.common.context import TaskContext
from dualplane.common.registry import task
from dualplane.ml.audio import wav_bytes
from dualplane.ml.speecht5_dropout import dropout_rng
from dualplane.tasks.audio_files import put_audio
from dualplane.tasks.piper_voice import DEFAULT_PIPER_MODEL, PIPER_KIND, load_piper_voice, speak
from dualplane.tasks.speecht5 import DEFAULT_SPEECHT5_MODEL, LORA_TARGETS, load_speecht5_tts, load_speecht5_vocoder
from dualplane.tasks.voice_file import read_voice

#: Params that only SpeechT5 reads: given explicitly, they pick SpeechT5, and a Piper voice refuses them.
_SPEECHT5_ONLY = ("vocoder", "minlenratio", "maxlenratio", "threshold")


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
    assert ctx.models is not None  # synthesize_voice made sure of it
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
