"""`moor lab`: a multi-host cluster on one machine, each host a network namespace on a bridge.

The defaults live here, away from the netlink code, so that `moor --help` need not load it."""

DEFAULT_NAME = "moorlab"
DEFAULT_NODES = 3
DEFAULT_CIDR = "10.199.0.0/24"
STATE_ROOT = "/var/lib/moorage/lab"
