"""The HTTP API against a real server (hypercorn on a real port, httpx as the client), in front
of the whole daemon with the fake sandbox provider and scripted agents; every answer is checked
against the OpenAPI document the server serves."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from openapi_spec_validator import validate as validate_openapi

from anycode_actors.agents import TextDelta, TurnEnded
from anycode_actors.api import ApiPlatform, hash_token
from anycode_actors.api.openapi import openapi_document
from anycode_actors.api.platform import ApiTokenMissing
from anycode_actors.config import ConfigError, config_from_mapping
from tests.actor_fakes import FakeAgent, asks, said
from tests.api_rig import TOKENS, api_config, check, running_api, sse_events

WAIT = 30

S = "/v1/sessions"
ONE = "/v1/sessions/{id}"
EVENTS = "/v1/sessions/{id}/events"
MESSAGES = "/v1/sessions/{id}/messages"
PERMISSION = "/v1/sessions/{id}/permissions/{interaction}"
FILE = "/v1/sessions/{id}/files/{name}"


def asking_agent() -> FakeAgent:
    """Says hello, asks to write hello.md, and once allowed says it is done."""
    return FakeAgent(
        [
            [
                TextDelta(text="Hello from the agent. "),
                asks(),
                TextDelta(text="Wrote hello.md."),
                TurnEnded(stop_reason="end_turn"),
            ]
        ]
    )


async def read_events(
    client: httpx.AsyncClient,
    session_id: str,
    until: Callable[[list[dict[str, Any]]], bool],
    headers: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Read the session's event stream until `until(events)` holds or the server ends it."""
    text = ""
    with trio.fail_after(WAIT):
        async with client.stream("GET", f"{S}/{session_id}/events", headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for chunk in response.aiter_text():
                text += chunk
                if until(sse_events(text)):
                    break
    return sse_events(text)


def ended(events: list[dict[str, Any]]) -> bool:
    return any(e["event"] == "end" for e in events)


def asking(events: list[dict[str, Any]]) -> bool:
    return any(e["event"] == "state" and e["data"]["pending"] for e in events)


async def start(client: httpx.AsyncClient, prompt: str = "write hello.md", **more: str) -> Any:
    return check(await client.post(S, json={"prompt": prompt, **more}), S, "POST", 201)


# --- the contract and the door ------------------------------------------------------------------


async def test_the_openapi_document_is_valid_and_served_without_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    validate_openapi(openapi_document())
    async with running_api(tmp_path, monkeypatch, asking_agent) as api, api.client(None) as anon:
        served = await anon.get("/v1/openapi.json")
        assert served.status_code == 200
        assert served.json() == openapi_document()
        page = await anon.get("/")
        assert page.status_code == 200
        assert "EventSource" in page.text


async def test_every_route_wants_a_known_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_api(tmp_path, monkeypatch, asking_agent) as api, api.client(None) as anon:
        for method, path in [
            ("GET", S),
            ("POST", S),
            ("GET", f"{S}/x"),
            ("GET", f"{S}/x/events"),
            ("POST", f"{S}/x/messages"),
            ("POST", f"{S}/x/permissions/y"),
            ("DELETE", f"{S}/x"),
            ("GET", "/v1/tree"),
        ]:
            response = await anon.request(method, path, json={})
            assert response.status_code == 401, (method, path)
            assert "token" in response.json()["error"]
        wrong = await anon.get(S, headers={"Authorization": "Bearer not-a-token"})
        check(wrong, S, "GET", 401)
        # The dashboard's cookie opens GET requests only.
        cookie = {"Cookie": f"anycode_token={TOKENS['ada']}"}
        check(await anon.get(S, headers=cookie), S, "GET", 200)
        refused = await anon.post(S, json={"prompt": "hi"}, headers=cookie)
        check(refused, S, "POST", 401)


async def test_the_tree_is_the_admin_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_api(tmp_path, monkeypatch, asking_agent) as api, api.client() as ada:
        tree = check(await ada.get("/v1/tree"), "/v1/tree", "GET", 200)
        paths = {entry["path"] for entry in tree["entries"]}
        assert {"root/router", "root/api", "root/sessions"} <= paths
        assert tree["daemon"]["id"] == api.daemon.daemon_id


# --- a whole session -----------------------------------------------------------------------------


async def test_a_task_streams_asks_is_allowed_and_leaves_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_api(tmp_path, monkeypatch, asking_agent) as api, api.client() as ada:
        api.provider.outbox["hello.md"] = b"# hello\n"
        created = await start(ada, "write hello.md")
        session_id = created["id"]
        assert created["owner"] == "ada"
        assert created["prompt"] == "write hello.md"
        listed = check(await ada.get(S), S, "GET", 200)["sessions"]
        assert [s["id"] for s in listed] == [session_id]

        events = await read_events(ada, session_id, asking)
        texts = [e["data"]["data"]["text"] for e in events if e["event"] == "text_delta"]
        assert texts == ["Hello from the agent. "]
        pending = next(e for e in events if e["event"] == "state" and e["data"]["pending"])
        prompt = pending["data"]["pending"][0]
        assert prompt["title"] == "Run touch ok.txt"
        assert [o["kind"] for o in prompt["options"]] == [
            "allow_once",
            "allow_always",
            "reject_once",
        ]
        detail = check(await ada.get(f"{S}/{session_id}"), ONE, "GET", 200)
        assert detail["pending"] == pending["data"]["pending"]

        path = f"{S}/{session_id}/permissions/{prompt['id']}"
        check(await ada.post(path, json={"option": 9}), PERMISSION, "POST", 400)
        check(await ada.post(path, json={"option_id": "nope"}), PERMISSION, "POST", 400)
        answered = check(await ada.post(path, json={"option": 0}), PERMISSION, "POST", 202)
        assert answered["option_id"] == "allow"

        events = await read_events(ada, session_id, ended)
        ids = [int(e["id"]) for e in events if "id" in e]
        assert ids == list(range(1, len(ids) + 1))
        end = next(e for e in events if e["event"] == "end")["data"]
        assert end["status"] == "completed"
        assert end["files"] == [{"name": "hello.md", "size": 8, "caption": ""}]
        file = await ada.get(f"{S}/{session_id}/files/hello.md")
        assert check(file, FILE, "GET", 200) == b"# hello\n"
        check(await ada.get(f"{S}/{session_id}/files/nope.md"), FILE, "GET", 404)
        check(await ada.post(path, json={"option": 0}), PERMISSION, "POST", 409)
        check(await ada.delete(f"{S}/{session_id}"), ONE, "DELETE", 409)
        texts = "".join(e["data"]["data"]["text"] for e in events if e["event"] == "text_delta")
        assert texts == "Hello from the agent. Wrote hello.md."
        assert api.agents[0].responses == [("0", "allow")]


async def test_a_stream_cut_and_resumed_with_last_event_id_misses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def chatty() -> FakeAgent:
        return FakeAgent([[*(TextDelta(text=f"line {n}\n") for n in range(1, 6)), asks()]])

    async with running_api(tmp_path, monkeypatch, chatty) as api, api.client() as ada:
        session_id = (await start(ada))["id"]
        # The first connection is cut after the third event.
        first = await read_events(ada, session_id, lambda ev: sum("id" in e for e in ev) >= 3)
        seen = [e for e in first if "id" in e][:3]
        assert [int(e["id"]) for e in seen] == [1, 2, 3]
        api.agents[0].emit(TextDelta(text="said while nobody listened\n"))
        resumed = await read_events(
            ada, session_id, asking, headers={"Last-Event-ID": seen[-1]["id"]}
        )
        rest = [e for e in resumed if "id" in e]
        assert int(rest[0]["id"]) == 4
        everything = await read_events(ada, session_id, asking)
        full = [e for e in everything if "id" in e]
        assert [e["id"] for e in seen + rest] == [e["id"] for e in full]
        assert seen + rest == full
        assert any(e["data"]["data"].get("text") == "said while nobody listened\n" for e in rest)
        # ?after= is the same for clients that cannot set the header.
        after = f"{S}/{session_id}/events?after=5"
        async with ada.stream("GET", after) as response:
            text = ""
            async for chunk in response.aiter_text():
                text += chunk
                if "event: state" in text:
                    break
        assert next(int(e["id"]) for e in sse_events(text) if "id" in e) == 6
        bad = await ada.get(f"{S}/{session_id}/events", headers={"Last-Event-ID": "x"})
        check(bad, EVENTS, "GET", 400)
        check(await ada.delete(f"{S}/{session_id}"), ONE, "DELETE", 202)
        events = await read_events(ada, session_id, ended)
        assert next(e for e in events if e["event"] == "end")["data"]["status"] == "cancelled"


async def test_a_follow_up_goes_to_the_agent_as_its_next_prompt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def two_turns() -> FakeAgent:
        return FakeAgent([said("Which file?"), said("Done with b.txt")])

    config = api_config(tmp_path, session={"idle_minutes": 1})
    async with running_api(tmp_path, monkeypatch, two_turns, config) as api, api.client() as ada:
        session_id = (await start(ada, "edit a file"))["id"]
        await read_events(ada, session_id, lambda ev: any(e["event"] == "turn_ended" for e in ev))
        path = f"{S}/{session_id}/messages"
        check(await ada.post(path, json={"text": ""}), MESSAGES, "POST", 400)
        check(await ada.post(path, json={"text": "b.txt"}), MESSAGES, "POST", 202)
        await api.agents[0].wait_for_prompts(2, within=WAIT)
        assert api.agents[0].prompts[1] == "b.txt"
        events = await read_events(
            ada, session_id, lambda ev: sum(e["event"] == "turn_ended" for e in ev) >= 2
        )
        texts = [e["data"]["data"]["text"] for e in events if e["event"] == "text_delta"]
        assert texts == ["Which file?", "Done with b.txt"]
        check(await ada.delete(f"{S}/{session_id}"), ONE, "DELETE", 202)
        await read_events(ada, session_id, ended)
        check(await ada.post(path, json={"text": "more"}), MESSAGES, "POST", 409)


# --- who may do what -----------------------------------------------------------------------------


async def test_another_users_session_is_not_found_and_admins_see_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        running_api(tmp_path, monkeypatch, asking_agent) as api,
        api.client("ada") as ada,
        api.client("bob") as bob,
        api.client("root") as root,
    ):
        session_id = (await start(ada))["id"]
        await read_events(ada, session_id, asking)
        interaction = check(await ada.get(f"{S}/{session_id}"), ONE, "GET", 200)["pending"][0]
        for response, path, method in [
            (await bob.get(f"{S}/{session_id}"), ONE, "GET"),
            (await bob.get(f"{S}/{session_id}/events"), EVENTS, "GET"),
            (await bob.post(f"{S}/{session_id}/messages", json={"text": "hi"}), MESSAGES, "POST"),
            (
                await bob.post(
                    f"{S}/{session_id}/permissions/{interaction['id']}", json={"option": 0}
                ),
                PERMISSION,
                "POST",
            ),
            (await bob.delete(f"{S}/{session_id}"), ONE, "DELETE"),
        ]:
            check(response, path, method, 404)
        assert check(await bob.get(S), S, "GET", 200)["sessions"] == []
        listed = check(await root.get(S), S, "GET", 200)["sessions"]
        assert [(s["id"], s["owner"]) for s in listed] == [(session_id, "ada")]
        check(await root.get(f"{S}/{session_id}"), ONE, "GET", 200)
        talk = await root.post(f"{S}/{session_id}/messages", json={"text": "hi"})
        check(talk, MESSAGES, "POST", 403)
        check(await root.delete(f"{S}/{session_id}"), ONE, "DELETE", 202)
        events = await read_events(root, session_id, ended)
        end = next(e for e in events if e["event"] == "end")["data"]
        assert end["status"] == "cancelled"
        assert "root" in (end["reason"] or "")
        check(await ada.get(f"{S}/does-not-exist"), ONE, "GET", 404)


