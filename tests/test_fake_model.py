"""The scripted model server: its wire format, and the real agents it drives.

The first half talks to the fake with httpx. The second half runs the real Claude Code binary and
the real Claude ACP adapter (installed from npm by `tests.agent_stack`) against it, so the fake is
checked against what the agents actually send and accept. Those tests use real time and real
processes: every one runs under `trio.fail_after`, never the autojump clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import trio

from tests.agent_stack import AgentStack, requires_agent_stack
from tests.fakes._http import serve_asgi
from tests.fakes.model import (
    ApiError,
    Bash,
    Delay,
    ModelScript,
    ScriptedModel,
    Text,
    Thinking,
    ToolUse,
    Write,
    last_user_message,
    parse_sse,
    resolve_tool_name,
)

REAL_TIMEOUT: Final = 120.0
"""Seconds a test of the real binaries may take; the slowest observed run took under 3 s."""
STOP_GRACE: Final = 5.0
HEADERS: Final = {"x-api-key": "dummy", "anthropic-version": "2023-06-01"}


async def start_model(nursery: trio.Nursery, script: ModelScript) -> tuple[ScriptedModel, str]:
    model = ScriptedModel(script)
    served = await nursery.start(serve_asgi, model.app, "127.0.0.1")
    return model, served.base_url


def request_body(
    *messages: dict[str, Any], tools: list[str] | None = None, stream: bool = True
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-opus-4-8",
        "max_tokens": 1024,
        "stream": stream,
        "messages": list(messages),
    }
    if tools is not None:
        body["tools"] = [
            {"name": name, "description": name, "input_schema": {"type": "object"}}
            for name in tools
        ]
    return body


def user(*blocks: dict[str, Any] | str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [{"type": "text", "text": b} if isinstance(b, str) else b for b in blocks],
    }


REMINDER: Final = "<system-reminder>\nToday's date is 2026-01-01.\n</system-reminder>"


# ---------------------------------------------------------------------------------------------
# The wire format, checked with httpx


async def test_streamed_text_follows_the_messages_event_sequence(nursery: trio.Nursery) -> None:
    script = ModelScript({"greet": [[Text("Hello ", "world"), Text("!")]]})
    _, url = await start_model(nursery, script)

    async with httpx.AsyncClient(base_url=url, headers=HEADERS) as client:
        response = await client.post(
            "/v1/messages?beta=true", json=request_body(user(REMINDER, "say [[greet]]"))
        )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    assert all(name == data["type"] for name, data in events)
    assert [name for name, _ in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["role"] == "assistant"
    assert start["content"] == []
    assert start["model"] == "claude-opus-4-8"
    assert start["usage"]["input_tokens"] > 0
    assert events[2][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert [data["delta"] for _, data in events[3:6]] == [
        {"type": "text_delta", "text": "Hello "},
        {"type": "text_delta", "text": "world"},
        {"type": "text_delta", "text": "!"},
    ]
    assert events[7][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[7][1]["usage"]["output_tokens"] > 0


async def test_tool_use_takes_the_tool_name_the_request_offers(nursery: trio.Nursery) -> None:
    script = ModelScript({"run": [[Text("Running."), Bash("touch x", description="Make x")]]})
    _, url = await start_model(nursery, script)

    async def tool_block(tools: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The tool_use block as started, and its arguments from the deltas."""
        async with httpx.AsyncClient(base_url=url, headers=HEADERS) as client:
            response = await client.post(
                "/v1/messages", json=request_body(user("[[run]]"), tools=tools)
            )
        events = parse_sse(response.text)
        starts = [d for n, d in events if n == "content_block_start"]
        tool_start = next(d for d in starts if d["content_block"]["type"] == "tool_use")
        partial = "".join(
            d["delta"]["partial_json"]
            for n, d in events
            if n == "content_block_delta" and d["index"] == tool_start["index"]
        )
        stop_reason = next(d for n, d in events if n == "message_delta")["delta"]["stop_reason"]
        assert stop_reason == "tool_use"
        return tool_start["content_block"], json.loads(partial)

    block, args = await tool_block(["Read", "mcp__acp__Bash", "mcp__acp__Write", "Bash"])
    assert block["name"] == "mcp__acp__Bash"
    assert block["id"].startswith("toolu_")
    assert block["input"] == {}
    # The ACP variant refuses a call without a timeout.
    assert args == {"command": "touch x", "description": "Make x", "timeout": 120_000}

    block, args = await tool_block(["Read", "Bash", "Write"])
    assert block["name"] == "Bash"
    assert args == {"command": "touch x", "description": "Make x"}


