"""Keeping the credentials a sandbox was given out of what its agent says.

The daemon puts the agent's API key (with `[github] agent_token = true` also GITHUB_TOKEN:
`Config.sandbox_env`) and sandbox-agent's token into every sandbox. An agent that runs `env`,
prints a config file or echoes a failing `curl` puts them in its output, and from there into the
event log and the chat. The session actor passes every agent event through an `OutputRedactor`
first, which replaces each of those exact values by `[redacted]` in every text the event
carries.

Streamed text (`TextDelta`, `ThoughtDelta`) arrives in pieces of a few characters, and a secret
may be split over two or more of them. The redactor holds the newest piece back while its end
could be the beginning of a secret, and lets it go with the next event, which shows whether the
secret came (it is then redacted whole, in the later piece) or not. Text only ever moves from a
piece to the one after it, and a piece is released only with or before every later one, so the
stored events stay a prefix of what the agent sent: a restarted daemon resumes after the last
stored one and is sent the held piece again.

What this costs: the held piece shows one event late. If the daemon dies while holding text that
moved out of an earlier, stored piece (less than the longest secret), that text is never shown;
nor is a held piece when the event stream stops without a last event (no TurnEnded, no
SessionEnded). Text is lost then, never a secret shown.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from anycode_actors.agents import AgentEvent, TextDelta, ThoughtDelta

__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "OutputRedactor", "agent_secrets", "redact_event"]

REDACTED: Final = "[redacted]"
#: Shorter values are not secrets worth the damage: "12345" or "true" would be cut out of every
#: message that happens to contain them.
MIN_SECRET_LENGTH: Final = 8
# Fields that identify rather than say something, and go back to the agent or its transport
# unchanged (a permission's key and request id, an option id, the stream cursor).
_IDENTIFIERS: Final = frozenset({"seq", "cursor", "key", "request_id", "tool_call_id", "option_id"})
# How `agents.events.summarize` marks a text it shortened: the cut may fall inside a secret.
_TRUNCATED: Final = "…"
# A shortened text's end is redacted when at least this much of a secret's beginning is left.
_MIN_CUT_PREFIX: Final = 4

EventT = TypeVar("EventT", bound=AgentEvent)


def agent_secrets(values: Iterable[str]) -> tuple[str, ...]:
    """The values worth redacting: at least `MIN_SECRET_LENGTH` characters, longest first, so a
    secret that contains another is replaced whole."""
    unique = {value for value in values if len(value) >= MIN_SECRET_LENGTH}
    return tuple(sorted(unique, key=len, reverse=True))


def redact_event(event: EventT, secrets: Iterable[str]) -> EventT:
    """`event` with every secret among `secrets` replaced by `[redacted]` in each of its texts
    (nested options and a `Raw` event's JSON included), identifiers left as they are."""
    matcher = _Matcher.of(secrets)
    return event if matcher is None else matcher.event(event)


class OutputRedactor:
    """Redacts one session's agent events in order, holding back streamed text that may end in
    the beginning of a secret (see the module docstring).

    `feed` each event as it arrives and store and show what it returns. Events at or below
    `last_seq` (already stored by an earlier run) and repeats are dropped: they were handled.
    Without secrets every event passes unchanged, at once.
    """

    def __init__(self, secrets: Iterable[str], *, last_seq: int = 0) -> None:
        self._matcher = _Matcher.of(secrets)
        self._last_seq = last_seq
        self._held: TextDelta | ThoughtDelta | None = None

    def feed(self, event: AgentEvent) -> list[AgentEvent]:
        """The events to store and show now, redacted, in order: a piece held back before
        `event`, then `event` unless it is held back in turn."""
        matcher = self._matcher
        if matcher is None:
            return [event]
        if 0 < event.seq <= self._last_seq:
            return []
        self._last_seq = max(self._last_seq, event.seq)
        released: list[AgentEvent] = []
        held = self._held
        if held is not None and type(held) is not type(event):
            # Another kind of event ends the run of text: what was held cannot continue.
            released.append(dataclasses.replace(held, text=matcher.text(held.text)))
            self._held = held = None
        if not isinstance(event, TextDelta | ThoughtDelta):
            released.append(matcher.event(event))
            return released
        before = held.text if held is not None else ""
        text = before + event.text
        hold_from = matcher.outside(text, matcher.partial_start(text))
        split = matcher.outside(text, min(len(before), hold_from))
        if held is not None:
            released.append(dataclasses.replace(held, text=matcher.text(text[:split])))
        if hold_from < len(text):
            self._held = dataclasses.replace(event, text=text[split:])
        else:
            self._held = None
            released.append(dataclasses.replace(event, text=matcher.text(text[split:])))
        return released


@dataclass(frozen=True)
class _Matcher:
    secrets: tuple[str, ...]
    pattern: re.Pattern[str]

    @classmethod
    def of(cls, values: Iterable[str]) -> _Matcher | None:
        secrets = agent_secrets(values)
        if not secrets:
            return None
        return cls(secrets, re.compile("|".join(map(re.escape, secrets))))

    def text(self, text: str) -> str:
        text = self.pattern.sub(REDACTED, text)
        if text.endswith(_TRUNCATED):
            body = text[: -len(_TRUNCATED)]
            start = self.partial_start(body, minimum=_MIN_CUT_PREFIX)
            if start < len(body):
                text = body[:start] + REDACTED + _TRUNCATED
        return text

    def partial_start(self, text: str, minimum: int = 1) -> int:
        """Where the longest end of `text` (of at least `minimum` characters) that is the
        beginning, not the whole, of a secret starts; `len(text)` if there is none."""
        longest = len(self.secrets[0])
        for start in range(max(0, len(text) - longest + 1), len(text) - minimum + 1):
            tail = text[start:]
            if any(len(s) > len(tail) and s.startswith(tail) for s in self.secrets):
                return start
        return len(text)

    def outside(self, text: str, cut: int) -> int:
        """`cut`, or the start of the whole secret in `text` it would cut through."""
        for match in self.pattern.finditer(text):
            if match.start() < cut < match.end():
                return match.start()
        return cut

    def event(self, event: EventT) -> EventT:
        redacted: EventT = self._value(event)
        return redacted

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes = {
                field.name: self._value(getattr(value, field.name))
                for field in dataclasses.fields(value)
                if field.name not in _IDENTIFIERS
            }
            return dataclasses.replace(value, **changes)
        if isinstance(value, Mapping):  # a Raw event's JSON
            return {self._value(k): self._value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            items = [self._value(item) for item in value]
            return items if isinstance(value, list) else tuple(items)
        return value
