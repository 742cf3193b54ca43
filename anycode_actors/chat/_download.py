"""Reading a file a user sent, as both chat clients download it: never more than the cap."""

from __future__ import annotations

import httpx

from anycode_actors.chat.base import FileTooLarge


async def read_capped(response: httpx.Response, limit: int, name: str) -> bytes:
    """The body of `response`, read as it streams; FileTooLarge as soon as it passes `limit`
    bytes, so an oversized file is never held whole, whatever size its headers claimed."""
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > limit:
            raise FileTooLarge(f"{name} is over {limit} bytes", size=len(data))
    return bytes(data)
