"""The Moorage node agent: runs the pods assigned to its node, reports their status."""
