"""`anycode doctor`: what the configured sandbox image holds, against the agent stack this release
was tested with (anycode_actors/agents/stack.txt).

With the docker provider it runs the image once (`sh -c`, no network, removed at once) to read
the versions of Node and of each npm package of the stack from their package.json files, and
warns about every package that is older than the tested one or missing; a newer one is noted.
Exit status 0 when the image could be read (warnings or not), 1 when it could not (no engine, no
image, a config that does not load).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Final

from rich.console import Console
from rich.text import Text

from anycode_actors.agents.stack import (
    PROBE_SCRIPT,
    StackCheck,
    check_stack,
    parse_probe,
    probe_arguments,
    tested_stack,
)
from anycode_actors.cli.common import CommandIO, Subparsers, add_config_path, load_runnable

__all__ = ["ImageProbe", "add_doctor", "probe_docker_image", "report_stack"]

#: Seconds the Docker SDK waits for each call (the probe container runs for about a second).
DOCKER_TIMEOUT: Final = 120
REBUILD_HINT: Final = "rebuild the image: bash docker/build-image.sh"

ImageProbe = Callable[[str, Mapping[str, str]], str]
"""(image, environment) → the output of PROBE_SCRIPT run in that image; raises RuntimeError with
a sentence for the user when it cannot run."""


def add_doctor(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="compare the agent stack in the configured sandbox image with the tested one",
        description="Read the versions of Node, sandbox-agent, Claude Code, the ACP adapters, "
        "acpx and Codex inside the configured sandbox image (docker provider) and warn about "
        "every one older than the version this release was tested with.",
    )
    add_config_path(parser)
    parser.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace, io: CommandIO) -> int:
    config = load_runnable(args.path, io)
    if config is None:
        return 1
    if config.sandbox.provider != "docker":
        io.out.print(
            Text(
                f"sandbox provider {config.sandbox.provider}: `anycode doctor` reads docker "
                "images only; nothing to check",
                style="yellow",
            )
        )
        return 0
    return report_stack(io.out, io.err, config.docker.image, io.environ)


def report_stack(
    out: Console,
    err: Console,
    image: str,
    environ: Mapping[str, str],
    probe: ImageProbe | None = None,
) -> int:
    """Print the versions in `image` beside the tested ones, with a warning for each package
    older than tested or missing; 0 when the image was read, 1 when it could not be."""
    try:
        output = (probe or probe_docker_image)(image, environ)
    except RuntimeError as exc:
        err.print(Text(f"✗ {exc}", style="bold red"))
        return 1
    checks = check_stack(parse_probe(output))
    out.print(Text(f"agent stack in {image}, against the versions tested with this release"))
    width = max(len(check.tested.package) for check in checks)
    for check in checks:
        line = Text("  ")
        line.append(check.tested.package.ljust(width), style="bold")
        line.append(f"  {(check.found or '—').ljust(10)} tested {check.tested.version.ljust(10)} ")
        line.append(check.status, style=_STYLES.get(check.status, ""))
        out.print(line)
    warnings = [_warning(check) for check in checks if check.status in ("older", "missing")]
    for warning in warnings:
        out.print(Text(f"! {warning}", style="yellow"))
    if warnings:
        out.print(Text(f"  {REBUILD_HINT}", style="yellow"))
    else:
        out.print(Text("✓ nothing older than the tested stack", style="green"))
    return 0


_STYLES: Final = {"ok": "green", "newer": "cyan", "older": "yellow", "missing": "yellow"}


def _warning(check: StackCheck) -> str:
    tested = check.tested
    if check.status == "missing":
        return f"{tested.package} is not in the image (tested with {tested.version})"
    return f"{tested.package} {check.found} is older than {tested.version}, the version tested"


def probe_docker_image(image: str, environ: Mapping[str, str]) -> str:
    """Run PROBE_SCRIPT in `image` on the Docker engine of `environ` (DOCKER_HOST, ...)."""
    from docker.client import from_env

    try:
        client = from_env(environment=dict(environ), timeout=DOCKER_TIMEOUT)
        client.ping()
    except Exception as exc:  # the SDK raises several unrelated types when no engine answers
        raise RuntimeError(
            f"no Docker engine answers ({type(exc).__name__}); start Docker or set DOCKER_HOST"
        ) from exc
    try:
        try:
            client.images.get(image)
        except Exception as exc:
            raise RuntimeError(
                f"the Docker engine has no image {image}; build it with docker/build-image.sh"
            ) from exc
        try:
            output = client.containers.run(
                image,
                ["-c", PROBE_SCRIPT, "sh", *probe_arguments(tested_stack())],
                entrypoint=["sh"],
                network_disabled=True,
                remove=True,
                stdout=True,
                stderr=False,
            )
        except Exception as exc:
            raise RuntimeError(f"running {image} to read its versions failed: {exc}") from exc
    finally:
        client.close()
    return output.decode(errors="replace") if isinstance(output, bytes) else str(output)
