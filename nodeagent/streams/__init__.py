"""The agent's half of logs, exec and top: streams opened back to the control plane on its
request, and usage samples."""
