"""One TLS context per process for the short-lived HTTP clients the daemon makes per session.

`httpx.AsyncClient()` builds a fresh `ssl.SSLContext` and loads the CA bundle into it every time
(about 19 ms of CPU on a 2-core build machine, measured with httpx 0.29), even for a
plain-HTTP endpoint such as a sandbox's sandbox-agent. A client made per session, per turn or
per health check passes `verify=shared_ssl_context(trust_env)` instead: the same context httpx
would build (`httpx.create_ssl_context`), built once. An `ssl.SSLContext` may be shared by many
connections (https://docs.python.org/3/library/ssl.html#ssl-contexts).
"""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def shared_ssl_context(trust_env: bool = True) -> ssl.SSLContext:
    """The context `httpx.AsyncClient(trust_env=trust_env)` would make, made once."""
    return httpx.create_ssl_context(trust_env=trust_env)


__all__ = ["shared_ssl_context"]
