"""A scripted model server: enough of the Anthropic Messages API for Claude Code 2.1.x.

Tests run the real agents (Claude Code, its ACP adapter, sandbox-agent, acpx) against this server
so that text, tool calls and permission prompts happen deterministically and offline.

A scenario is a list of turns; a turn is a list of steps. The scenario starts when the user's
prompt contains ``[[name]]`` (or is exactly ``name``); every later request of the same
conversation (the agent sending back a tool_result) gets the next turn::

    script = ModelScript()
    script.add(
        "make-file",
        [Text("Creating ", "the file."), Bash("touch made.txt", description="Create it")],
        [Delay(0.2), Text("done")],
    )
    model = ScriptedModel(script)
    served = await nursery.start(serve_asgi, model.app, "127.0.0.1")
    env = stack.offline_env(served.base_url, home)

Steps: `Text` (each argument one text_delta), `Thinking`, `Bash` / `Write` / `ToolUse` (a
tool_use block; the tool name follows what the request offers, see `resolve_tool_name`),
`Delay` (a pause in the stream, for cancel-mid-turn and connection-cut tests) and `ApiError`.
A turn with a tool call ends with stop_reason "tool_use", any other with "end_turn"; a request
past the last turn gets "Done.".

Prompts that match no scenario get ``You said: <prompt>``, so follow-up prompts just work.

A request for structured output (`output_config.format` of type json_schema, or the older
top-level `output_format`) is answered, as the real API does, with one text block of JSON that
fits the schema, and never by the script: Claude Code 2.1.332 under claude-agent-acp 0.101.0 asks
that way for a title of each new session (the adapter's session-titles module), with the user's
first prompt quoted inside, while the turn itself runs. Such requests are in `requests` and
`structured_requests`, not in `message_requests` (the conversation).

The turn is derived from the conversation itself (the number of assistant messages after the
prompt), not from server state, so retries and parallel sessions get consistent answers.

Every request is recorded (`ScriptedModel.requests`): which tools were offered, which tool
results came back, and whether a permission rejection came back as an error tool_result.

To be reachable from Docker containers, bind `serve_asgi` to the bridge gateway
(`docker_bridge_gateway()`) instead of loopback.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

SYSTEM_REMINDER_PREFIX: Final = "<system-reminder>"
ACP_TOOL_PREFIX: Final = "mcp__acp__"
# mcp__acp__Bash rejects a call without "timeout" although its schema marks it optional.
DEFAULT_BASH_TIMEOUT_MS: Final = 120_000
EXHAUSTED_TEXT: Final = "Done."
SIGNATURE: Final = "fake-signature"

# ---------------------------------------------------------------------------------------------
# Script steps


@dataclass(frozen=True, init=False)
class Text:
    """Assistant text; each argument is sent as one content_block_delta.

    Consecutive Text steps (with Delays between them) continue the same text block.
    """

    chunks: tuple[str, ...]

    def __init__(self, *chunks: str) -> None:
        object.__setattr__(self, "chunks", chunks)


@dataclass(frozen=True, init=False)
class Thinking:
    """An extended-thinking block; each argument is one thinking_delta."""

    chunks: tuple[str, ...]

    def __init__(self, *chunks: str) -> None:
        object.__setattr__(self, "chunks", chunks)


@dataclass(frozen=True)
class Delay:
    """Pause the stream, e.g. to cancel a turn or cut a connection while it is under way."""

    seconds: float


@dataclass(frozen=True)
class ToolUse:
    """A tool_use block. `name` is the plain tool name ("Bash"); when the request offers the ACP
    adapter's variant ("mcp__acp__Bash", offered when the client has fs/terminal) that is used.
    """

    name: str
    input: Mapping[str, Any]


@dataclass(frozen=True)
class ApiError:
    """Answer with an API error instead of a message (e.g. 400 invalid_request_error).

    As the first step of a turn it is the HTTP status of the response; after other steps of a
    streamed turn it becomes an `error` event that ends the stream. Claude Code retries 429, 5xx
    and 529 with backoff, so use a 4xx to make an agent fail fast.
    """

    status: int = 400
    error_type: str = "invalid_request_error"
    message: str = "scripted error"


Step: TypeAlias = Text | Thinking | Delay | ToolUse | ApiError
Turn: TypeAlias = Sequence[Step]


def Bash(command: str, *, description: str | None = None, timeout_ms: int | None = None) -> ToolUse:
    """A Bash tool call."""
    args: dict[str, Any] = {"command": command}
    if description is not None:
        args["description"] = description
    if timeout_ms is not None:
        args["timeout"] = timeout_ms
    return ToolUse("Bash", args)


def Write(path: str, content: str) -> ToolUse:
    """A Write tool call; Claude Code wants an absolute `path`."""
    return ToolUse("Write", {"file_path": path, "content": content})


# ---------------------------------------------------------------------------------------------
# Scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    turns: tuple[tuple[Step, ...], ...]


DefaultReply: TypeAlias = Callable[[str], Turn]


def echo(prompt: str) -> Turn:
    """The answer to a prompt that matches no scenario."""
    return [Text("You said: ", prompt)]


class ModelScript:
    """Scenarios by name; a prompt containing ``[[name]]`` or equal to ``name`` starts one.

    ``ModelScript({"name": [turn, turn]})`` is the same as ``script.add("name", turn, turn)``.
    A turn is a list of steps; a bare step stands for a turn of that one step, so
    ``[Text("a"), Text("b")]`` is two turns and ``[[Text("a"), Text("b")]]`` is one.
    """

    def __init__(
        self,
        scenarios: Mapping[str, Sequence[Turn | Step]] | None = None,
        *,
        default: DefaultReply = echo,
    ) -> None:
        self._scenarios: dict[str, Scenario] = {}
        self.default = default
        for name, turns in (scenarios or {}).items():
            self.add(name, *turns)

    def add(self, name: str, *turns: Turn | Step) -> Scenario:
        """Register a scenario; a bare step is a turn of one step."""
        if not turns:
            raise ValueError(f"scenario {name!r} has no turns")
        scenario = Scenario(
            name,
            tuple((turn,) if isinstance(turn, Step) else tuple(turn) for turn in turns),
        )
        self._scenarios[name] = scenario
        return scenario

    def match(self, prompt: str) -> Scenario | None:
        stripped = prompt.strip()
        for name, scenario in self._scenarios.items():
            if f"[[{name}]]" in prompt or stripped == name:
                return scenario
        return None

    def __contains__(self, name: str) -> bool:
        return name in self._scenarios


# ---------------------------------------------------------------------------------------------
# Reading requests


@dataclass(frozen=True)
class ToolResult:
    tool_use_id: str
    content: str
    is_error: bool


@dataclass(frozen=True)
class UserMessage:
    """The last user message of a request, as the script sees it."""

    index: int
    """Position in the request's `messages`."""
    text: str
    """Its text blocks joined by newlines, <system-reminder> blocks left out."""
    tool_results: tuple[ToolResult, ...]


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [block for block in content if isinstance(block, dict)]
    return []


