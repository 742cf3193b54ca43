"""The agent stack this release is built and tested with, read from `stack.txt` beside this module.

`stack.txt` is the one place the versions of Node and of the npm agent packages are written:
docker/build-image.sh reads it (with bash alone) for the sandbox image, tests/agent_stack.py for
the tests' npm stack, and `anycode check-config` compares what the configured image holds with
it. The file ships inside the package, so an installed daemon knows what it was tested with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Final

__all__ = [
    "STACK_FILE_NAME",
    "StackError",
    "StackPackage",
    "parse_stack",
    "parse_version",
    "tested_stack",
]

STACK_FILE_NAME: Final = "stack.txt"
_NAME: Final = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_VERSION: Final = re.compile(r"\d+(?:\.\d+)*\Z")


class StackError(ValueError):
    """stack.txt is malformed (a line that is not NAME PACKAGE VERSION, a name twice)."""


@dataclass(frozen=True)
class StackPackage:
    """One line of stack.txt."""

    name: str
    """The build argument prefix: NODE, CLAUDE_CODE, CLAUDE_AGENT_ACP, ..."""
    package: str
    """The npm package: @anthropic-ai/claude-code, ..."""
    version: str
    """The pinned version, plain numbers and dots: 2.1.332."""

    @property
    def spec(self) -> str:
        """`package@version`, as npm takes it."""
        return f"{self.package}@{self.version}"


def parse_stack(text: str) -> tuple[StackPackage, ...]:
    """The packages of a stack.txt text, in file order."""
    packages: list[StackPackage] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if (
            len(words) != 3
            or not _NAME.match(words[0])
            or not _VERSION.match(words[2])
            or words[0] in seen
        ):
            raise StackError(
                f"{STACK_FILE_NAME} line {number}: expected NAME PACKAGE VERSION with a new "
                f"upper-case NAME and a numeric VERSION, got {line.strip()!r}"
            )
        seen.add(words[0])
        packages.append(StackPackage(words[0], words[1], words[2]))
    return tuple(packages)


@cache
def tested_stack() -> dict[str, StackPackage]:
    """The stack of this release by name (NODE, SANDBOX_AGENT, CLAUDE_CODE, ...)."""
    text = resources.files(__package__).joinpath(STACK_FILE_NAME).read_text(encoding="utf-8")
    return {package.name: package for package in parse_stack(text)}


def parse_version(text: str) -> tuple[int, ...] | None:
    """The first dotted version number in `text` (`2.1.332 (Claude Code)` → (2, 1, 332)), for
    comparing; None when there is none. Pre-release suffixes are ignored."""
    found = re.search(r"\d+(?:\.\d+)+", text)
    if found is None:
        return None
    return tuple(int(part) for part in found.group(0).split("."))
