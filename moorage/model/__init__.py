"""The shared model both daemons and the CLI use: pod phases and lifecycle, timestamps."""
