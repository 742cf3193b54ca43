"""Telegram MarkdownV2, written so that it can never be rejected and never shows stray backslashes.

Actors pass plain text, which the Telegram client sends without `parse_mode`, so nothing is ever
mangled. Formatting is opt-in through `Rich`: a value that carries both the MarkdownV2 source and
the plain text it displays. The builders below (`text`, `bold`, `code`, `pre`, `link`) escape by
the official rules, so their output always parses; should Telegram still answer "can't parse
entities" (a hand-written `Rich`), the client resends `plain`, which reads the same without the
formatting.

The rules (Bot API "MarkdownV2 style": https://core.telegram.org/bots/api#markdownv2-style):

- outside entities, `_*[]()~`>#+-=|{}.!` must be escaped with a preceding backslash, and so must
  the backslash itself;
- inside `code` and `pre`, only `` ` `` and backslash are escaped;
- inside the `(...)` of an inline link, only `)` and backslash are escaped.

Italic and underline are deliberately missing: `_a_` followed by `_b_` reads as `__`, the start of
an underline, and would need an empty bold separator to disambiguate.

    message = text("Done in ") + code("1.2s") + text(". ") + link("Pull request", url)
    await telegram.send(chat, message)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MARKDOWN_V2_RESERVED",
    "Rich",
    "bold",
    "code",
    "escape",
    "escape_code",
    "escape_link_url",
    "join",
    "link",
    "pre",
    "text",
]

#: Characters that must be escaped in MarkdownV2 outside code, pre and link URLs.
MARKDOWN_V2_RESERVED: Final = "_*[]()~`>#+-=|{}.!"

_RESERVED: Final = re.compile(r"([_*\[\]()~`>#+\-=|{}.!\\])")
_CODE_RESERVED: Final = re.compile(r"([`\\])")
_URL_RESERVED: Final = re.compile(r"([)\\])")
# TDLib reads a pre block's language up to the first space, newline or backtick.
_LANGUAGE: Final = re.compile(r"[A-Za-z0-9_+#.-]*")


def escape(plain: str) -> str:
    """`plain` as MarkdownV2 text outside entities: it displays exactly as `plain`."""
    return _RESERVED.sub(r"\\\1", plain)


def escape_code(plain: str) -> str:
    """`plain` as the inside of a `code` or `pre` entity."""
    return _CODE_RESERVED.sub(r"\\\1", plain)


def escape_link_url(url: str) -> str:
    """`url` as the `(...)` part of an inline link."""
    return _URL_RESERVED.sub(r"\\\1", url)


@dataclass(frozen=True)
class Rich:
    """Formatted text: its MarkdownV2 source and the plain text that source displays.

    Build it with the functions of this module and `+`; they keep the two in step. Constructing
    one by hand is allowed for MarkdownV2 written elsewhere: `plain` is then what the client sends
    if Telegram rejects `markdown_v2`.
    """

    markdown_v2: str
    plain: str

    def __add__(self, other: Rich | str) -> Rich:
        other = text(other) if isinstance(other, str) else other
        return Rich(self.markdown_v2 + other.markdown_v2, self.plain + other.plain)

    def __radd__(self, other: str) -> Rich:
        return text(other) + self


def text(plain: str) -> Rich:
    """Unformatted text."""
    return Rich(escape(plain), plain)


def bold(plain: str) -> Rich:
    return Rich(f"*{escape(plain)}*" if plain else "", plain)


def code(plain: str) -> Rich:
    """Inline monospace."""
    return Rich(f"`{escape_code(plain)}`" if plain else "", plain)


def pre(plain: str, language: str = "") -> Rich:
    """A monospace block, optionally highlighted as `language` ("python", "diff", …)."""
    if not _LANGUAGE.fullmatch(language):
        raise ValueError(f"not a code block language: {language!r}")
    # The newline after the opening fence (and the language) is not part of the content.
    return Rich(f"```{language}\n{escape_code(plain)}```" if plain else "", plain)


def link(label: str, url: str) -> Rich:
    """`label`, linking to `url` (Telegram drops links it cannot parse and keeps the label)."""
    if not label:
        return Rich("", "")
    return Rich(f"[{escape(label)}]({escape_link_url(url)})", label)


def join(parts: Iterable[Rich | str], separator: Rich | str = "") -> Rich:
    """Like `str.join`, for a mix of `Rich` and plain strings."""
    result = Rich("", "")
    for index, part in enumerate(parts):
        if index:
            result += separator
        result += part
    return result
