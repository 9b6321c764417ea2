"""Moorage: what the CLI, the control plane and the node agent share (API, model, manifests)."""

__version__ = "0.1.0"
