"""JSON-RPC 2.0 as ACP uses it: message shapes, newline framing, and request/response matching.

Every ACP transport carries the same four shapes (a request, a notification, a result, an error),
one JSON object per message: one per line on stdio and in acpx's NDJSON, one per `data:` field on
sandbox-agent's SSE stream. Anything else that arrives (a line that is not JSON, JSON that is not
a JSON-RPC 2.0 message, a banner) becomes `Malformed`, never an exception: one bad line must not
end a session.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import trio

from anycode_actors.errors import AgentClosedError

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "MAX_LINE_BYTES",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "TRANSPORT_ERROR",
    "ErrorResponse",
    "JsonObject",
    "LineSplitter",
    "Malformed",
    "Message",
    "Notification",
    "PendingRequests",
    "Request",
    "RequestId",
    "Response",
    "RpcError",
    "decode_line",
    "encode",
    "error_message",
    "notification_message",
    "parse_message",
    "request_message",
    "result_message",
]

JsonObject: TypeAlias = dict[str, Any]
RequestId: TypeAlias = int | str

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
#: In the range JSON-RPC reserves for implementations: the request never got an answer from the
#: agent because the transport failed (an HTTP error from sandbox-agent, for instance).
TRANSPORT_ERROR: Final = -32099

#: The longest line accepted on stdio/NDJSON. Tool output travels inside messages, so lines can be
#: large; a line beyond this is reported as `Malformed` and skipped, not buffered without bound.
MAX_LINE_BYTES: Final = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Request:
    """A call that expects an answer (from the agent: session/request_permission, fs/*, ...)."""

    id: RequestId
    method: str
    params: JsonObject


@dataclass(frozen=True, slots=True)
class Notification:
    """A one-way message (session/update, session/cancel)."""

    method: str
    params: JsonObject


@dataclass(frozen=True, slots=True)
class Response:
    """The successful answer to a request."""

    id: RequestId
    result: Any


@dataclass(frozen=True, slots=True)
class RpcError:
    code: int
    message: str
    data: Any = None


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """The failed answer to a request. `id` is None when the peer could not read the request."""

    id: RequestId | None
    error: RpcError


@dataclass(frozen=True, slots=True)
class Malformed:
    """Input that is not a JSON-RPC 2.0 message; `text` is what arrived (truncated)."""

    text: str
    reason: str
    value: Any = field(default=None, compare=False)
    """The decoded JSON, when it was JSON at all (acpx prints a few non-JSON-RPC objects)."""


Message: TypeAlias = Request | Notification | Response | ErrorResponse

_TEXT_LIMIT: Final = 2000


def _is_id(value: object) -> bool:
    # bool is an int in Python but not a valid JSON-RPC id.
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def parse_message(value: object, text: str | None = None) -> Message | Malformed:
    """Classify one decoded JSON value. Never raises."""

    def bad(reason: str) -> Malformed:
        shown = (text if text is not None else _dump(value))[:_TEXT_LIMIT]
        return Malformed(shown, reason, value)

    if not isinstance(value, dict):
        return bad("not a JSON object")
    if value.get("jsonrpc") != "2.0":
        return bad('not a JSON-RPC 2.0 message ("jsonrpc": "2.0" missing)')
    method = value.get("method")
    if method is not None:
        if not isinstance(method, str) or not method:
            return bad("method is not a non-empty string")
        params = value.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            return bad("params is not an object")
        if "id" in value:
            if not _is_id(value["id"]):
                return bad("request id is not a string or an integer")
            return Request(value["id"], method, params)
        return Notification(method, params)
    if "id" not in value:
        return bad("neither a request, a notification nor a response")
    message_id = value["id"]
    if "error" in value:
        error = value["error"]
        if (
            not isinstance(error, dict)
            or not isinstance(error.get("code"), int)
            or isinstance(error.get("code"), bool)
            or not isinstance(error.get("message"), str)
        ):
            return bad("error is not an object with an integer code and a message")
        if message_id is not None and not _is_id(message_id):
            return bad("response id is not a string or an integer")
        rpc_error = RpcError(error["code"], error["message"], error.get("data"))
        return ErrorResponse(message_id, rpc_error)
    if "result" in value:
        if not _is_id(message_id):
            return bad("response id is not a string or an integer")
        return Response(message_id, value["result"])
    return bad("response has neither result nor error")


def decode_line(line: bytes | str) -> Message | Malformed:
    """One line of NDJSON (or one SSE data field) to a message. Never raises."""
    text = line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line
    text = text.strip()
    try:
        value = json.loads(text)
    except ValueError as exc:
        return Malformed(text[:_TEXT_LIMIT], f"not JSON: {exc}")
    return parse_message(value, text)


def _dump(value: object) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as one line: compact JSON and a newline (JSON escapes newlines in strings)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def request_message(request_id: RequestId, method: str, params: Mapping[str, Any]) -> JsonObject:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": dict(params)}


def notification_message(method: str, params: Mapping[str, Any]) -> JsonObject:
    return {"jsonrpc": "2.0", "method": method, "params": dict(params)}


def result_message(request_id: RequestId, result: Any) -> JsonObject:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def error_message(
    request_id: RequestId | None, code: int, message: str, data: Any = None
) -> JsonObject:
    error: JsonObject = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


class LineSplitter:
    """Splits a byte stream into lines; bounded, so a peer that never sends a newline cannot make
    us buffer without limit (the oversized line is reported, then skipped up to its newline)."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._max = max_line_bytes
        self._buffer = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes | Malformed]:
        """The complete lines in `data` (plus what was buffered), without their newlines."""
        out: list[bytes | Malformed] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            if self._skipping:
                self._skipping = False
            else:
                self._buffer += data[start:end]
                out.append(bytes(self._buffer))
            self._buffer.clear()
            start = end + 1
        if not self._skipping:
            self._buffer += data[start:]
            if len(self._buffer) > self._max:
                head = bytes(self._buffer[:200]).decode("utf-8", errors="replace")
                out.append(Malformed(head, f"line longer than {self._max} bytes; skipped"))
                self._buffer.clear()
                self._skipping = True
        return out

    def finish(self) -> bytes | None:
        """The last line when the stream ended without a final newline."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        if self._skipping:
            self._skipping = False
            return None
        return rest if rest.strip() else None


@dataclass
class _Slot:
    method: str
    done: trio.Event = field(default_factory=trio.Event)
    answer: Response | ErrorResponse | None = None
    failure: AgentClosedError | None = None


class PendingRequests:
    """Request ids we sent and the answers they wait for.

    Ids are strings with a random per-connection prefix (`"a1b2c3-7"`), so that after a daemon
    restart a new connection never takes an old connection's answer for its own (sandbox-agent
    replays earlier answers when a stream is resumed).
    """

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._next = 1
        self._slots: dict[RequestId, _Slot] = {}
        self._failure: AgentClosedError | None = None

    def open(self, method: str) -> RequestId:
        """Reserve an id for a request about to be sent."""
        if self._failure is not None:
            raise self._failure.copy()
        request_id = f"{self._prefix}-{self._next}"
        self._next += 1
        self._slots[request_id] = _Slot(method)
        return request_id

    def method_of(self, request_id: RequestId) -> str | None:
        slot = self._slots.get(request_id)
        return slot.method if slot else None

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._slots

    def __len__(self) -> int:
        return len(self._slots)

    def discard(self, request_id: RequestId) -> None:
        """Forget a request that could not be sent."""
        self._slots.pop(request_id, None)

    def resolve(self, answer: Response | ErrorResponse) -> bool:
        """Hand `answer` to whoever waits for it; False if nobody does (a duplicate, a replay)."""
        if answer.id is None:
            return False
        slot = self._slots.pop(answer.id, None)
        if slot is None:
            return False
        slot.answer = answer
        slot.done.set()
        return True

    async def wait(self, request_id: RequestId) -> Response | ErrorResponse:
        """The answer to `request_id`; raises the connection's failure if it ended first.

        Cancelled (or timed out by the caller's scope), the id is forgotten, so a late answer is
        dropped.
        """
        slot = self._slots.get(request_id)
        if slot is None:
            raise KeyError(request_id)
        try:
            await slot.done.wait()
        finally:
            if not slot.done.is_set():
                self._slots.pop(request_id, None)
        if slot.failure is not None:
            raise slot.failure.copy()
        assert slot.answer is not None
        return slot.answer

    def fail_all(self, failure: AgentClosedError) -> None:
        """The connection ended: every waiting request (and every later one) gets `failure`."""
        self._failure = failure
        slots, self._slots = self._slots, {}
        for slot in slots.values():
            slot.failure = failure
            slot.done.set()