def test_resolve_tool_name() -> None:
    assert resolve_tool_name("Write", ["mcp__acp__Write"]) == "mcp__acp__Write"
    assert resolve_tool_name("Write", ["Write", "Bash"]) == "Write"
    assert resolve_tool_name("Write", []) == "Write"
    assert resolve_tool_name("mcp__acp__Write", ["Write"]) == "mcp__acp__Write"


async def test_non_streaming_answer_is_one_message(nursery: trio.Nursery) -> None:
    script = ModelScript(
        {"both": [[Thinking("Let me ", "see."), Text("Writing."), Write("/tmp/f.txt", "hi\n")]]}
    )
    model, url = await start_model(nursery, script)

    async with httpx.AsyncClient(base_url=url, headers=HEADERS) as client:
        response = await client.post(
            "/v1/messages", json=request_body(user("[[both]]"), tools=["Write"], stream=False)
        )

    assert response.status_code == 200
    message = response.json()
    assert message["type"] == "message"
    assert message["stop_reason"] == "tool_use"
    assert [block["type"] for block in message["content"]] == ["thinking", "text", "tool_use"]
    assert message["content"][0]["thinking"] == "Let me see."
    assert message["content"][1] == {"type": "text", "text": "Writing."}
    assert message["content"][2]["name"] == "Write"
    assert message["content"][2]["input"] == {"file_path": "/tmp/f.txt", "content": "hi\n"}
    assert model.message_requests[0].completed


async def test_a_structured_output_request_gets_json_of_its_schema_not_the_script(
    nursery: trio.Nursery,
) -> None:
    """What claude-agent-acp 0.101.0 sends to title a session: the first prompt quoted, and
    `output_config.format` a JSON schema. The real API answers with JSON that fits it."""
    script = ModelScript({"greet": [[Text("Hello")]]})
    model, url = await start_model(nursery, script)
    schema = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "tags": {"type": "array", "minItems": 1}},
        "required": ["title", "tags"],
        "additionalProperties": False,
    }
    body = request_body(user("<session>\nhi [[greet]]\n</session>"), stream=False)
    wanted = {"type": "json_schema", "schema": schema}
    body["output_config"] = {"effort": "medium", "format": wanted}

    async with httpx.AsyncClient(base_url=url, headers=HEADERS) as client:
        response = await client.post("/v1/messages", json=body)
        plain = await client.post(
            "/v1/messages", json=request_body(user("hi [[greet]]"), stream=False)
        )

    [block] = response.json()["content"]
    assert json.loads(block["text"]) == {"title": "fake title", "tags": ["fake tags"]}
    assert response.json()["stop_reason"] == "end_turn"
    assert plain.json()["content"] == [{"type": "text", "text": "Hello"}]
    assert [r.last_user.text for r in model.message_requests if r.last_user] == ["hi [[greet]]"]
    [structured] = model.structured_requests
    assert structured.scenario is None
    assert structured.output_schema == schema


