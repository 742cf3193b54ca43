"""Access to the real Docker engine for tests.

Tests that need Docker must run in CI; locally they skip with a clear reason, and only when no
engine answers and CI is unset (a green CI run must never hide a missing engine).
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest

TINY_IMAGE = "anycode-test-tiny:latest"
SANDBOX_IMAGE = os.environ.get("ANYCODE_TEST_IMAGE", "anycode-sandbox:latest")
"""The sandbox image (docker/Dockerfile.agent) the tests run: `IMAGE=anycode-sandbox:next bash
docker/build-image.sh` builds another tag, `ANYCODE_TEST_IMAGE=anycode-sandbox:next` tests it."""
_TINY_SOURCE = Path(__file__).parent / "docker_tiny" / "tiny.c"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require_or_skip(reason: str) -> None:
    """Skip locally, fail in CI: a prerequisite that CI installs must never be silently absent."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


def docker_client() -> Any:
    """A docker SDK client for a live engine, or skip/fail as `require_or_skip` says."""
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:  # the SDK raises several unrelated types when no engine answers
        require_or_skip(
            f"no Docker engine answers ({type(exc).__name__}); start one with .ci/ensure-docker.sh"
        )
    return client


def ensure_tiny_image(client: Any) -> str:
    """Build (once) a FROM-scratch image holding one static binary that idles until SIGTERM.

    No image registry is reachable here, so the image is made from source on this machine.
    """
    try:
        client.images.get(TINY_IMAGE)
        return TINY_IMAGE
    except Exception:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "tiny"
        subprocess.run(
            ["cc", "-static", "-Os", "-s", "-o", str(binary), str(_TINY_SOURCE)], check=True
        )
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            dockerfile = b'FROM scratch\nCOPY tiny /tiny\nCMD ["/tiny"]\n'
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(dockerfile)
            tar.addfile(info, io.BytesIO(dockerfile))
            tar.add(str(binary), arcname="tiny")
        context.seek(0)
        client.images.build(fileobj=context, custom_context=True, tag=TINY_IMAGE, rm=True)
    return TINY_IMAGE
