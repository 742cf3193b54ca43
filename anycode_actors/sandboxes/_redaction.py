"""Keeping credentials out of what providers say: error messages, logs shown to users.

Providers know every credential they inject (the agent's env values and the sandbox token), so
they replace those exact values by `***` in any text that came from somewhere they do not
control: an engine's error explanation, a container's output, git's stderr.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

#: Values shorter than this are not replaced: they would mangle every message ("1", "yes") and
#: are no real credential.
MIN_REDACTED_LENGTH: Final = 4
MASK: Final = "***"


def secret_values(values: Iterable[str]) -> tuple[str, ...]:
    """The values worth redacting, longest first so that a secret containing another is
    replaced whole."""
    unique = {value for value in values if len(value) >= MIN_REDACTED_LENGTH}
    return tuple(sorted(unique, key=len, reverse=True))


def redact(text: str, hidden: Iterable[str]) -> str:
    """`text` with every value of `hidden` (from `secret_values`) replaced by `***`."""
    for value in hidden:
        text = text.replace(value, MASK)
    return text