async def test_count_tokens_root_and_unknown_paths_answer(nursery: trio.Nursery) -> None:
    model, url = await start_model(nursery, ModelScript())

    async with httpx.AsyncClient(base_url=url, headers=HEADERS) as client:
        head = await client.head("/")
        get = await client.get("/")
        tokens = await client.post("/v1/messages/count_tokens", json=request_body(user("hi")))
        unknown = await client.post("/api/event_logging/batch", json={})

    assert head.status_code == 200
    assert get.status_code == 200
    assert tokens.status_code == 200
    assert isinstance(tokens.json()["input_tokens"], int)
    assert tokens.json()["input_tokens"] > 0
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "not_found_error"
    assert [(r.method, r.path) for r in model.requests] == [
        ("HEAD", "/"),
        ("GET", "/"),
        ("POST", "/v1/messages/count_tokens"),
        ("POST", "/api/event_logging/batch"),
    ]


def test_last_user_message_skips_reminders_and_trailing_system_messages() -> None:
    messages = [
        user("first prompt"),
        {"role": "assistant", "content": [{"type": "text", "text": "You said: first prompt"}]},
        user(REMINDER, "second prompt", REMINDER),
        {"role": "system", "content": "Available agent types for the Agent tool: ..."},
        user(REMINDER),
        {"role": "system", "content": [{"type": "text", "text": "more context"}]},
    ]

    last = last_user_message(messages)

    assert last is not None
    assert last.index == 2
    assert last.text == "second prompt"
    assert last.tool_results == ()
    assert last_user_message([{"role": "user", "content": "plain string"}]) is not None
    assert last_user_message([{"role": "system", "content": "x"}]) is None


async def test_scenario_continues_after_a_tool_result(nursery: trio.Nursery) -> None:
    script = ModelScript()
    script.add("two-turns", [Bash("false")], Text("done"))
    model, url = await start_model(nursery, script)
    prompt = user(REMINDER, "please [[two-turns]]")

    async with httpx.AsyncClient(base_url=url, headers=HEADERS) as client:
        first = await client.post("/v1/messages", json=request_body(prompt, stream=False))
        tool_use = first.json()["content"][0]
        result = {
            "type": "tool_result",
            "tool_use_id": tool_use["id"],
            "content": [{"type": "text", "text": "User refused permission to run tool"}],
            "is_error": True,
        }
        second = await client.post(
            "/v1/messages",
            json=request_body(
                prompt,
                {"role": "system", "content": "agent list"},
                {"role": "assistant", "content": [tool_use]},
                user(result, REMINDER),
                stream=False,
            ),
        )
        follow_up = await client.post(
            "/v1/messages",
            json=request_body(
                prompt,
                {"role": "assistant", "content": [tool_use]},
                user(result),
                {"role": "assistant", "content": [{"type": "text", "text": "done"}]},
                user("and now?"),
                stream=False,
            ),
        )

    assert first.json()["stop_reason"] == "tool_use"
    assert second.json()["content"] == [{"type": "text", "text": "done"}]
    assert second.json()["stop_reason"] == "end_turn"
    assert follow_up.json()["content"] == [{"type": "text", "text": "You said: and now?"}]
    recorded = model.message_requests
    assert [(r.scenario, r.turn) for r in recorded] == [
        ("two-turns", 0),
        ("two-turns", 1),
        (None, None),
    ]
    [rejection] = recorded[1].tool_results
    assert rejection.tool_use_id == tool_use["id"]
    assert rejection.is_error
    assert rejection.content == "User refused permission to run tool"


async def test_script_past_its_last_turn_ends_the_turn(nursery: trio.Nursery) -> None:
    script = ModelScript({"short": [ToolUse("Read", {"file_path": "/etc/hostname"})]})
    _, url = await start_model(nursery, script)
    prompt = user("[[short]]")
    tool_use = {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "host"}

    async with httpx.AsyncClient(base_url=url, headers=HEADERS) as client:
        response = await client.post(
            "/v1/messages",
            json=request_body(prompt, {"role": "assistant", "content": [tool_use]}, user(result)),
        )

    events = parse_sse(response.text)
    assert [d["delta"]["text"] for n, d in events if n == "content_block_delta"] == ["Done."]
    assert next(d for n, d in events if n == "message_delta")["delta"]["stop_reason"] == "end_turn"


