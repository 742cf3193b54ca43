"""The Telegram stand-in (tests/fakes/telegram.py) in a process of its own, driven over its stdin
and stdout, for the scale benchmark (tests/bench.py): serving a thousand chats costs the stand-in
CPU and memory of its own (parsing every sendMessage and editMessageText, keeping every message
and every call), which the benchmark must not count as the daemon's.

It prints one JSON line, `{"base_url": ..., "token": ...}`, then answers each JSON line it reads
with one JSON line, in order:

    {"op": "polling"}                                → {} once the bot holds a long poll
    {"op": "inject", "users": [[id, name], ...], "text": "/task ..."}
                                                     → {}, each user sent `text` in their chat
    {"op": "waiting", "chats": [id, ...], "fragment": "w099"}
                                                     → {"chats": [the ones no bot message of
                                                        which contains `fragment` yet]}
    {"op": "wrong", "chats": [id, ...], "words": 100}
                                                     → {"chats": [the ones whose bot messages do
                                                        not show each of the `words` scripted
                                                        words (tests/fakes/sandbox_agent.py)
                                                        exactly once]}
    {"op": "limited"}                                → {"count": answers that were a 429}

    python -m tests.fakes.telegram_process --global-burst 1000 --global-rate 1000
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

import trio

from tests.fakes.sandbox_agent import word
from tests.fakes.telegram import FakeTelegram, FloodLimits, User


def _shown_words(telegram: FakeTelegram, chat: int) -> Counter[str]:
    text = "\n".join(m.text for m in telegram.bot_messages(chat))
    return Counter(w for w in text.split() if w.startswith("w") and w[1:].isdigit())


async def answer(telegram: FakeTelegram, request: dict[str, Any]) -> dict[str, Any]:
    """The answer to one request (see the module docstring)."""
    op = request["op"]
    if op == "polling":
        await telegram.wait_until_polling()
        return {}
    if op == "inject":
        for user_id, name in request["users"]:
            telegram.inject_message(user_id, User(user_id, name), request["text"])
        return {}
    if op == "waiting":
        fragment = request["fragment"]
        return {
            "chats": [
                chat
                for chat in request["chats"]
                if not any(fragment in m.text for m in telegram.bot_messages(chat))
            ]
        }
    if op == "wrong":
        expected = Counter(word(n) for n in range(request["words"]))
        return {"chats": [c for c in request["chats"] if _shown_words(telegram, c) != expected]}
    if op == "limited":
        return {"count": sum(1 for c in telegram.calls if c.status == 429)}
    raise ValueError(f"unknown op {op!r}")


async def serve(limits: FloodLimits) -> None:
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    async with trio.open_nursery() as nursery:
        telegram = FakeTelegram(flood_limits=limits)
        base_url = await telegram.start(nursery)
        print(json.dumps({"base_url": base_url, "token": telegram.token}), flush=True)
        buffer = b""
        while True:
            chunk = await stdin.receive_some()
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                print(json.dumps(await answer(telegram, json.loads(line))), flush=True)
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--global-burst", type=float, default=FloodLimits.global_burst)
    parser.add_argument("--global-rate", type=float, default=FloodLimits.global_rate)
    args = parser.parse_args()
    limits = FloodLimits(global_burst=args.global_burst, global_rate=args.global_rate)
    try:
        trio.run(serve, limits)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
