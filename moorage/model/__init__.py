"""The shared model every part uses: kinds, pod phases and lifecycle, Deployment history,
value parsers (quantities, names, images, selectors), endpoints, time, network defaults and
host:port parsing."""
