"""Agent sessions: node registration and liveness, pod assignments out, pod status in."""
