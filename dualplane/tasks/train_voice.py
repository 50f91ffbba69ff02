"""``train_voice``: adapt SpeechT5 to a speaker from a few clips (spoken by
:mod:`dualplane.tasks.synthesize_voice`).

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

Clips are decoded and resampled by :mod:`dualplane.ml.audio`; the result's layout is
:mod:`dualplane.tasks.voice_file`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dualplane.common.access import InputRef
from dualplane.common.context import TaskContext
from dualplane.common.inputs import shown
from dualplane.common.registry import task
from dualplane.ml.audio import decode_wav, resample
from dualplane.ml.speecht5_dropout import dropout_rng
from dualplane.tasks.speecht5 import LORA_TARGETS, SAMPLE_RATE, load_speecht5_tts
from dualplane.tasks.voice_file import write_voice

#: Seed of the fixed projection from clip statistics to the embedding (not the task's seed:
#: the same clips must always start from the same point).
_INIT_PROJECTION_SEED = 20180214
#: Largest clip accepted (bytes), from the store or a URL.
MAX_CLIP_BYTES = 200 << 20


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
        "model": p.model,
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
    artifact = ctx.put_artifact("voice.safetensors", write_voice(tensors, metadata), "application/octet-stream")
    return {
        "voice": artifact["key"],
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
