"""The agent stack this release is built and tested with, read from `stack.txt` beside this module.

`stack.txt` is the one place the versions of Node and of the npm agent packages are written:
docker/build-image.sh reads it (with bash alone) for the sandbox image, tests/agent_stack.py for
the tests' npm stack, and `anycode check-config` compares what the configured image holds with
it. The file ships inside the package, so an installed daemon knows what it was tested with.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Final

__all__ = [
    "PROBE_SCRIPT",
    "STACK_FILE_NAME",
    "StackCheck",
    "StackError",
    "StackPackage",
    "check_stack",
    "parse_probe",
    "parse_stack",
    "parse_version",
    "probe_arguments",
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


# --- what an image holds ------------------------------------------------------------------------

#: Run by `sh -c` inside an image: one line `NAME VERSION` per package (`NAME -` when it is not
#: installed), read from the package.json files in npm's global folder, and `NODE <version>`.
#: The arguments are `NAME=npm-package` words. Prints nothing without node.
PROBE_SCRIPT: Final = r"""
command -v node >/dev/null 2>&1 || exit 0
root="$(npm root -g 2>/dev/null || true)"
exec node -e '
const path = require("path");
const prefix = path.dirname(path.dirname(process.execPath));
const root = process.argv[1] || path.join(prefix, "lib", "node_modules");
console.log("NODE " + process.versions.node);
for (const word of process.argv.slice(2)) {
  const [name, pkg] = word.split("=");
  let version = "-";
  try { version = require(path.join(root, pkg, "package.json")).version; } catch (e) {}
  console.log(name + " " + version);
}' "$root" "$@"
"""


def probe_arguments(stack: Mapping[str, StackPackage]) -> list[str]:
    """The `NAME=package` words PROBE_SCRIPT takes, for every npm package of `stack`."""
    return [f"{p.name}={p.package}" for p in stack.values() if p.name != "NODE"]


def parse_probe(output: str) -> dict[str, str | None]:
    """PROBE_SCRIPT's output by name: the version, or None for a package not installed."""
    found: dict[str, str | None] = {}
    for line in output.splitlines():
        words = line.split()
        if len(words) == 2 and _NAME.match(words[0]):
            found[words[0]] = None if words[1] == "-" else words[1]
    return found


@dataclass(frozen=True)
class StackCheck:
    """One package of the tested stack against what an image holds."""

    tested: StackPackage
    found: str | None
    """The version in the image; None when it is not there."""

    @property
    def status(self) -> str:
        """ok | newer | older | missing | unknown (a version that is not a plain number)."""
        if self.found is None:
            return "missing"
        have, want = parse_version(self.found), parse_version(self.tested.version)
        if have is None or want is None:
            return "unknown"
        if have == want:
            return "ok"
        return "newer" if have > want else "older"


def check_stack(
    found: Mapping[str, str | None], stack: Mapping[str, StackPackage] | None = None
) -> list[StackCheck]:
    """Each package of `stack` (default: this release's) against the versions `found`."""
    tested = tested_stack() if stack is None else stack
    return [StackCheck(package, found.get(name)) for name, package in tested.items()]
