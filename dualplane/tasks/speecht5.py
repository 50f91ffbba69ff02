"""What both SpeechT5 voice tasks share: the loaders, the sample rate, the LoRA's targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: SpeechT5's feature extractor and HiFi-GAN vocoder work at 16 kHz.
SAMPLE_RATE = 16000
#: The registry name used for a trained voice when a request names no model.
DEFAULT_SPEECHT5_MODEL = "speecht5-tts"
#: Decoder attention projections a LoRA adapts (self- and cross-attention, queries and values).
LORA_TARGETS = r".*decoder\.wrapped_decoder\.layers\.\d+\.(self_attn|encoder_attn)\.(q_proj|v_proj)"


def load_speecht5_tts(path: Path, device: str, dtype: Any) -> tuple[Any, Any]:
    """(processor, model) from a ``save_pretrained`` directory; never touches the network."""
    from transformers import SpeechT5ForTextToSpeech, SpeechT5Processor

    processor = SpeechT5Processor.from_pretrained(path, local_files_only=True)
    model = SpeechT5ForTextToSpeech.from_pretrained(path, dtype=dtype, local_files_only=True)
    return processor, model.to(device).eval()


def load_speecht5_vocoder(path: Path, device: str, dtype: Any) -> Any:
    from transformers import SpeechT5HifiGan

    return SpeechT5HifiGan.from_pretrained(path, dtype=dtype, local_files_only=True).to(device).eval()
