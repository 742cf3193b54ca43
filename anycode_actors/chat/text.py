"""Making text from outside safe to show in a chat: names of people and of files.

A display name or a file name is chosen by someone else (a chat user, the agent). Invisible
format characters let it pretend to be something it is not: a right-to-left override (U+202E)
between "report" and "fdp.exe" makes the name read as "reportexe.pdf", bidi isolates and marks
reorder the text around them, and control characters break lines or the chat's formatting. See
Unicode Technical Report #36, "Unicode Security Considerations", on bidirectional spoofing,
https://www.unicode.org/reports/tr36/
"""

from __future__ import annotations

import unicodedata
from typing import Final

__all__ = ["clean_display_text"]

# Format characters that are part of ordinary writing and never reorder text: the zero-width
# joiner builds emoji sequences and Indic conjuncts, the non-joiner is required in Persian.
_KEPT_FORMAT: Final = frozenset({"\u200c", "\u200d"})
# Controls (Cc), format characters (Cf: bidi embeddings, overrides, isolates and marks, the
# Arabic letter mark, zero-width spaces, invisible tag characters) and lone surrogates (Cs, from
# undecodable bytes in a file name).
_DROPPED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs"})
# Line and paragraph separators (Zl, Zp) split a name over lines like a newline does.
_SEPARATOR_CATEGORIES: Final = frozenset({"Zl", "Zp"})


def clean_display_text(text: str) -> str:
    """`text` without control, format and bidi characters, for showing in a chat.

    Whitespace controls (tab, newline) and line separators become a space, so words stay apart;
    every other control and format character is dropped, except the zero-width joiner and
    non-joiner. Leading and trailing whitespace is removed. The result may be empty: callers fall
    back to something of their own (a user id, "file").
    """
    kept = []
    for char in text:
        category = unicodedata.category(char)
        if category in _SEPARATOR_CATEGORIES or (category == "Cc" and char.isspace()):
            kept.append(" ")
        elif category not in _DROPPED_CATEGORIES or char in _KEPT_FORMAT:
            kept.append(char)
    return "".join(kept).strip()
