"""How a value a user wrote is quoted in an error message."""

from __future__ import annotations

import json


def show(value: object) -> str:
    """Render a value the way it would look in JSON, so messages read the same for any input."""
    if isinstance(value, float):
        return repr(value)  # json.dumps would print NaN/Infinity, which YAML users never typed
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)
