"""Data plane: workers that run python-plane nodes (torch, diffusers, transformers)."""

from dualplane.data_plane.worker import Worker

__all__ = ["Worker"]
