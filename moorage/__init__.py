"""Moorage: what the CLI, the control plane and the node agent share (the generated API, the
model, manifests), the moor CLI and the lab; it imports no daemon."""

__version__ = "0.1.0"