async def test_exact_prompt_selects_a_scenario_and_others_are_echoed(
    nursery: trio.Nursery,
) -> None:
    script = ModelScript({"what is 2+2?": [Text("4")]})
    _, url = await start_model(nursery, script)

    async with httpx.AsyncClient(base_url=url, headers=HEADERS) as client:
        exact = await client.post(
            "/v1/messages", json=request_body(user(REMINDER, "what is 2+2?"), stream=False)
        )
        other = await client.post(
            "/v1/messages", json=request_body(user("what is 3+3?"), stream=False)
        )

    assert exact.json()["content"] == [{"type": "text", "text": "4"}]
    assert other.json()["content"] == [{"type": "text", "text": "You said: what is 3+3?"}]


async def test_delay_holds_the_stream_between_deltas(nursery: trio.Nursery) -> None:
    script = ModelScript({"slow": [[Text("before"), Delay(0.3), Text("after")]]})
    model, url = await start_model(nursery, script)
    arrivals: list[tuple[float, str]] = []

    async with (
        httpx.AsyncClient(base_url=url, headers=HEADERS) as client,
        client.stream("POST", "/v1/messages", json=request_body(user("[[slow]]"))) as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith("data:") and "text_delta" in line:
                arrivals.append((trio.current_time(), json.loads(line[5:])["delta"]["text"]))

    assert [text for _, text in arrivals] == ["before", "after"]
    assert arrivals[1][0] - arrivals[0][0] >= 0.25
    assert model.message_requests[0].completed


async def test_client_leaving_mid_stream_leaves_the_request_incomplete(
    nursery: trio.Nursery,
) -> None:
    script = ModelScript({"long": [[Text("first"), Delay(60), Text("never")]]})
    model, url = await start_model(nursery, script)

    with trio.fail_after(10):
        async with (
            httpx.AsyncClient(base_url=url, headers=HEADERS) as client,
            client.stream("POST", "/v1/messages", json=request_body(user("[[long]]"))) as response,
        ):
            async for line in response.aiter_lines():
                if "text_delta" in line:
                    break

    [request] = model.message_requests
    assert request.scenario == "long"
    assert not request.completed


async def test_api_error_before_and_during_a_stream(nursery: trio.Nursery) -> None:
    script = ModelScript(
        {
            "refuse": [ApiError(400, "invalid_request_error", "bad prompt")],
            "break": [[Text("partial"), ApiError(500, "api_error", "broke")]],
        }
    )
    _, url = await start_model(nursery, script)

    async with httpx.AsyncClient(base_url=url, headers=HEADERS) as client:
        refused = await client.post("/v1/messages", json=request_body(user("[[refuse]]")))
        broken = await client.post("/v1/messages", json=request_body(user("[[break]]")))

    assert refused.status_code == 400
    assert refused.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "bad prompt"},
    }
    events = parse_sse(broken.text)
    assert [n for n, _ in events][-2:] == ["content_block_stop", "error"]
    assert events[-1][1]["error"] == {"type": "api_error", "message": "broke"}


async def test_wait_for_request_returns_the_first_match(nursery: trio.Nursery) -> None:
    model, url = await start_model(nursery, ModelScript())
    found: list[str] = []

    async def waiter() -> None:
        request = await model.wait_for_request(lambda r: r.is_messages)
        found.append(request.path)

    with trio.fail_after(10):
        async with trio.open_nursery() as inner:
            inner.start_soon(waiter)
            async with httpx.AsyncClient(base_url=url, headers=HEADERS) as client:
                await client.head("/")
                await client.post("/v1/messages", json=request_body(user("hi")))

    assert found == ["/v1/messages"]


# ---------------------------------------------------------------------------------------------
# Real agents: processes, lines, JSON-RPC


@pytest.fixture(scope="session")
def agent_stack() -> AgentStack:
    return requires_agent_stack()


