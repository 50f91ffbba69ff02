"""Tiny random-initialised models of the real classes the tasks load.

No model hub is reachable from the machines this project is developed and tested on, so the
tests (and a demo without a GPU) run on models built here: the *same* classes as the full-size
checkpoints (MusicGen, Stable Diffusion 1.5, the AnimateDiff motion adapter, SpeechT5 + HiFi-GAN),
shrunk to a few hundred kilobytes, saved with ``save_pretrained`` and loaded back through the
same ``from_pretrained`` path a full-size checkpoint takes. Their output is noise with the
right shape, sample rate and length.

Every builder seeds torch first, so two builds give the same weights. ``dualplane models
make-tiny`` builds them and uploads them to the object store under ``models/<name>/``,
which is where the packaged ``models.toml`` points.

The shapes follow ``shared/RECIPES.md`` §5, with two deliberate changes: the MusicGen audio
encoder hops 160 samples at 8 kHz (50 frames/s, the frame rate of the real checkpoints), and
the SD UNet uses two layers per block so the motion adapter fits it (AnimateDiff runs on the
SD 1.5 base, as the real one does).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dualplane.ml.model_store import TINY_MARKER, upload_model_dir

if TYPE_CHECKING:
    from dualplane.common.artifacts import ArtifactStore

log = logging.getLogger(__name__)

#: Seed of every builder (each reseeds, so building one model alone gives the same weights).
TINY_SEED = 1234
#: Bump when a builder changes what it builds. 2: random EnCodec codebooks in the MusicGen.
#: 3: its EnCodec quantizes to exactly the decoder's 2 codebooks (audio prompts work).
TINY_VERSION = 3

#: Words the tiny tokenizers know as whole pieces; anything else falls back to letters.
_WORDS = [
    "lo", "fi", "hip", "hop", "beat", "with", "drums", "piano", "bass", "guitar", "jazz",
    "calm", "upbeat", "techno", "ambient", "rainy", "night", "song", "music", "a", "the",
    "and", "of", "slow", "fast", "happy", "sad", "cat", "dog",
]
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _seed() -> None:
    import torch

    torch.manual_seed(TINY_SEED)


# -- MusicGen ----------------------------------------------------------------------------


def build_musicgen(out: Path) -> Path:
    """MusicgenForConditionalGeneration + MusicgenProcessor (T5 text encoder, EnCodec at 8 kHz,
    50 frames/s, 2 codebooks of 64 codes)."""
    import torch
    from transformers import (
        EncodecConfig,
        EncodecFeatureExtractor,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        MusicgenProcessor,
        T5Config,
        T5Tokenizer,
    )

    _seed()
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("▁" + w, -1.0) for w in _WORDS] + [(c, -5.0) for c in _LETTERS] + [("▁", -2.0)]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    processor = MusicgenProcessor(
        feature_extractor=EncodecFeatureExtractor(feature_size=1, sampling_rate=8000), tokenizer=tokenizer
    )
    text_cfg = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    # hop = 8*5*4 = 160 samples → 50 frames/s at 8 kHz. The bandwidth must give exactly
    # num_codebooks quantizers, int(1000*0.6 // (50*log2(64))) = 2, as the real checkpoints' do:
    # continuing from an audio prompt feeds the encoder's codes to the decoder as they are.
    audio_cfg = EncodecConfig(
        sampling_rate=8000, audio_channels=1, hidden_size=16, num_filters=4, num_residual_layers=1,
        upsampling_ratios=[8, 5, 4], num_lstm_layers=1, codebook_size=64, target_bandwidths=[0.6],
        codebook_dim=16,
    )
    dec_cfg = MusicgenDecoderConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
        num_codebooks=2, max_position_embeddings=2048, audio_channels=1,
        pad_token_id=64, bos_token_id=64, decoder_start_token_id=64,
    )
    config = MusicgenConfig(text_encoder=text_cfg, audio_encoder=audio_cfg, decoder=dec_cfg)
    model = MusicgenForConditionalGeneration(config).eval()
    # EnCodec starts its codebooks at zero (k-means fills them in training): left so, every
    # code decodes alike and the audio would not depend on what was sampled (nor on the seed)
    with torch.no_grad():
        for layer in model.audio_encoder.quantizer.layers:
            layer.codebook.embed.normal_()
            layer.codebook.embed_avg.copy_(layer.codebook.embed)
    gen = model.generation_config
    for key in ("decoder_start_token_id", "pad_token_id", "bos_token_id"):
        setattr(gen, key, 64)  # the real checkpoints use id = codebook_size too
    gen.do_sample, gen.guidance_scale, gen.max_length = True, 3.0, 1500
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# -- Stable Diffusion 1.5 class ------------------------------------------------------------


def _clip_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    words = [w for w in _WORDS if len(w) > 1]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(_LETTERS) + [c + "</w>" for c in _LETTERS]
    merges: list[tuple[str, str]] = []
    for word in words:  # merge each word left to right: "c a" → "ca", "ca t</w>" → "cat</w>"
        prefix = word[0]
        for i, ch in enumerate(word[1:], start=1):
            piece = ch + ("</w>" if i == len(word) - 1 else "")
            merged = prefix + piece
            if (prefix, piece) not in merges:
                merges.append((prefix, piece))
            if merged not in tokens:
                tokens.append(merged)
            prefix = merged
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, model_max_length=16)


def build_sd15(out: Path) -> Path:
    """StableDiffusionPipeline (CLIP text encoder, UNet2DConditionModel, AutoencoderKL, DDIM)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    _seed()
    tokenizer = _clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=len(tokenizer), hidden_size=32,
        intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=16,
    ))  # fmt: skip
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8,
    )
    vae = AutoencoderKL(
        block_out_channels=[16, 32], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, sample_size=32,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
    return out


def build_animatediff_motion_adapter(out: Path) -> Path:
    """MotionAdapter that fits the tiny SD 1.5 UNet (same block widths, two layers per block)."""
    from diffusers import MotionAdapter

    _seed()
    adapter = MotionAdapter(
        block_out_channels=(32, 64), motion_layers_per_block=2, motion_norm_num_groups=8,
        motion_num_attention_heads=4, motion_max_seq_length=32,
    )
    adapter.save_pretrained(out)
    return out


# -- SpeechT5 -----------------------------------------------------------------------------

#: Mel bins shared by the TTS model's output and the vocoder's input (80 in the real ones).
_TINY_MEL_BINS = 20


def _speecht5_spm(path: Path) -> None:
    """A character-level SentencePiece model with SpeechT5's special ids (<s>=0 <pad>=1 </s>=2 <unk>=3)."""
    import io

    import sentencepiece as spm

    lines = [" ".join(_WORDS), _LETTERS, _LETTERS.upper(), "0123456789 .,!?'-"] * 4
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="char", vocab_size=80,
        hard_vocab_limit=False, character_coverage=1.0, bos_id=0, pad_id=1, eos_id=2, unk_id=3,
        num_threads=1, minloglevel=2,
    )
    path.write_bytes(model.getvalue())


