"""Server-sent events, parsed a network chunk at a time.

The event stream format of https://html.spec.whatwg.org/multipage/server-sent-events.html
#event-stream-interpretation: UTF-8 (invalid bytes become U+FFFD), one leading byte order mark
ignored, lines ended by CRLF, LF or CR (a CRLF split between two chunks is one line end), a
blank line dispatches the event, `:` starts a comment, a field name without a colon has an empty
value, one space after the colon is dropped, `data` lines are joined with LF, `id` is kept for
the events that follow until another `id` sets it (one holding NULL is ignored), `retry` only when
it is all ASCII digits, any other field is ignored, and an event the stream ends in the middle of
is dropped.

`SseParser.feed` takes the bytes as they arrive and returns every event they complete, so a
reader handles a chunk's events together instead of awaiting each one. It is what
`sandbox_agent.py` reads sandbox-agent's stream with.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Final

__all__ = ["SseEvent", "SseParser"]

_BOM: Final = "\ufeff"


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event. `id` is the last event id in effect (the spec's "last event ID
    buffer", which outlives the event that set it), None before any. An event with no `data`
    line still comes out (`data == ""`): its `id` moves the stream's position all the same."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SseParser:
    """Incremental: `feed` the bytes of one stream, in order; a fresh parser per connection."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False
        self._partial = ""  # the start of a line not ended yet
        self._skip_lf = False  # the last chunk ended with CR: an LF first in the next is its end
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._fields = False  # a field line was seen since the last dispatch

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events that `chunk` completes, in order."""
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            if text.startswith(_BOM):
                text = text[1:]
        if self._skip_lf and text:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
        if "\r" in text:
            if text.endswith("\r"):
                self._skip_lf = True
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        end = text.rfind("\n")
        if end < 0:
            self._partial += text
            return []
        lines = (self._partial + text[:end]).split("\n")
        self._partial = text[end + 1 :]
        return self._lines(lines)

    def _lines(self, lines: list[str]) -> list[SseEvent]:
        out: list[SseEvent] = []
        for line in lines:
            if not line:
                if self._fields:
                    out.append(self._dispatch())
                continue
            name, colon, value = line.partition(":")
            if not name:
                continue  # a comment
            if colon and value[:1] == " ":
                value = value[1:]
            if name == "data":
                self._data.append(value)
            elif name == "id":
                if "\0" not in value:
                    self._id = value
            elif name == "event":
                self._event = value
            elif name == "retry":
                if value.isascii() and value.isdigit():
                    self._retry = int(value)
            else:
                continue  # an unknown field: ignored, as if the line were not there
            self._fields = True
        return out

    def _dispatch(self) -> SseEvent:
        event = SseEvent("\n".join(self._data), self._event or "message", self._id, self._retry)
        self._data = []
        self._event = ""
        self._retry = None
        self._fields = False
        return event
