"""A task started over the HTTP API, end to end: a real Docker sandbox from the real image,
sandbox-agent and Claude Code inside it, the scripted model; the client is httpx reading the
session's server-sent events and answering its permission."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.api_rig import check, sse_events
from tests.e2e.harness import running_api_world
from tests.fakes.model import ModelScript, Text, Write

pytestmark = pytest.mark.docker

TOKEN = "ada-e2e-token-0123456789"


def script() -> ModelScript:
    s = ModelScript()
    s.add(
        "report",
        [Text("Writing a report."), Write("/workspace/outbox/report.md", "# Report\nAll good.\n")],
        [Text("The report is in the outbox.")],
    )
    return s


async def read_until(client: httpx.AsyncClient, session_id: str, word: str) -> list[dict[str, Any]]:
    text = ""
    async with client.stream("GET", f"/v1/sessions/{session_id}/events") as response:
        assert response.status_code == 200
        async for chunk in response.aiter_text():
            text += chunk
            if word in text:
                break
    return sse_events(text)


async def test_a_task_over_the_api_runs_claude_code_in_docker_and_leaves_its_file(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with (
        running_api_world(nursery, tmp_path, script(), {"ada": TOKEN}) as world,
        httpx.AsyncClient(
            base_url=world.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
        ) as ada,
    ):
        created = await ada.post("/v1/sessions", json={"prompt": "[[report]] write a report"})
        session_id = check(created, "/v1/sessions", "POST", 201)["id"]
        with trio.fail_after(180):
            events = await read_until(ada, session_id, '"pending": [{')
        state = next(e for e in events if e["event"] == "state" and e["data"]["pending"])
        permission = state["data"]["pending"][0]
        allow = next(o for o in permission["options"] if o["kind"] == "allow_once")
        answered = await ada.post(
            f"/v1/sessions/{session_id}/permissions/{permission['id']}",
            json={"option": allow["index"]},
        )
        check(answered, "/v1/sessions/{id}/permissions/{interaction}", "POST", 202)
        with trio.fail_after(180):
            events = await read_until(ada, session_id, "event: end")
        text = "".join(e["data"]["data"]["text"] for e in events if e["event"] == "text_delta")
        assert "Writing a report." in text
        assert "The report is in the outbox." in text
        end = next(e for e in events if e["event"] == "end")["data"]
        assert end["status"] == "completed", end
        assert [f["name"] for f in end["files"]] == ["report.md"]
        report = await ada.get(f"/v1/sessions/{session_id}/files/report.md")
        assert report.content == b"# Report\nAll good.\n"
        await world.wait_until_no_containers()