def build_speecht5_tts(out: Path) -> Path:
    """SpeechT5ForTextToSpeech + SpeechT5Processor (character SentencePiece tokenizer)."""
    import tempfile

    from transformers import (
        SpeechT5Config,
        SpeechT5FeatureExtractor,
        SpeechT5ForTextToSpeech,
        SpeechT5Processor,
        SpeechT5Tokenizer,
    )

    _seed()
    with tempfile.TemporaryDirectory() as tmp:
        spm_path = Path(tmp) / "spm_char.model"
        _speecht5_spm(spm_path)
        tokenizer = SpeechT5Tokenizer(vocab_file=str(spm_path))
        processor = SpeechT5Processor(
            feature_extractor=SpeechT5FeatureExtractor(num_mel_bins=_TINY_MEL_BINS), tokenizer=tokenizer
        )
        config = SpeechT5Config(
            vocab_size=len(tokenizer), hidden_size=32, encoder_layers=2, encoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_layers=2, decoder_attention_heads=2, decoder_ffn_dim=64,
            num_mel_bins=_TINY_MEL_BINS, speech_decoder_prenet_units=32, speech_decoder_postnet_units=32,
            speech_decoder_postnet_layers=2, speaker_embedding_dim=16, reduction_factor=2,
            max_speech_positions=1024, max_text_positions=256, pad_token_id=1, bos_token_id=0,
            eos_token_id=2, decoder_start_token_id=2,
        )
        model = SpeechT5ForTextToSpeech(config).eval()
        model.save_pretrained(out)
        processor.save_pretrained(out)
    return out


def build_speecht5_hifigan(out: Path) -> Path:
    """SpeechT5HifiGan vocoder: mel frames → 16 kHz waveform, 256 samples per frame."""
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    _seed()
    config = SpeechT5HifiGanConfig(
        model_in_dim=_TINY_MEL_BINS, sampling_rate=16000, upsample_initial_channel=32,
        upsample_rates=[8, 8, 4], upsample_kernel_sizes=[16, 16, 8], resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]], normalize_before=True,
        initializer_range=0.1,  # the default 0.01 gives ~1e-7 peaks: silence in 16-bit PCM
    )
    SpeechT5HifiGan(config).eval().save_pretrained(out)
    return out


# -- all of them ---------------------------------------------------------------------------

#: Registry name → builder. The names are the packaged ``models.toml`` defaults.
BUILDERS: dict[str, Callable[[Path], Path]] = {
    "musicgen-small": build_musicgen,
    "sd15": build_sd15,
    "animatediff-motion-adapter": build_animatediff_motion_adapter,
    "speecht5-tts": build_speecht5_tts,
    "speecht5-hifigan": build_speecht5_hifigan,
}


def make_tiny(out_dir: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Build the tiny models (all, or ``names``) into ``out_dir/<name>/``; returns name → dir."""
    out_dir = Path(out_dir)
    unknown = sorted(set(names or ()) - set(BUILDERS))
    if unknown:
        raise ValueError(f"no tiny builder for {unknown}; known: {sorted(BUILDERS)}")
    built: dict[str, Path] = {}
    for name in names or list(BUILDERS):
        target = out_dir / name
        target.mkdir(parents=True, exist_ok=True)
        built[name] = BUILDERS[name](target)
        (built[name] / TINY_MARKER).write_text(json.dumps({"tiny_version": TINY_VERSION, "name": name}))
        log.info("built tiny %s in %s", name, target)
    return built


async def make_and_upload(
    artifacts: ArtifactStore, out_dir: Path, names: list[str] | None = None, *, model_prefix: str = "models",
    prefixes: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Build the tiny models and upload each under ``prefixes[name]`` (default
    ``<model_prefix>/<name>/``) with its manifest, which says ``"weights": "random"`` (routing
    and the planner prefer real weights)."""
    built = await asyncio.to_thread(make_tiny, out_dir, names)
    await artifacts.ensure_bucket()
    for name, path in built.items():
        prefix = (prefixes or {}).get(name) or f"{model_prefix}/{name}"
        await upload_model_dir(artifacts, name, path, prefix=prefix, weights="random", origin="tiny")
    return built