async def test_quotas_apply_to_api_users_as_to_chat_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = api_config(tmp_path, limits={"max_sessions_per_user": 1})
    async with (
        running_api(tmp_path, monkeypatch, asking_agent, config) as api,
        api.client("ada") as ada,
        api.client("bob") as bob,
    ):
        session_id = (await start(ada))["id"]
        over = await ada.post(S, json={"prompt": "another"})
        error = check(over, S, "POST", 429)["error"]
        assert "max_sessions_per_user" in error
        await start(bob)  # bob has his own quota
        check(await ada.delete(f"{S}/{session_id}"), ONE, "DELETE", 202)


async def test_requests_faster_than_the_command_rate_get_429(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The router drops commands over the rate, so the API refuses them first, never says 202
    # for a cancel or a follow-up that would then be dropped.
    config = api_config(tmp_path, limits={"command_burst": 2, "commands_per_second": 0.01})
    async with running_api(tmp_path, monkeypatch, asking_agent, config) as api, api.client() as ada:
        session_id = (await start(ada))["id"]
        message = await ada.post(f"{S}/{session_id}/messages", json={"text": "and then?"})
        check(message, MESSAGES, "POST", 202)
        too_fast = await ada.post(S, json={"prompt": "another"})
        assert "slow down" in check(too_fast, S, "POST", 429)["error"]
        check(
            await ada.post(f"{S}/{session_id}/messages", json={"text": "hi"}), MESSAGES, "POST", 429
        )
        check(await ada.delete(f"{S}/{session_id}"), ONE, "DELETE", 429)
        # Reading is not held back, nor is answering a permission (a button press in chat).
        pending = (await read_events(ada, session_id, asking))[-1]["data"]["pending"][0]
        path = f"{S}/{session_id}/permissions/{pending['id']}"
        check(await ada.post(path, json={"option": 0}), PERMISSION, "POST", 202)
        await api.agents[0].wait_until(lambda: api.agents[0].responses == [("0", "allow")])


# --- bad requests ------------------------------------------------------------------------------


async def test_bad_bodies_get_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_api(tmp_path, monkeypatch, asking_agent) as api, api.client() as ada:
        headers = {"Content-Type": "application/json"}
        cases: list[tuple[Any, int, str]] = [
            (b"{not json", 400, "not JSON"),
            (b"[1, 2]", 400, "JSON object"),
            (b"{}", 400, "'prompt' is required"),
            (b'{"prompt": "  "}', 400, "must not be empty"),
            (b'{"prompt": 7}', 400, "must be a string"),
            (b'{"prompt": "hi", "agent": "nobody"}', 400, "unknown agent"),
            (b'{"prompt": "hi", "color": "red"}', 400, "unknown fields: color"),
            (b'{"prompt": "' + b"x" * 5000 + b'"}', 413, "over 4096 bytes"),
        ]
        for body, status, words in cases:
            response = await ada.post(S, content=body, headers=headers)
            assert words in check(response, S, "POST", status)["error"], body[:40]

        async def chunks() -> Any:  # no Content-Length: the limit holds while reading
            for _ in range(10):
                yield b"x" * 1000

        streamed = await ada.post(S, content=chunks(), headers=headers)
        check(streamed, S, "POST", 413)
        wrong_method = await ada.put(S, json={"prompt": "hi"})
        assert wrong_method.status_code == 405
        assert "GET or POST" in wrong_method.json()["error"]
        assert (await ada.get("/v1/nothing")).status_code == 404
        assert (await ada.get(S)).json() == {"sessions": []}


# --- configuration --------------------------------------------------------------------------------


def test_tokens_come_from_the_environment_or_as_sha256_and_are_matched_by_digest(
    tmp_path: Path,
) -> None:
    config = api_config(
        tmp_path,
        api={
            "users": {
                "ada": {"token_env": "ADA_TOKEN"},
                "bob": {"token_sha256": hash_token("bob-secret")},
            },
            "admins": [],
        },
    )
    platform = ApiPlatform(config, environ={"ADA_TOKEN": "ada-secret\n"})
    assert platform.user_for("ada-secret") == "ada"
    assert platform.user_for("bob-secret") == "bob"
    assert platform.user_for("ada-secret ") is None
    assert platform.user_for("") is None
    assert platform.access.may_use("ada") and not platform.access.is_admin("ada")
    with pytest.raises(ApiTokenMissing, match="ADA_TOKEN"):
        ApiPlatform(config, environ={})


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"users": {"ada": {}}}, "set exactly one of token_env and token_sha256"),
        ({"users": {"ada": {"token_sha256": "abc"}}}, "must be 64 hex digits"),
        ({"users": {"a b": {"token_env": "X"}}}, "user name 'a b'"),
        ({"users": {"ada": {"token_env": "X"}}, "admins": ["zed"]}, "without a token: zed"),
        ({"listen": "7080"}, "must be host:port"),
        ({"max_body_kb": 0}, "between 1 and 10240"),
    ],
)
def test_bad_api_tables_are_refused_with_the_key_and_a_fix(
    table: dict[str, Any], words: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        config_from_mapping({"api": table}, environ={})


def test_an_api_without_users_may_not_run() -> None:
    config = config_from_mapping({"api": {}}, environ={})
    assert [p.path for p in config.access_problems()] == ["api.users"]