class LineReader:
    """Newline-delimited lines from a process's stdout."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def next_line(self) -> bytes | None:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line
            data = await self._stream.receive_some(65536)
            if not data:
                return None
            self._buffer += data


@contextlib.asynccontextmanager
async def spawn(
    args: list[str], *, env: dict[str, str], cwd: Path, stderr_path: Path
) -> AsyncIterator[trio.Process]:
    """Run a process in its own process group, and take the whole group down on exit
    (the ACP adapter starts Claude Code as a child)."""
    stderr = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        process = await trio.lowlevel.open_process(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        os.close(stderr)
    try:
        yield process
    finally:
        with trio.move_on_after(STOP_GRACE * 2, shield=True):
            if process.stdin is not None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await process.stdin.aclose()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with trio.move_on_after(STOP_GRACE):
                await process.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


PermissionAnswer = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass
class AcpClient:
    """A minimal ACP client over stdio: requests in order, notifications collected, agent
    requests answered by handlers."""

    process: trio.Process
    lines: LineReader
    handlers: dict[str, PermissionAnswer] = field(default_factory=dict)
    updates: list[dict[str, Any]] = field(default_factory=list)
    agent_requests: list[dict[str, Any]] = field(default_factory=list)
    on_update: Callable[[dict[str, Any]], Awaitable[None]] | None = None
    _next_id: int = 1

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(
            json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n"
        )

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        request_id = self._next_id
        self._next_id += 1
        await self.send({"id": request_id, "method": method, "params": params})
        while True:
            line = await self.lines.next_line()
            if line is None:
                raise AssertionError(f"the agent closed stdout before answering {method}")
            if not line.strip():
                continue
            message = json.loads(line)
            if "method" in message and "id" in message:
                self.agent_requests.append(message)
                handler = self.handlers.get(message["method"])
                if handler is None:
                    await self.send(
                        {"id": message["id"], "error": {"code": -32601, "message": "not handled"}}
                    )
                else:
                    await self.send(
                        {"id": message["id"], "result": await handler(message["params"])}
                    )
            elif message.get("method") == "session/update":
                self.updates.append(message["params"]["update"])
                if self.on_update is not None:
                    await self.on_update(message["params"]["update"])
            elif message.get("id") == request_id:
                if "error" in message:
                    raise AssertionError(f"{method} failed: {message['error']}")
                return dict(message["result"])

    def text(self, kind: str = "agent_message_chunk") -> str:
        return "".join(
            update["content"].get("text", "")
            for update in self.updates
            if update.get("sessionUpdate") == kind
        )


def choose(option_id: str) -> PermissionAnswer:
    async def answer(params: dict[str, Any]) -> dict[str, Any]:
        offered = [option["optionId"] for option in params["options"]]
        assert option_id in offered, offered
        return {"outcome": {"outcome": "selected", "optionId": option_id}}

    return answer


def offline_dirs(tmp_path: Path) -> tuple[Path, Path]:
    work = tmp_path / "work"
    home = tmp_path / "home"
    work.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    return work, home


@contextlib.asynccontextmanager
async def acp_session(
    stack: AgentStack,
    model_url: str,
    tmp_path: Path,
    *,
    permission: PermissionAnswer | None = None,
) -> AsyncIterator[tuple[AcpClient, str, Path]]:
    """Spawn claude-agent-acp, initialize and open a session in a fresh work folder."""
    work, home = offline_dirs(tmp_path)
    async with spawn(
        [str(stack.claude_agent_acp)],
        env=stack.offline_env(model_url, home),
        cwd=work,
        stderr_path=tmp_path / "adapter.stderr",
    ) as process:
        assert process.stdout is not None
        client = AcpClient(
            process,
            LineReader(process.stdout),
            handlers={"session/request_permission": permission} if permission else {},
        )
        await client.request(
            "initialize",
            {
                "protocolVersion": 1,
                "clientCapabilities": {
                    "fs": {"readTextFile": False, "writeTextFile": False},
                    "terminal": False,
                },
                "clientInfo": {"name": "anycode-tests", "version": "0"},
            },
        )
        session = await client.request("session/new", {"cwd": str(work), "mcpServers": []})
        yield client, session["sessionId"], work


def stderr_tail(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-3000:]
    return ""


async def run_claude_print(
    stack: AgentStack, model_url: str, tmp_path: Path, prompt: str, *flags: str
) -> tuple[list[dict[str, Any]], subprocess.CompletedProcess[bytes]]:
    work, home = offline_dirs(tmp_path)
    args = [str(stack.claude), "-p", prompt, "--output-format", "stream-json", "--verbose", *flags]
    done = await trio.run_process(
        args,
        env=stack.offline_env(model_url, home),
        cwd=work,
        stdin=subprocess.DEVNULL,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    lines = [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]
    return lines, done


# ---------------------------------------------------------------------------------------------
# Real `claude -p`


async def test_claude_print_streams_the_scripted_text(
    agent_stack: AgentStack, nursery: trio.Nursery, tmp_path: Path
) -> None:
    script = ModelScript({"hello": [Text("Hello ", "from ", "the fake")]})
    model, url = await start_model(nursery, script)

    with trio.fail_after(REAL_TIMEOUT):
        lines, done = await run_claude_print(
            agent_stack, url, tmp_path, "[[hello]]", "--include-partial-messages"
        )

    assert done.returncode == 0, done.stderr.decode()[-3000:]
    deltas = [
        line["event"]["delta"]["text"]
        for line in lines
        if line["type"] == "stream_event"
        and line["event"]["type"] == "content_block_delta"
        and line["event"]["delta"]["type"] == "text_delta"
    ]
    assert deltas == ["Hello ", "from ", "the fake"]
    result = lines[-1]
    assert result["type"] == "result"
    assert result["subtype"] == "success"
    assert not result["is_error"]
    assert result["result"] == "Hello from the fake"
    # Offline: every request reached the fake, the prompt among them.
    [request] = model.message_requests
    assert request.streamed
    assert request.last_user is not None
    assert request.last_user.text == "[[hello]]"
    assert "Bash" in request.tools_offered
    assert request.headers["x-api-key"] == "dummy"


async def test_claude_print_runs_a_scripted_bash_call_when_permissions_are_skipped(
    agent_stack: AgentStack, nursery: trio.Nursery, tmp_path: Path
) -> None:
    script = ModelScript()
    script.add(
        "make-file",
        [Text("Creating it."), Bash("touch made_by_bash.txt", description="Create a file")],
        [Text("done")],
    )
    model, url = await start_model(nursery, script)

    with trio.fail_after(REAL_TIMEOUT):
        lines, done = await run_claude_print(
            agent_stack, url, tmp_path, "please [[make-file]]", "--dangerously-skip-permissions"
        )

    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert (tmp_path / "work" / "made_by_bash.txt").exists()
    assert lines[-1]["result"] == "done"
    assert [(r.scenario, r.turn) for r in model.message_requests] == [
        ("make-file", 0),
        ("make-file", 1),
    ]
    [result] = model.message_requests[1].tool_results
    assert not result.is_error


async def test_claude_print_reports_a_scripted_api_error(
    agent_stack: AgentStack, nursery: trio.Nursery, tmp_path: Path
) -> None:
    script = ModelScript({"refuse": [ApiError(400, "invalid_request_error", "scripted refusal")]})
    _, url = await start_model(nursery, script)

    with trio.fail_after(REAL_TIMEOUT):
        lines, done = await run_claude_print(agent_stack, url, tmp_path, "[[refuse]]")

    assert done.returncode == 1
    assert lines[-1]["is_error"]
    assert "scripted refusal" in lines[-1]["result"]


# ---------------------------------------------------------------------------------------------
# Real claude-agent-acp over stdio


async def test_acp_adapter_streams_the_scripted_text_and_thinking(
    agent_stack: AgentStack, nursery: trio.Nursery, tmp_path: Path
) -> None:
    script = ModelScript({"greet": [[Thinking("Pondering."), Text("Hello ", "over ", "ACP")]]})
    model, url = await start_model(nursery, script)

    with trio.fail_after(REAL_TIMEOUT):
        async with acp_session(agent_stack, url, tmp_path) as (client, session_id, _):
            reply = await client.request(
                "session/prompt",
                {"sessionId": session_id, "prompt": [{"type": "text", "text": "hi [[greet]]"}]},
            )
            follow_up = await client.request(
                "session/prompt",
                {"sessionId": session_id, "prompt": [{"type": "text", "text": "thanks"}]},
            )

    assert reply["stopReason"] == "end_turn"
    assert follow_up["stopReason"] == "end_turn"
    chunks = [
        update["content"]["text"]
        for update in client.updates
        if update["sessionUpdate"] == "agent_message_chunk" and update["content"]["text"]
    ]
    assert chunks == ["Hello ", "over ", "ACP", "You said: ", "thanks"], stderr_tail(
        tmp_path / "adapter.stderr"
    )
    assert client.text("agent_thought_chunk") == "Pondering."
    assert [r.last_user.text for r in model.message_requests if r.last_user] == [
        "hi [[greet]]",
        "thanks",
    ]


async def test_acp_adapter_asks_permission_for_bash_and_runs_it_when_allowed(
    agent_stack: AgentStack, nursery: trio.Nursery, tmp_path: Path
) -> None:
    script = ModelScript()
    script.add(
        "bash",
        [Text("Creating it."), Bash("touch made_by_bash.txt", description="Create a file")],
        [Text("done")],
    )
    model, url = await start_model(nursery, script)

    with trio.fail_after(REAL_TIMEOUT):
        async with acp_session(agent_stack, url, tmp_path, permission=choose("allow-once")) as (
            client,
            session_id,
            work,
        ):
            reply = await client.request(
                "session/prompt",
                {"sessionId": session_id, "prompt": [{"type": "text", "text": "[[bash]]"}]},
            )

    assert reply["stopReason"] == "end_turn"
    assert (work / "made_by_bash.txt").exists()
    [permission] = client.agent_requests
    assert permission["method"] == "session/request_permission"
    assert permission["params"]["toolCall"]["rawInput"]["command"] == "touch made_by_bash.txt"
    assert {o["optionId"] for o in permission["params"]["options"]} >= {"allow-once", "reject"}
    statuses = [
        update.get("status")
        for update in client.updates
        if update["sessionUpdate"] in {"tool_call", "tool_call_update"}
    ]
    assert "completed" in statuses
    assert client.text() == "Creating it.done"
    assert "Bash" in model.message_requests[0].tools_offered
    [result] = model.message_requests[1].tool_results
    assert not result.is_error


async def test_acp_adapter_sends_a_rejected_write_back_as_an_error_tool_result(
    agent_stack: AgentStack, nursery: trio.Nursery, tmp_path: Path
) -> None:
    target = tmp_path / "work" / "not_written.txt"
    script = ModelScript({"write": [[Write(str(target), "nope\n")], [Text("understood")]]})
    model, url = await start_model(nursery, script)

    with trio.fail_after(REAL_TIMEOUT):
        async with acp_session(agent_stack, url, tmp_path, permission=choose("reject")) as (
            client,
            session_id,
            _,
        ):
            reply = await client.request(
                "session/prompt",
                {"sessionId": session_id, "prompt": [{"type": "text", "text": "[[write]]"}]},
            )

    assert not target.exists()
    [permission] = client.agent_requests
    assert permission["params"]["toolCall"]["rawInput"]["file_path"] == str(target)
    [rejected] = model.message_requests[1].tool_results
    assert rejected.is_error
    assert rejected.content == "User refused permission to run tool"
    # The rejection does not end the turn: the model is asked again and answers.
    assert reply["stopReason"] == "end_turn"
    assert client.text() == "understood"
    assert any(
        update.get("status") == "failed"
        for update in client.updates
        if update["sessionUpdate"] == "tool_call_update"
    )


async def test_acp_cancel_mid_turn_abandons_the_model_stream(
    agent_stack: AgentStack, nursery: trio.Nursery, tmp_path: Path
) -> None:
    script = ModelScript({"slow": [[Text("first "), Delay(60), Text("never")]]})
    model, url = await start_model(nursery, script)

    with trio.fail_after(REAL_TIMEOUT):
        async with acp_session(agent_stack, url, tmp_path) as (client, session_id, _):

            async def cancel_on_first_text(update: dict[str, Any]) -> None:
                if update["sessionUpdate"] == "agent_message_chunk" and update["content"]["text"]:
                    await client.send(
                        {"method": "session/cancel", "params": {"sessionId": session_id}}
                    )

            client.on_update = cancel_on_first_text
            reply = await client.request(
                "session/prompt",
                {"sessionId": session_id, "prompt": [{"type": "text", "text": "[[slow]]"}]},
            )

    assert reply["stopReason"] == "cancelled"
    assert client.text() == "first "
    [request] = model.message_requests
    assert not request.completed


# ---------------------------------------------------------------------------------------------
# Figures: pytest -m bench tests/test_fake_model.py -s

BENCH_RUNS: Final = 5


@pytest.mark.bench
async def test_bench_time_to_first_text(
    agent_stack: AgentStack, nursery: trio.Nursery, tmp_path: Path
) -> None:
    script = ModelScript({"hello": [Text("Hello ", "world")]})
    _, url = await start_model(nursery, script)
    acp: list[dict[str, float]] = []
    direct: list[float] = []

    for run in range(BENCH_RUNS):
        folder = tmp_path / f"acp{run}"
        folder.mkdir()
        marks: dict[str, float] = {}
        started = time.monotonic()
        with trio.fail_after(REAL_TIMEOUT):
            async with acp_session(agent_stack, url, folder) as (client, session_id, _):
                marks["session/new"] = time.monotonic() - started

                async def mark(
                    update: dict[str, Any],
                    marks: dict[str, float] = marks,
                    started: float = started,
                ) -> None:
                    kind = update["sessionUpdate"]
                    if kind == "agent_message_chunk" and update["content"]["text"]:
                        marks.setdefault("first text", time.monotonic() - started)

                client.on_update = mark
                prompted = time.monotonic()
                await client.request(
                    "session/prompt",
                    {"sessionId": session_id, "prompt": [{"type": "text", "text": "[[hello]]"}]},
                )
                marks["prompt to first text"] = marks["first text"] - (prompted - started)
        acp.append(marks)

    for run in range(BENCH_RUNS):
        folder = tmp_path / f"print{run}"
        work, home = offline_dirs(folder)
        started = time.monotonic()
        with trio.fail_after(REAL_TIMEOUT):
            async with spawn(
                [
                    str(agent_stack.claude),
                    "-p",
                    "[[hello]]",
                    "--output-format",
                    "stream-json",
                    "--verbose",
                    "--include-partial-messages",
                ],
                env=agent_stack.offline_env(url, home),
                cwd=work,
                stderr_path=folder / "claude.stderr",
            ) as process:
                assert process.stdin is not None
                assert process.stdout is not None
                # An open stdin makes `claude -p` wait 3 s for piped input first.
                await process.stdin.aclose()
                reader = LineReader(process.stdout)
                while (line := await reader.next_line()) is not None:
                    if b'"text_delta"' in line:
                        direct.append(time.monotonic() - started)
                        break

    def median(key: str) -> float:
        return statistics.median(marks[key] for marks in acp)

    print(
        f"\nstdio ACP (claude-agent-acp → claude), median of {BENCH_RUNS}: "
        f"spawn → session/new answered {median('session/new'):.2f} s, "
        f"spawn → first text {median('first text'):.2f} s, "
        f"prompt → first text {median('prompt to first text'):.2f} s"
    )
    print(
        f"claude -p, median of {BENCH_RUNS}: spawn → first text delta "
        f"{statistics.median(direct):.2f} s (all: {', '.join(f'{t:.2f}' for t in direct)})"
    )
    assert len(acp) == len(direct) == BENCH_RUNS
