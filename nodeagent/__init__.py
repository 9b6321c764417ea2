"""The Moorage node agent: agent.py is the entry point (moor-agent and its commands), daemon.py
the wiring; session/, pods/, streams/, network/, runtime/ and metrics/ do the work."""
