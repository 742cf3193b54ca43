import time, trio, pytest, httpx
from pathlib import Path
from tests.faults.support import *
from anycode_actors.chat.telegram import TelegramClient
from anycode_actors.chat.base import ChatEvent, Message


async def test_stray(autojump_clock, nursery, tmp_path: Path, monkeypatch) -> None:
    async with telegram_conversation(nursery, tmp_path, monkeypatch) as talk:
        await start_telegram_task(talk)

        async def stray():
            async with httpx.AsyncClient(timeout=60) as http:
                with trio.move_on_after(40):
                    while True:
                        r = await http.post(
                            talk.telegram.method_url("getUpdates"), json={"timeout": 10}
                        )
                        print(
                            "stray",
                            trio.current_time(),
                            r.status_code,
                            [u.get("message", {}).get("text") for u in r.json().get("result", [])],
                        )

        nursery.start_soon(stray)
        for number in range(1, 7):
            await trio.sleep(7)
            await talk.send_note(number)
        await talk.wait_for_shown(answer_for(note(6)))
        for c in talk.telegram.calls_to("getUpdates"):
            print(round(c.at, 2), c.method, c.status, c.params.get("offset"))
        print(talk.prompts_seen)


async def test_second(autojump_clock, nursery, tmp_path: Path, monkeypatch) -> None:
    async with telegram_conversation(nursery, tmp_path, monkeypatch) as talk:
        await start_telegram_task(talk)
        other: list[ChatEvent] = []

        async def second(task_status=trio.TASK_STATUS_IGNORED):
            send, recv = trio.open_memory_channel(100)
            async with TelegramClient(talk.daemon.config.telegram, backoff=STEADY) as client:
                with trio.move_on_after(40):
                    async with trio.open_nursery() as n:
                        await n.start(client.run, send)
                        async for e in recv:
                            print("other got", trio.current_time(), e)
                            other.append(e)

        nursery.start_soon(second)
        for number in range(1, 9):
            await trio.sleep(7)
            await talk.send_note(number)
        await trio.sleep(30)
        for c in talk.telegram.calls_to("getUpdates"):
            print(round(c.at, 2), c.method, c.status, c.params.get("offset"))
        print(talk.prompts_seen)
