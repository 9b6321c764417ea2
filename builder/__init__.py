"""The image builder and the registry client of the build machine: `moor build`, `moor push`,
`moor pull`, `moor tag`, `moor images`, `moor rmi`.

Building means running containers, so the builder is a program of its own (run as root on a
Linux machine) that uses the agent's runtime library and image store; the `moor` CLI hands
these commands to it (`python -m builder`) rather than importing it, so `moorage/` imports no
daemon code.
"""
