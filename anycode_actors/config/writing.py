"""Writing TOML: the file `anycode setup` writes and the effective config `check-config` prints.

`dump_toml` turns nested mappings into TOML text that `tomllib.loads` reads back as the same
data. Strings are TOML basic strings (https://toml.io/en/v1.0.0#string): a backslash, a double
quote and every control character (U+0000 to U+001F and U+007F) are escaped, as the spec
requires. So is every other character that Python does not consider printable (format
characters such as bidi overrides, line and paragraph separators, unassigned code points), so
that printing the text cannot reorder or hide what a terminal shows; the escape reads back as
the same character.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["dump_toml", "toml_key", "toml_string", "toml_value"]

_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
# The short escapes of the spec; every other escaped character is written as \uXXXX or \UXXXXXXXX.
_SHORT_ESCAPES: Final[Mapping[str, str]] = {
    "\\": "\\\\",
    '"': '\\"',
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def dump_toml(data: Mapping[str, Any], *, header: str = "") -> str:
    """TOML text for `data`: tables of str, int, float, bool, lists of those, and tables.

    Mappings at the top level are [tables]. Below it, a non-empty mapping of plain values (an
    agent's `env`) is written inline, any other mapping as a [table] of its own. None is not a
    TOML value: it becomes a comment that the key is not set (at the top level, that the table
    is not configured). `header` becomes leading comment lines.
    """
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    _emit_entries((), data, lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _emit_entries(path: tuple[str, ...], table: Mapping[str, Any], lines: list[str]) -> None:
    # Tables come after the plain keys: a key written after a [header] would belong to it.
    tables: list[tuple[str, Mapping[str, Any] | None]] = []
    for key, value in table.items():
        if isinstance(value, Mapping) and (not path or not _is_inline(value)):
            tables.append((key, value))
        elif value is None and not path:
            tables.append((key, None))
        elif value is None:
            lines.append(f"# {toml_key(key)} is not set")
        else:
            lines.append(f"{toml_key(key)} = {toml_value(value)}")
    for key, subtable in tables:
        name = ".".join(toml_key(part) for part in (*path, key))
        if subtable is None:
            lines += ["", f"# [{name}] is not configured"]
        else:
            lines += ["", f"[{name}]"]
            _emit_entries((*path, key), subtable, lines)


def _is_inline(table: Mapping[str, Any]) -> bool:
    # None has no inline form: a table with an unset key is written as a [table] with a comment.
    return bool(table) and not any(
        v is None or isinstance(v, Mapping | list | tuple) for v in table.values()
    )


def toml_key(key: str) -> str:
    """`key` as a TOML key: bare when it may be (ASCII letters, digits, _ and -), else quoted."""
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def toml_string(text: str) -> str:
    """`text` as a TOML basic string. ValueError for a lone surrogate, which TOML cannot hold."""
    return '"' + "".join(_escape(char) for char in text) + '"'


def _escape(char: str) -> str:
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    if char.isprintable():
        return char
    code = ord(char)
    if 0xD800 <= code <= 0xDFFF:
        # TOML text is UTF-8 and its \u escapes must be Unicode scalar values.
        raise ValueError(f"cannot write the lone surrogate U+{code:04X} as TOML")
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def toml_value(value: Any) -> str:
    """`value` as a TOML value: a string, number, boolean, array or inline table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # repr gives inf, -inf, nan and exponents in forms TOML accepts, and keeps -0.0's sign.
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
