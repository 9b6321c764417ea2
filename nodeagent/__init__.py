"""The Moorage node agent: runs the pods assigned to its node, reports their status."""

import os

# The sync loop forks (pyroute2's NetNS, the runtime) while the session's gRPC threads run, and
# gRPC's fork handlers then crash those children (SIGSEGV). They never use gRPC, so fork support
# is not needed; it has to be off before grpc first loads, whichever agent module imports it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
