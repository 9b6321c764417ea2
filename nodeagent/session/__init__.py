"""The agent's link to the control plane: the session stream, joining and certificates, host facts
for Hello, pod checkpoints and status reporting."""
