"""The HTTP API, its server-sent events, the web dashboard and the terminal client's HTTP side.

- `platform`: `ApiPlatform`, the API as one more chat platform (a `ChatClient`), which serves
  the HTTP app on hypercorn's trio worker as its `run`;
- `app`: the ASGI application (routes, auth, bodies, SSE);
- `openapi`: the OpenAPI document served at /v1/openapi.json;
- `dashboard`: the single HTML page served at /.
"""

from __future__ import annotations

from anycode_actors.api.platform import PLATFORM, ApiPlatform, hash_token

__all__ = ["PLATFORM", "ApiPlatform", "hash_token"]