def _block_text(content: Any) -> str:
    return "\n".join(
        block.get("text", "") for block in _blocks(content) if block.get("type") == "text"
    )


def _read_user_message(index: int, message: Mapping[str, Any]) -> UserMessage:
    texts = []
    results = []
    for block in _blocks(message.get("content")):
        kind = block.get("type")
        if kind == "text":
            text = block.get("text", "")
            if not text.lstrip().startswith(SYSTEM_REMINDER_PREFIX):
                texts.append(text)
        elif kind == "tool_result":
            results.append(
                ToolResult(
                    tool_use_id=str(block.get("tool_use_id", "")),
                    content=_block_text(block.get("content")),
                    is_error=bool(block.get("is_error", False)),
                )
            )
    return UserMessage(index, "\n".join(texts), tuple(results))


def last_user_message(messages: Sequence[Mapping[str, Any]]) -> UserMessage | None:
    """The user's last say in a conversation.

    Claude Code appends role:"system" messages after the user turn and wraps context in
    <system-reminder> text blocks; neither is what the user said. A user message made only of
    reminders is skipped too.
    """
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") != "user":
            continue
        user = _read_user_message(index, message)
        if user.text.strip() or user.tool_results:
            return user
    return None


def last_prompt(messages: Sequence[Mapping[str, Any]]) -> UserMessage | None:
    """The last user message that carries text (a prompt, not only tool results)."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") != "user":
            continue
        user = _read_user_message(index, message)
        if user.text.strip():
            return user
    return None


# ---------------------------------------------------------------------------------------------
# Recording


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    scenario: str | None = None
    turn: int | None = None
    completed: bool = False
    """The whole response went out (False while streaming, or when the client went away)."""

    @property
    def is_messages(self) -> bool:
        return self.method == "POST" and self.path == "/v1/messages"

    @property
    def output_schema(self) -> dict[str, Any] | None:
        """The JSON schema the answer must fit, for a structured-output request."""
        if not isinstance(self.body, dict):
            return None
        config = self.body.get("output_config")
        wanted = config.get("format") if isinstance(config, dict) else None
        if wanted is None:
            wanted = self.body.get("output_format")
        if isinstance(wanted, dict) and wanted.get("type") == "json_schema":
            schema = wanted.get("schema")
            return schema if isinstance(schema, dict) else {}
        return None

    @property
    def streamed(self) -> bool:
        return isinstance(self.body, dict) and bool(self.body.get("stream"))

    @property
    def messages(self) -> list[dict[str, Any]]:
        found = self.body.get("messages") if isinstance(self.body, dict) else None
        return found if isinstance(found, list) else []

    @property
    def tools_offered(self) -> list[str]:
        tools = self.body.get("tools") if isinstance(self.body, dict) else None
        return [str(tool.get("name")) for tool in tools or [] if isinstance(tool, dict)]

    @property
    def last_user(self) -> UserMessage | None:
        return last_user_message(self.messages)

    @property
    def tool_results(self) -> tuple[ToolResult, ...]:
        user = self.last_user
        return user.tool_results if user else ()


# ---------------------------------------------------------------------------------------------
# The server


def resolve_tool_name(name: str, offered: Iterable[str]) -> str:
    """The ACP variant of a built-in tool when the request offers it, else the name as given.

    claude-code-acp 0.16 swaps Bash/Write/Read/Edit for mcp__acp__* when the client offers fs
    and terminal; claude-agent-acp 0.23 and `claude -p` always offer the plain names.
    """
    offered = set(offered)
    if not name.startswith(ACP_TOOL_PREFIX) and f"{ACP_TOOL_PREFIX}{name}" in offered:
        return f"{ACP_TOOL_PREFIX}{name}"
    return name


def _sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


def _estimate_tokens(body: Any) -> int:
    return max(1, math.ceil(len(json.dumps(body)) / 4))


def _error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


class ScriptedModel:
    """The fake Anthropic API; serve `app` with `tests.fakes._http.serve_asgi`."""

    def __init__(self, script: ModelScript | None = None, *, model: str | None = None) -> None:
        self.script = script or ModelScript()
        self.model = model
        """Model name to answer with; None echoes the request's model."""
        self.requests: list[RecordedRequest] = []
        self._recorded = trio.Event()
        self._ids = itertools.count(1)
        self.app = Starlette(
            routes=[
                Route("/", self._root, methods=["GET", "HEAD"]),
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route(
                    "/{path:path}",
                    self._unknown,
                    methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
                ),
            ]
        )

    # -- for tests ------------------------------------------------------------------------------

    @property
    def message_requests(self) -> list[RecordedRequest]:
        """The conversation: POST /v1/messages requests, but not structured-output ones (a
        session title) nor HEAD /, count_tokens, …"""
        return [
            request
            for request in self.requests
            if request.is_messages and request.output_schema is None
        ]

    @property
    def structured_requests(self) -> list[RecordedRequest]:
        """POST /v1/messages requests for structured output (answered with schema-fitting JSON)."""
        return [
            request
            for request in self.requests
            if request.is_messages and request.output_schema is not None
        ]

    async def wait_for_request(
        self, predicate: Callable[[RecordedRequest], bool] = lambda _r: True
    ) -> RecordedRequest:
        """The first recorded request that satisfies `predicate`, waiting for it if needed."""
        while True:
            for request in self.requests:
                if predicate(request):
                    return request
            await self._recorded.wait()

    # -- handlers -------------------------------------------------------------------------------

    async def _record(self, request: Request) -> RecordedRequest:
        raw = await request.body()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        recorded = RecordedRequest(
            method=request.method,
            path=request.url.path,
            headers={key.lower(): value for key, value in request.headers.items()},
            body=body,
        )
        self.requests.append(recorded)
        self._recorded.set()
        self._recorded = trio.Event()
        return recorded

    async def _root(self, request: Request) -> Response:
        recorded = await self._record(request)
        recorded.completed = True
        return PlainTextResponse("ok")

    async def _models(self, request: Request) -> Response:
        recorded = await self._record(request)
        recorded.completed = True
        names = ["claude-opus-4-8", "claude-sonnet-4-5", "claude-haiku-4-5"]
        data = [
            {
                "type": "model",
                "id": name,
                "display_name": name,
                "created_at": "2025-01-01T00:00:00Z",
            }
            for name in names
        ]
        return JSONResponse(
            {"data": data, "has_more": False, "first_id": names[0], "last_id": names[-1]}
        )

    async def _unknown(self, request: Request) -> Response:
        recorded = await self._record(request)
        recorded.completed = True
        return JSONResponse(
            _error_body("not_found_error", f"{request.method} {request.url.path} is not faked"),
            status_code=404,
        )

    async def _count_tokens(self, request: Request) -> Response:
        recorded = await self._record(request)
        recorded.completed = True
        return JSONResponse({"input_tokens": _estimate_tokens(recorded.body)})

    async def _messages(self, request: Request) -> Response:
        recorded = await self._record(request)
        if not isinstance(recorded.body, dict):
            recorded.completed = True
            return JSONResponse(
                _error_body("invalid_request_error", "body must be a JSON object"), status_code=400
            )
        steps = self._plan(recorded)
        if steps and isinstance(steps[0], ApiError):
            recorded.completed = True
            return JSONResponse(
                _error_body(steps[0].error_type, steps[0].message), status_code=steps[0].status
            )
        headers = {"request-id": f"req_{uuid.uuid4().hex[:24]}"}
        if recorded.streamed:
            return StreamingResponse(
                self._stream(recorded, steps),
                media_type="text/event-stream",
                headers={**headers, "cache-control": "no-cache"},
            )
        message = await self._complete(recorded, steps)
        recorded.completed = True
        return JSONResponse(message, headers=headers)

    # -- answering ------------------------------------------------------------------------------

    def _plan(self, recorded: RecordedRequest) -> tuple[Step, ...]:
        """Pick the steps that answer this request, and note the scenario and turn."""
        schema = recorded.output_schema
        if schema is not None:
            return (Text(json.dumps(schema_example(schema))),)
        messages = recorded.messages
        prompt = last_prompt(messages)
        scenario = self.script.match(prompt.text) if prompt else None
        if prompt is None or scenario is None:
            user = last_user_message(messages)
            if user is not None and not user.text.strip():
                return (Text(EXHAUSTED_TEXT),)
            return tuple(self.script.default(prompt.text if prompt else ""))
        turn = sum(
            1 for message in messages[prompt.index + 1 :] if message.get("role") == "assistant"
        )
        recorded.scenario = scenario.name
        recorded.turn = turn
        if turn >= len(scenario.turns):
            return (Text(EXHAUSTED_TEXT),)
        return scenario.turns[turn]

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_fake{next(self._ids):06d}{uuid.uuid4().hex[:12]}"

    def _model_name(self, recorded: RecordedRequest) -> str:
        return self.model or str(recorded.body.get("model") or "claude-fake")

    def _tool_block(self, recorded: RecordedRequest, step: ToolUse) -> dict[str, Any]:
        name = resolve_tool_name(step.name, recorded.tools_offered)
        args = dict(step.input)
        if name == f"{ACP_TOOL_PREFIX}Bash":
            args.setdefault("timeout", DEFAULT_BASH_TIMEOUT_MS)
        return {"type": "tool_use", "id": self._new_id("toolu"), "name": name, "input": args}

    def _usage(self, recorded: RecordedRequest, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": _estimate_tokens(recorded.body),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
        }

    async def _complete(self, recorded: RecordedRequest, steps: Sequence[Step]) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        for step in steps:
            if isinstance(step, Delay):
                await trio.sleep(step.seconds)
            elif isinstance(step, Text):
                if content and content[-1]["type"] == "text":
                    content[-1]["text"] += "".join(step.chunks)
                else:
                    content.append({"type": "text", "text": "".join(step.chunks)})
            elif isinstance(step, Thinking):
                content.append(
                    {"type": "thinking", "thinking": "".join(step.chunks), "signature": SIGNATURE}
                )
            elif isinstance(step, ToolUse):
                content.append(self._tool_block(recorded, step))
            elif isinstance(step, ApiError):
                break
        tool_called = any(block["type"] == "tool_use" for block in content)
        return {
            "id": self._new_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": self._model_name(recorded),
            "content": content,
            "stop_reason": "tool_use" if tool_called else "end_turn",
            "stop_sequence": None,
            "usage": self._usage(recorded, sum(len(json.dumps(b)) // 4 for b in content) or 1),
        }

    async def _stream(
        self, recorded: RecordedRequest, steps: Sequence[Step]
    ) -> AsyncIterator[bytes]:
        """The real event sequence: message_start, ping, per block start/deltas/stop,
        message_delta (stop_reason, usage), message_stop."""
        yield _sse(
            {
                "type": "message_start",
                "message": {
                    "id": self._new_id("msg"),
                    "type": "message",
                    "role": "assistant",
                    "model": self._model_name(recorded),
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": self._usage(recorded, 1),
                },
            }
        )
        yield _sse({"type": "ping"})
        index = -1
        open_kind: str | None = None
        output_tokens = 0
        tool_called = False

        def start(block: dict[str, Any]) -> list[bytes]:
            nonlocal index, open_kind
            events = stop()
            index += 1
            open_kind = block["type"]
            events.append(
                _sse({"type": "content_block_start", "index": index, "content_block": block})
            )
            return events

        def stop() -> list[bytes]:
            nonlocal open_kind
            events = []
            if open_kind == "thinking":
                events.append(_delta(index, {"type": "signature_delta", "signature": SIGNATURE}))
            if open_kind is not None:
                events.append(_sse({"type": "content_block_stop", "index": index}))
            open_kind = None
            return events

        for step in steps:
            if isinstance(step, Delay):
                await trio.sleep(step.seconds)
                continue
            if isinstance(step, ApiError):
                for event in stop():
                    yield event
                yield _sse(_error_body(step.error_type, step.message))
                recorded.completed = True
                return
            if isinstance(step, Text):
                if open_kind != "text":
                    for event in start({"type": "text", "text": ""}):
                        yield event
                for chunk in step.chunks:
                    output_tokens += max(1, len(chunk) // 4)
                    yield _delta(index, {"type": "text_delta", "text": chunk})
            elif isinstance(step, Thinking):
                if open_kind != "thinking":
                    for event in start({"type": "thinking", "thinking": "", "signature": ""}):
                        yield event
                for chunk in step.chunks:
                    output_tokens += max(1, len(chunk) // 4)
                    yield _delta(index, {"type": "thinking_delta", "thinking": chunk})
            elif isinstance(step, ToolUse):
                tool_called = True
                block = self._tool_block(recorded, step)
                arguments = json.dumps(block["input"])
                for event in start({**block, "input": {}}):
                    yield event
                # Two pieces, split mid-JSON, as the real API does for longer inputs.
                middle = len(arguments) // 2
                for piece in (arguments[:middle], arguments[middle:]):
                    yield _delta(index, {"type": "input_json_delta", "partial_json": piece})
                output_tokens += max(1, len(arguments) // 4)
        for event in stop():
            yield event
        yield _sse(
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": "tool_use" if tool_called else "end_turn",
                    "stop_sequence": None,
                },
                "usage": {"output_tokens": max(1, output_tokens)},
            }
        )
        yield _sse({"type": "message_stop"})
        recorded.completed = True


def schema_example(schema: Mapping[str, Any], name: str = "value") -> Any:
    """A value that fits a JSON schema (objects, arrays, enums, const, scalars): what the fake
    answers a structured-output request with. Strings are `fake <property name>`."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options and isinstance(options[0], dict):
            return schema_example(options[0], name)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        return {
            key: schema_example(value if isinstance(value, dict) else {}, key)
            for key, value in properties.items()
        }
    if kind == "array":
        items = schema.get("items")
        count = int(schema.get("minItems", 0))
        return [schema_example(items if isinstance(items, dict) else {}, name)] * count
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return f"fake {name}"


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    return _sse({"type": "content_block_delta", "index": index, "delta": delta})


def parse_sse(raw: str) -> list[tuple[str, dict[str, Any]]]:
    """Split an SSE body into (event name, JSON data) pairs; for tests of the stream itself."""
    events = []
    for frame in raw.replace("\r\n", "\n").split("\n\n"):
        name = ""
        data = []
        for line in frame.split("\n"):
            if line.startswith("event:"):
                name = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].strip())
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


def docker_bridge_gateway() -> str | None:
    """The host's address on Docker's default bridge (where containers reach the host), or None
    when there is no Docker engine. Bind the model there for agents running in containers."""
    try:
        done = subprocess.run(
            ["docker", "network", "inspect", "bridge", "--format", "{{json .IPAM.Config}}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    try:
        configs = json.loads(done.stdout)
    except ValueError:
        return None
    for config in configs or []:
        gateway = config.get("Gateway")
        if gateway:
            return str(gateway)
    for config in configs or []:
        subnet = str(config.get("Subnet", ""))
        if subnet.count(".") == 3 and "/" in subnet:
            # Docker leaves Gateway out of IPAM config when it picked the default: the first host.
            network, _, _ = subnet.partition("/")
            octets = network.split(".")
            octets[3] = str(int(octets[3]) + 1)
            return ".".join(octets)
    return None


__all__ = [
    "ApiError",
    "Bash",
    "Delay",
    "ModelScript",
    "RecordedRequest",
    "Scenario",
    "ScriptedModel",
    "Step",
    "Text",
    "Thinking",
    "ToolResult",
    "ToolUse",
    "Turn",
    "UserMessage",
    "Write",
    "docker_bridge_gateway",
    "echo",
    "last_prompt",
    "last_user_message",
    "parse_sse",
    "resolve_tool_name",
]
