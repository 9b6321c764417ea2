"""Agent sessions: node registration and liveness, pod assignments out, pod status and deletion
confirmations in, the peer and service tables streamed to every agent, the ConfigMaps and
Secrets each node's pods use (configs.py), and the broker for logs/exec/top streams."""
