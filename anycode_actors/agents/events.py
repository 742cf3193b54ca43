"""Normalized agent events: what the rest of the daemon sees of any agent protocol.

An agent speaks ACP (through sandbox-agent, over stdio, or printed by acpx); the session actor and
the chat want a handful of facts instead: text arrived, a tool started or finished, the agent asks
for permission, the turn ended, something failed, the session is over. Each event carries:

- `seq`: its number in its session, strictly increasing from 1, assigned once, in delivery order;
  the store keeps events by it and a resumed stream continues after the last one delivered.
- `cursor`: where on the wire it came from, when the transport can resume from there (the SSE
  event id of sandbox-agent); a restarted daemon reattaches with the last stored cursor.

`normalize()` is the pure part: one JSON-RPC message in, event drafts out (seq 0, no cursor); the
session numbers them. It never raises: an update it does not know (plans, usage, modes, commands,
anything newer than this code) becomes a `Raw` event, kept for the audit log.

`to_record()` and `from_record()` are the stored form: a versioned tag ("turn_ended/1") and a
JSON object. The tags are constants, not class names, so renaming a class or a field changes no
stored row; a change to what a kind stores gets a new tag version (and a reader for the old
one, or a store migration). A row this code cannot read, because a newer version wrote a tag it
does not know or the payload does not fit its tag, comes back as an `UnknownEvent`: recovery
passes over it instead of failing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Literal, TypeAlias, TypeVar, assert_never, get_args

from anycode_actors.agents.jsonrpc import (
    ErrorResponse,
    Malformed,
    Message,
    Notification,
    Request,
    RequestId,
    Response,
)

__all__ = [
    "CANCELLED",
    "ERROR_STOP_REASON",
    "ERROR_TAG",
    "EVENT_TAGS",
    "PERMISSION_METHOD",
    "PERMISSION_REQUESTED_TAG",
    "PERMISSION_RESOLVED_TAG",
    "RAW_TAG",
    "SESSION_ENDED_TAG",
    "TEXT_DELTA_TAG",
    "THOUGHT_DELTA_TAG",
    "TOOL_CALL_TAG",
    "TURN_ENDED_TAG",
    "UPDATE_METHOD",
    "AgentEvent",
    "EndReason",
    "ErrorEvent",
    "PermissionOption",
    "PermissionRequested",
    "PermissionResolved",
    "PromptFile",
    "Raw",
    "ResolvedBy",
    "SessionEnded",
    "StoredEvent",
    "TextDelta",
    "ThoughtDelta",
    "ToolCall",
    "ToolCallMemory",
    "TurnEnded",
    "UnknownEvent",
    "from_record",
    "normalize",
    "permission_key",
    "permission_requested",
    "summarize",
    "to_record",
    "turn_ended",
]


@dataclass(frozen=True)
class PromptFile:
    """A file that goes with a prompt, already in the sandbox at `path`: sent to the agent as
    ACP content (an image block when `data` is given and the agent takes images, else a
    resource link; https://agentclientprotocol.com/protocol/content)."""

    path: str
    name: str
    mime_type: str
    size: int
    data: bytes | None = None  # an image's bytes, for an image block


UPDATE_METHOD: Final = "session/update"
PERMISSION_METHOD: Final = "session/request_permission"
#: The stop reason ACP gives a cancelled turn.
CANCELLED: Final = "cancelled"
#: Our stop reason for a turn whose session/prompt failed (ACP has none for that).
ERROR_STOP_REASON: Final = "error"

INPUT_SUMMARY_CHARS: Final = 200
OUTPUT_SUMMARY_CHARS: Final = 500

ToolPhase: TypeAlias = Literal["started", "updated", "completed"]
Resolution: TypeAlias = Literal["selected", "cancelled"]
ResolvedBy: TypeAlias = Literal["user", "policy", "cancel"]
EndReason: TypeAlias = Literal["closed", "agent_exited", "connection_lost"]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Event:
    seq: int = 0
    """Position in the session, from 1; 0 only on drafts that `normalize` returns."""
    cursor: str | None = None
    """The transport position this came from (sandbox-agent's SSE event id), if resumable."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TextDelta(_Event):
    """A piece of the agent's answer, in order. Empty pieces are never emitted."""

    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ThoughtDelta(_Event):
    """A piece of the agent's visible reasoning (agent_thought_chunk)."""

    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCall(_Event):
    """A tool call started, changed or finished. Later phases repeat what is known so far, so
    each event stands alone (the title, kind and input arrive over several ACP updates)."""

    tool_call_id: str
    phase: ToolPhase
    status: str | None = None
    """pending | in_progress | completed | failed, as the agent said."""
    title: str | None = None
    kind: str | None = None
    """read | edit | delete | move | search | execute | think | fetch | switch_mode | other."""
    input_summary: str = ""
    """One line: the command, the path or the query, shortened."""
    tool_name: str | None = None
    """The agent's own name for the tool when it says (Claude Code: Bash, Write, ...)."""
    output_summary: str = ""
    announce: bool | None = None
    """Whether this event puts the tool's line in the chat (see `ToolCallMemory`). None, in an
    event made without it (or stored before it existed): the started event does."""

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    @property
    def shows_line(self) -> bool:
        """Whether the chat shows the tool's line at this event."""
        return self.phase == "started" if self.announce is None else self.announce


@dataclass(frozen=True, slots=True)
class PermissionOption:
    option_id: str
    """Pass this back unchanged: the agent chose it."""
    name: str
    kind: str
    """allow_once | allow_always (for the rest of this session) | reject_once | reject_always."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PermissionRequested(_Event):
    """The agent waits for a decision. Answer with `respond_permission(key, option_id)`."""

    key: str
    """Stable id of this request within the connection (survives a resumed stream)."""
    request_id: RequestId
    tool_call_id: str | None
    title: str | None
    input_summary: str
    options: tuple[PermissionOption, ...]
    policy: str | None = None
    """Set when no person decides: acpx answers by this policy (approve-all, ...)."""

    def option(self, kind: str) -> PermissionOption | None:
        """The first option of `kind` (allow_once, allow_always, reject_once, reject_always)."""
        return next((option for option in self.options if option.kind == kind), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class PermissionResolved(_Event):
    key: str
    outcome: Resolution
    option_id: str | None = None
    option_kind: str | None = None
    by: ResolvedBy = "user"
    """user (respond_permission), cancel (cancelled with the turn) or policy (acpx decided)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnEnded(_Event):
    """The answer to session/prompt: end_turn | max_tokens | max_turn_requests | refusal |
    cancelled, or "error" when the prompt request itself failed (`message` says why)."""

    stop_reason: str
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorEvent(_Event):
    """Something went wrong that the user should hear about; the session may go on."""

    message: str
    code: int | None = None
    details: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionEnded(_Event):
    """The last event of a session: closed by us, the agent exited, or the connection is lost."""

    reason: EndReason
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Raw(_Event):
    """Anything else the agent sent, kept as it came for the log (plans, usage, modes, unknown
    updates, malformed lines). `kind` is e.g. "session/update:plan" or "malformed"."""

    kind: str
    payload: Any


AgentEvent: TypeAlias = (
    TextDelta
    | ThoughtDelta
    | ToolCall
    | PermissionRequested
    | PermissionResolved
    | TurnEnded
    | ErrorEvent
    | SessionEnded
    | Raw
)


# --- summaries ---------------------------------------------------------------------------------

# Keys of a tool's input that say best what it does, most telling first.
_INPUT_KEYS: Final = (
    "command",
    "file_path",
    "path",
    "notebook_path",
    "pattern",
    "url",
    "query",
    "prompt",
    "description",
)
_WHITESPACE: Final = re.compile(r"\s+")


def summarize(value: Any, limit: int = INPUT_SUMMARY_CHARS) -> str:
    """One line of at most `limit` characters saying what `value` (a tool's input) is about."""
    if value is None or value == {} or value == "":
        return ""
    if isinstance(value, Mapping):
        text = next(
            (
                str(value[key])
                for key in _INPUT_KEYS
                if isinstance(value.get(key), str) and value[key].strip()
            ),
            None,
        )
        if text is None:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    line = _WHITESPACE.sub(" ", text).strip()
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _content_text(content: Any) -> str:
    """The text of ACP tool-call content: [{"type":"content","content":{"type":"text",...}}]."""
    if not isinstance(content, list):
        return ""
    parts = []
    for item in content:
        if isinstance(item, Mapping):
            inner = item.get("content")
            if isinstance(inner, Mapping) and isinstance(inner.get("text"), str):
                parts.append(inner["text"])
    return "\n".join(parts)


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# --- normalization -----------------------------------------------------------------------------


def normalize(message: Message | Malformed) -> list[AgentEvent]:
    """Event drafts (seq 0) for one message the agent sent. Pure; never raises.

    Covers session/update notifications, session/request_permission requests, other
    notifications (Raw) and malformed input (Raw). Answers to our own requests are not events
    by themselves: `turn_ended` handles the answer to session/prompt.
    """
    if isinstance(message, Malformed):
        return [Raw(kind="malformed", payload={"text": message.text, "reason": message.reason})]
    if isinstance(message, Notification) and message.method == UPDATE_METHOD:
        return _normalize_update(message.params)
    if isinstance(message, Request) and message.method == PERMISSION_METHOD:
        return [permission_requested(message.id, message.params)]
    if isinstance(message, Request | Notification):
        return [Raw(kind=message.method, payload=message.params)]
    return [Raw(kind="response", payload=_response_payload(message))]


def _response_payload(message: Response | ErrorResponse) -> Any:
    if isinstance(message, Response):
        return {"id": message.id, "result": message.result}
    error = message.error
    return {"id": message.id, "error": {"code": error.code, "message": error.message}}


def _normalize_update(params: Mapping[str, Any]) -> list[AgentEvent]:
    update = params.get("update")
    if not isinstance(update, Mapping) or not isinstance(update.get("sessionUpdate"), str):
        return [Raw(kind="session/update:invalid", payload=dict(params))]
    kind = update["sessionUpdate"]
    if kind in ("agent_message_chunk", "agent_thought_chunk"):
        content = update.get("content")
        if isinstance(content, Mapping) and content.get("type") == "text":
            text = content.get("text")
            if isinstance(text, str):
                if not text:
                    # claude-agent-acp opens every block with an empty chunk: nothing to say.
                    return []
                if kind == "agent_message_chunk":
                    return [TextDelta(text=text)]
                return [ThoughtDelta(text=text)]
        return [Raw(kind=f"{UPDATE_METHOD}:{kind}", payload=dict(update))]
    if kind in ("tool_call", "tool_call_update"):
        tool_call_id = update.get("toolCallId")
        if not isinstance(tool_call_id, str) or not tool_call_id:
            return [Raw(kind=f"{UPDATE_METHOD}:{kind}", payload=dict(update))]
        return [_tool_call(kind, tool_call_id, update)]
    return [Raw(kind=f"{UPDATE_METHOD}:{kind}", payload=dict(update))]


def _tool_call(kind: str, tool_call_id: str, update: Mapping[str, Any]) -> ToolCall:
    status = _text_or_none(update.get("status"))
    phase: ToolPhase
    if kind == "tool_call":
        phase = "started"
    elif status in ("completed", "failed"):
        phase = "completed"
    else:
        phase = "updated"
    meta = update.get("_meta")
    claude = meta.get("claudeCode") if isinstance(meta, Mapping) else None
    tool_name = _text_or_none(claude.get("toolName")) if isinstance(claude, Mapping) else None
    output = update.get("rawOutput")
    output_text = summarize(output, OUTPUT_SUMMARY_CHARS) if output is not None else ""
    if not output_text and phase == "completed":
        output_text = summarize(_content_text(update.get("content")), OUTPUT_SUMMARY_CHARS)
    return ToolCall(
        tool_call_id=tool_call_id,
        phase=phase,
        status=status,
        title=_text_or_none(update.get("title")),
        kind=_text_or_none(update.get("kind")),
        input_summary=summarize(update.get("rawInput")),
        tool_name=tool_name,
        output_summary=output_text,
    )


def permission_key(request_id: RequestId) -> str:
    """The key a permission request is answered by: its JSON-RPC id as JSON (`0`, `"a-1"`)."""
    return json.dumps(request_id)


def permission_requested(
    request_id: RequestId, params: Mapping[str, Any], policy: str | None = None
) -> PermissionRequested:
    """A draft for session/request_permission (options kept in the agent's order)."""
    options = []
    raw_options = params.get("options")
    for raw in raw_options if isinstance(raw_options, list) else ():
        if isinstance(raw, Mapping) and isinstance(raw.get("optionId"), str):
            options.append(
                PermissionOption(
                    option_id=raw["optionId"],
                    name=str(raw.get("name") or raw["optionId"]),
                    kind=str(raw.get("kind") or ""),
                )
            )
    tool_call = params.get("toolCall")
    tool_call = tool_call if isinstance(tool_call, Mapping) else {}
    return PermissionRequested(
        key=permission_key(request_id),
        request_id=request_id,
        tool_call_id=_text_or_none(tool_call.get("toolCallId")),
        title=_text_or_none(tool_call.get("title")),
        input_summary=summarize(tool_call.get("rawInput")),
        options=tuple(options),
        policy=policy,
    )


def turn_ended(result: Any) -> TurnEnded:
    """A draft for the answer to session/prompt."""
    stop_reason = result.get("stopReason") if isinstance(result, Mapping) else None
    if not isinstance(stop_reason, str) or not stop_reason:
        return TurnEnded(stop_reason="end_turn", message="the agent gave no stop reason")
    return TurnEnded(stop_reason=stop_reason)


class ToolCallMemory:
    """What is known of each open tool call, so every ToolCall event carries the full picture.

    Claude Code's adapter sends the title "Terminal" and an empty input first, the real command in
    an update, and the result in a last update that repeats neither. So the chat's line for a
    call (`ToolCall.announce`) waits for the first event that has an input, or for the call's
    end: a call opened without input would otherwise show as "▸ Terminal".
    """

    def __init__(self) -> None:
        self._calls: dict[str, ToolCall] = {}
        self._announced: set[str] = set()

    def merge(self, event: ToolCall) -> ToolCall:
        known = self._calls.get(event.tool_call_id)
        if known is not None:
            event = replace(
                event,
                status=event.status or known.status,
                title=event.title or known.title,
                kind=event.kind or known.kind,
                input_summary=event.input_summary or known.input_summary,
                tool_name=event.tool_name or known.tool_name,
                output_summary=event.output_summary or known.output_summary,
            )
        call_id = event.tool_call_id
        announce = call_id not in self._announced and (
            event.phase == "completed" or bool(event.input_summary)
        )
        if announce:
            self._announced.add(call_id)
        event = replace(event, announce=announce)
        if event.phase == "completed":
            self._calls.pop(call_id, None)
            self._announced.discard(call_id)
        else:
            self._calls[call_id] = event
        return event

    def fill_permission(self, event: PermissionRequested) -> PermissionRequested:
        """A permission request names its tool call; take title and input from it if missing."""
        known = self._calls.get(event.tool_call_id or "")
        if known is None:
            return event
        return replace(
            event,
            title=event.title or known.title,
            input_summary=event.input_summary or known.input_summary,
        )


# --- stored form -------------------------------------------------------------------------------

# The tag of each kind in the event log: "<kind>/<version>". Chosen here, never derived from a
# class name. A payload change that older code would misread (a field renamed, removed or given
# another meaning) takes the next version; a new optional field may keep it, since readers pass
# over fields they do not know.
TEXT_DELTA_TAG: Final = "text_delta/1"
THOUGHT_DELTA_TAG: Final = "thought_delta/1"
TOOL_CALL_TAG: Final = "tool_call/1"
PERMISSION_REQUESTED_TAG: Final = "permission_requested/1"
PERMISSION_RESOLVED_TAG: Final = "permission_resolved/1"
TURN_ENDED_TAG: Final = "turn_ended/1"
ERROR_TAG: Final = "error/1"
SESSION_ENDED_TAG: Final = "session_ended/1"
RAW_TAG: Final = "raw/1"


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownEvent(_Event):
    """A stored event this code cannot read: its tag is unknown (a newer version wrote it) or
    its payload does not fit the tag. Kept as it was stored; whoever replays the log passes over
    it. `cursor` is the payload's "cursor" when that is a string (every tag stores it there)."""

    tag: str
    payload: Any
    """The stored JSON value, as decoded."""
    reason: str


StoredEvent: TypeAlias = AgentEvent | UnknownEvent
"""What the event log gives back: an agent event, or a row this code cannot read."""


def to_record(event: AgentEvent) -> tuple[str, dict[str, Any]]:
    """The stored form of `event`: its tag and a JSON object. `seq` is stored beside it, not in
    it; `from_record(tag, payload, seq=event.seq)` gives `event` back.

    Required fields are always written; an optional one is left out while it has its default
    (None, "" or no message), which keeps the rows of streamed text small.
    """
    tag: str
    body: dict[str, Any]
    if isinstance(event, TextDelta):
        tag, body = TEXT_DELTA_TAG, {"text": event.text}
    elif isinstance(event, ThoughtDelta):
        tag, body = THOUGHT_DELTA_TAG, {"text": event.text}
    elif isinstance(event, ToolCall):
        tag, body = TOOL_CALL_TAG, {"tool_call_id": event.tool_call_id, "phase": event.phase}
        _unless_none(body, status=event.status, title=event.title, kind=event.kind)
        _unless_none(body, tool_name=event.tool_name)
        _unless_empty(body, input_summary=event.input_summary)
        _unless_empty(body, output_summary=event.output_summary)
        _unless_none(body, announce=event.announce)
    elif isinstance(event, PermissionRequested):
        tag = PERMISSION_REQUESTED_TAG
        body = {
            "key": event.key,
            "request_id": event.request_id,
            "tool_call_id": event.tool_call_id,
            "title": event.title,
            "input_summary": event.input_summary,
            "options": [
                {"option_id": o.option_id, "name": o.name, "kind": o.kind} for o in event.options
            ],
        }
        _unless_none(body, policy=event.policy)
    elif isinstance(event, PermissionResolved):
        tag = PERMISSION_RESOLVED_TAG
        body = {"key": event.key, "outcome": event.outcome, "by": event.by}
        _unless_none(body, option_id=event.option_id, option_kind=event.option_kind)
    elif isinstance(event, TurnEnded):
        tag, body = TURN_ENDED_TAG, {"stop_reason": event.stop_reason}
        _unless_empty(body, message=event.message)
    elif isinstance(event, ErrorEvent):
        tag, body = ERROR_TAG, {"message": event.message}
        _unless_none(body, code=event.code)
        _unless_empty(body, details=event.details)
    elif isinstance(event, SessionEnded):
        tag, body = SESSION_ENDED_TAG, {"reason": event.reason}
        _unless_empty(body, message=event.message)
    elif isinstance(event, Raw):
        tag, body = RAW_TAG, {"kind": event.kind, "payload": event.payload}
    else:
        assert_never(event)
    if event.cursor is not None:
        body["cursor"] = event.cursor
    return tag, body


def from_record(tag: str, payload: Any, *, seq: int = 0) -> StoredEvent:
    """The event stored as `tag` with `payload` (the decoded JSON), numbered `seq`.

    Never raises: a tag this code does not know, or a payload without a field its tag needs (or
    with one of the wrong type), gives an `UnknownEvent` that says why.
    """
    cursor = payload.get("cursor") if isinstance(payload, Mapping) else None
    cursor = cursor if isinstance(cursor, str) else None
    decode = _DECODERS.get(tag)
    if decode is None:
        reason = f"unknown tag {tag!r}"
    elif not isinstance(payload, Mapping):
        reason = f"{tag}: the payload is not a JSON object"
    else:
        try:
            return decode(_Fields(payload, seq))
        except _Unfit as exc:
            reason = f"{tag}: {exc}"
    return UnknownEvent(seq=seq, cursor=cursor, tag=tag, payload=payload, reason=reason)


def _unless_none(body: dict[str, Any], **fields: Any) -> None:
    body.update((name, value) for name, value in fields.items() if value is not None)


def _unless_empty(body: dict[str, str], **fields: str) -> None:
    body.update((name, value) for name, value in fields.items() if value != "")


class _Unfit(ValueError):
    """A stored payload lacks a field its tag needs, or has one of the wrong type."""


_Choice = TypeVar("_Choice", bound=str)
_MISSING: Final = object()
_TOOL_PHASES: Final[tuple[ToolPhase, ...]] = get_args(ToolPhase)
_RESOLUTIONS: Final[tuple[Resolution, ...]] = get_args(Resolution)
_RESOLVERS: Final[tuple[ResolvedBy, ...]] = get_args(ResolvedBy)
_END_REASONS: Final[tuple[EndReason, ...]] = get_args(EndReason)


class _Fields:
    """Typed reads of one stored payload; a missing or mistyped field raises `_Unfit`."""

    def __init__(self, payload: Mapping[str, Any], seq: int) -> None:
        self._payload = payload
        self.seq = seq
        self.cursor = self.text_or_none("cursor", required=False)

    def _get(self, name: str, default: Any) -> Any:
        if name in self._payload:
            return self._payload[name]
        if default is _MISSING:
            raise _Unfit(f"no {name!r}")
        return default

    def text(self, name: str, default: Any = _MISSING) -> str:
        value = self._get(name, default)
        if not isinstance(value, str):
            raise _Unfit(f"{name!r} is not a string")
        return value

    def text_or_none(self, name: str, *, required: bool = True) -> str | None:
        value = self._get(name, _MISSING if required else None)
        if value is not None and not isinstance(value, str):
            raise _Unfit(f"{name!r} is neither a string nor null")
        return value

    def int_or_none(self, name: str) -> int | None:
        value = self._get(name, None)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise _Unfit(f"{name!r} is neither an integer nor null")
        return value

    def bool_or_none(self, name: str) -> bool | None:
        value = self._get(name, None)
        if value is not None and not isinstance(value, bool):
            raise _Unfit(f"{name!r} is neither a boolean nor null")
        return value

    def request_id(self, name: str) -> RequestId:
        value = self._get(name, _MISSING)
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise _Unfit(f"{name!r} is not a JSON-RPC id")
        return value

    def choice(self, name: str, choices: tuple[_Choice, ...], default: Any = _MISSING) -> _Choice:
        value = self._get(name, default)
        for choice in choices:
            if value == choice:
                return choice
        raise _Unfit(f"{name!r} is not one of {', '.join(choices)}")

    def options(self, name: str) -> tuple[PermissionOption, ...]:
        value = self._get(name, _MISSING)
        if not isinstance(value, list):
            raise _Unfit(f"{name!r} is not a list")
        options = []
        for item in value:
            if not isinstance(item, Mapping):
                raise _Unfit(f"an item of {name!r} is not an object")
            option = _Fields(item, 0)
            options.append(
                PermissionOption(option.text("option_id"), option.text("name"), option.text("kind"))
            )
        return tuple(options)

    def any(self, name: str) -> Any:
        return self._get(name, _MISSING)


def _tool_call_from(f: _Fields) -> ToolCall:
    return ToolCall(
        seq=f.seq,
        cursor=f.cursor,
        tool_call_id=f.text("tool_call_id"),
        phase=f.choice("phase", _TOOL_PHASES),
        status=f.text_or_none("status", required=False),
        title=f.text_or_none("title", required=False),
        kind=f.text_or_none("kind", required=False),
        input_summary=f.text("input_summary", ""),
        tool_name=f.text_or_none("tool_name", required=False),
        output_summary=f.text("output_summary", ""),
        announce=f.bool_or_none("announce"),
    )


def _permission_requested_from(f: _Fields) -> PermissionRequested:
    return PermissionRequested(
        seq=f.seq,
        cursor=f.cursor,
        key=f.text("key"),
        request_id=f.request_id("request_id"),
        tool_call_id=f.text_or_none("tool_call_id"),
        title=f.text_or_none("title"),
        input_summary=f.text("input_summary"),
        options=f.options("options"),
        policy=f.text_or_none("policy", required=False),
    )


def _permission_resolved_from(f: _Fields) -> PermissionResolved:
    return PermissionResolved(
        seq=f.seq,
        cursor=f.cursor,
        key=f.text("key"),
        outcome=f.choice("outcome", _RESOLUTIONS),
        option_id=f.text_or_none("option_id", required=False),
        option_kind=f.text_or_none("option_kind", required=False),
        by=f.choice("by", _RESOLVERS),
    )


_DECODERS: Final[Mapping[str, Callable[[_Fields], AgentEvent]]] = {
    TEXT_DELTA_TAG: lambda f: TextDelta(seq=f.seq, cursor=f.cursor, text=f.text("text")),
    THOUGHT_DELTA_TAG: lambda f: ThoughtDelta(seq=f.seq, cursor=f.cursor, text=f.text("text")),
    TOOL_CALL_TAG: _tool_call_from,
    PERMISSION_REQUESTED_TAG: _permission_requested_from,
    PERMISSION_RESOLVED_TAG: _permission_resolved_from,
    TURN_ENDED_TAG: lambda f: TurnEnded(
        seq=f.seq,
        cursor=f.cursor,
        stop_reason=f.text("stop_reason"),
        message=f.text("message", ""),
    ),
    ERROR_TAG: lambda f: ErrorEvent(
        seq=f.seq,
        cursor=f.cursor,
        message=f.text("message"),
        code=f.int_or_none("code"),
        details=f.text("details", ""),
    ),
    SESSION_ENDED_TAG: lambda f: SessionEnded(
        seq=f.seq,
        cursor=f.cursor,
        reason=f.choice("reason", _END_REASONS),
        message=f.text("message", ""),
    ),
    RAW_TAG: lambda f: Raw(
        seq=f.seq, cursor=f.cursor, kind=f.text("kind"), payload=f.any("payload")
    ),
}

EVENT_TAGS: Final = frozenset(_DECODERS)
"""Every tag `from_record` reads."""
