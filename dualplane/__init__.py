"""dualplane: generative-media jobs as graphs across a control plane and GPU data-plane workers."""

__version__ = "0.1.0"
