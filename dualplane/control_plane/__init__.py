"""Control plane: submission API, control runner (LangGraph executor for control nodes)."""

from dualplane.control_plane.app import create_app
from dualplane.control_plane.service import ControlPlane, Submitted

__all__ = ["ControlPlane", "Submitted", "create_app"]
