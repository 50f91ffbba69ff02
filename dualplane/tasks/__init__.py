"""Task modules. Each module holds tasks of one kind; :func:`default_registry` is the catalog
both planes load (validation needs every task; each plane runs only its own)."""

from __future__ import annotations

from dualplane.common.registry import TaskRegistry


def default_registry() -> TaskRegistry:
    from dualplane.tasks import (
        arrangement,
        basic,
        capabilities,
        control,
        lora,
        media,
        music,
        song,
        synthesize_voice,
        train_voice,
        video,
        visualizer,
    )

    return TaskRegistry.from_modules(
        [arrangement, basic, capabilities, control, lora, media, music, song, video, visualizer, train_voice,
         synthesize_voice])


__all__ = ["default_registry"]
