"""The cluster network's defaults, the same on the control plane, the agents and the CLI."""

from __future__ import annotations

DEFAULT_CLUSTER_CIDR = "10.244.0.0/16"
# Each node leases a /24 of the cluster CIDR.
NODE_SUBNET_PREFIX = 24
DEFAULT_SERVICE_CIDR = "10.96.0.0/16"
DEFAULT_VXLAN_VNI = 1
DEFAULT_VXLAN_PORT = 4789
# VXLAN over IPv4 adds 50 bytes: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
VXLAN_OVERHEAD = 50
NODE_PORT_RANGE = (30000, 32767)
# Pods a node runs at most unless it says otherwise (the kubelet's default).
DEFAULT_MAX_PODS = 110
