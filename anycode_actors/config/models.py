"""The pydantic models of config.toml: one frozen model per section, and `Config` for the whole.

Field checks raise `_invalid(message, fix)`, whose text the loader (`anycode_actors.config.loading`)
passes on unchanged; other pydantic errors are reworded by `anycode_actors.config.problems`.

Secrets (chat tokens, the GitHub and GitLab tokens, agent credentials) are `SecretStr`: repr,
str, logs and `Config.effective_toml()` show them masked. Code that must hand a secret on (an HTTP
header, a sandbox's environment) asks explicitly: `config.telegram.bot_token.get_secret_value()` or
`config.sandbox_env(agent)`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal, cast
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from anycode_actors.config.writing import dump_toml
from anycode_actors.errors import ConfigError, ConfigProblem

__all__ = [
    "AGENT_NAME",
    "BUILTIN_LAUNCH",
    "ENV_NAME",
    "OPTIONAL_SECTIONS",
    "PROBLEM_TYPE",
    "SECRET_ENV_VARS",
    "SECTIONS",
    "AcpxPermissions",
    "AdminConfig",
    "AgentConfig",
    "AgentProtocol",
    "AgentsConfig",
    "Config",
    "DatabaseConfig",
    "DockerConfig",
    "EcsConfig",
    "GitConfig",
    "GithubConfig",
    "GitlabConfig",
    "LimitsConfig",
    "LocalConfig",
    "ProviderName",
    "SandboxConfig",
    "SessionConfig",
    "SlackConfig",
    "TelegramConfig",
    "builtin_agents",
    "cross_section_problems",
    "mask_secret",
]

ProviderName = Literal["docker", "ecs", "local"]
AgentProtocol = Literal["sandbox-agent", "acp", "acpx"]
AcpxPermissions = Literal["approve-all", "approve-reads", "deny-all"]
AutoPr = Literal["off", "each_turn", "on_end"]

TELEGRAM_API_BASE_URL: Final = "https://api.telegram.org"
SLACK_API_BASE_URL: Final = "https://slack.com/api"
GITHUB_URL: Final = "https://github.com"
GITHUB_API_URL: Final = "https://api.github.com"
GITLAB_URL: Final = "https://gitlab.com"
DEFAULT_AGENT: Final = "claude-code"

#: Environment variables that supply secrets: name → (section, key).
SECRET_ENV_VARS: Final[Mapping[str, tuple[str, str]]] = MappingProxyType(
    {
        "ANYCODE_TELEGRAM_BOT_TOKEN": ("telegram", "bot_token"),
        "ANYCODE_SLACK_APP_TOKEN": ("slack", "app_token"),
        "ANYCODE_SLACK_BOT_TOKEN": ("slack", "bot_token"),
        "ANYCODE_GITHUB_TOKEN": ("github", "token"),
        "ANYCODE_GITLAB_TOKEN": ("gitlab", "token"),
    }
)

# The built-in agents (the ones the legacy config format names) and how each is launched under
# each protocol: sandbox-agent id, ACP command (argv), acpx agent name. sandbox-agent and acpx
# have no goose, but goose speaks ACP.
BUILTIN_LAUNCH: Final[Mapping[str, tuple[str | None, tuple[str, ...], str | None]]] = (
    MappingProxyType(
        {
            "claude-code": ("claude", ("claude-agent-acp",), "claude"),
            "codex": ("codex", ("codex-acp",), "codex"),
            "goose": (None, ("goose", "acp"), None),
        }
    )
)

# Names the daemon itself sets in the sandbox; credentials must not shadow them.
_RESERVED_ENV_PREFIX: Final = "ANYCODE_"

# Docker's default capability set minus those a coding agent has no use for (NET_RAW, MKNOD,
# SYS_CHROOT, AUDIT_WRITE, SETFCAP, SETPCAP): the sandbox drops ALL and gets these back.
_DEFAULT_CAPABILITIES: Final = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "NET_BIND_SERVICE",
)
# capabilities(7), plus Docker's "ALL".
_LINUX_CAPABILITIES: Final = frozenset(
    {
        *("AUDIT_CONTROL", "AUDIT_READ", "AUDIT_WRITE", "BLOCK_SUSPEND", "BPF"),
        *("CHECKPOINT_RESTORE", "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID"),
        *("IPC_LOCK", "IPC_OWNER", "KILL", "LEASE", "LINUX_IMMUTABLE", "MAC_ADMIN"),
        *("MAC_OVERRIDE", "MKNOD", "NET_ADMIN", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_RAW"),
        *("PERFMON", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_ADMIN", "SYS_BOOT"),
        *("SYS_CHROOT", "SYS_MODULE", "SYS_NICE", "SYS_PACCT", "SYS_PTRACE", "SYS_RAWIO"),
        *("SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "SYSLOG", "WAKE_ALARM", "ALL"),
    }
)

# Prefixes that only name a token's kind; a masked secret may show these and nothing more.
_PUBLIC_SECRET_PREFIXES: Final = (
    "github_pat_",
    "glpat-",
    "sk-ant-",
    "sk-proj-",
    "xapp-",
    "xoxb-",
    "xoxp-",
    "ghp_",
    "gho_",
    "ghs_",
    "ghu_",
    "ghr_",
    "sk-",
)

_TELEGRAM_TOKEN: Final = re.compile(r"[0-9]{3,20}:[A-Za-z0-9_-]{30,64}")
_TELEGRAM_BOT_ID: Final = re.compile(r"[0-9]{3,20}:")
_TELEGRAM_USER_ID: Final = re.compile(r"[0-9]{1,20}")
_SLACK_USER_ID: Final = re.compile(r"[UW][A-Z0-9]{2,}")
ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
AGENT_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_AGENT_ID: Final = re.compile(r"[a-z0-9][a-z0-9._-]*")
_DOCKER_MEMORY: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kmg]?)b?", re.IGNORECASE)
_AWS_REGION: Final = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]+")

# AF_UNIX paths are limited to 108 bytes including the terminating NUL on Linux.
_MAX_SOCKET_PATH_BYTES: Final = 107
_DOCKER_MIN_MEMORY_BYTES: Final = 6 * 1024 * 1024
# Someone who can reach the admin port must not be able to guess the token.
_MIN_ADMIN_TOKEN_CHARS: Final = 16
_MEMORY_UNITS: Final = MappingProxyType({"": 1, "k": 1024, "m": 1024**2, "g": 1024**3})

#: The pydantic error type of `_invalid`, whose message and fix the loader passes on as they are.
PROBLEM_TYPE: Final = "anycode_config"
_EFFECTIVE_HEADER: Final = "Effective configuration: defaults filled in, secrets redacted."


def _invalid(message: str, fix: str = "") -> PydanticCustomError:
    """A validation error whose message and fix survive into `ConfigProblem` unchanged."""
    return PydanticCustomError(PROBLEM_TYPE, "{message}", {"message": message, "fix": fix})


# --- secrets -----------------------------------------------------------------------------------


def mask_secret(value: str) -> str:
    """Show that a secret is set, and of which kind, without showing anything usable.

    Only a public prefix survives: a token kind (`xoxb-`, `sk-ant-`, `ghp_`) or a Telegram bot
    id (`123456789:`, the bot's public user id); the length helps spot a truncated paste.
    """
    if not value:
        return "(empty)"
    bot_id = _TELEGRAM_BOT_ID.match(value)
    if bot_id:
        prefix = bot_id.group()
    else:
        prefix = next((p for p in _PUBLIC_SECRET_PREFIXES if value.startswith(p)), "")
    return f"{prefix}…(redacted, {len(value)} chars)"


def _secret_text(secret: SecretStr, fix_empty: str) -> str:
    # Tokens never contain whitespace; a stray newline from `echo token > file` is not an error.
    value = secret.get_secret_value().strip()
    if not value:
        raise _invalid("must not be empty", fix_empty)
    return value


# --- shared field checks -----------------------------------------------------------------------


def _check_base_url(value: str, example: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _invalid(
            f"must be an http(s) URL like {example}",
            f"use {example} unless you run your own server",
        )
    if parts.query or parts.fragment:
        raise _invalid(
            "must not have a query or fragment", f"give only the server address, like {example}"
        )
    return value.strip().rstrip("/")


def _check_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise _invalid("must be a TCP port between 1 and 65535")
    return value


def _non_empty_text(value: str) -> str:
    if not value.strip():
        raise _invalid("must not be empty")
    return value.strip()


def _empty_means_unset(value: object) -> object:
    # In the legacy config format an optional ECS key left empty means "infer it".
    return None if isinstance(value, str) and not value.strip() else value


def _non_empty_path(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        raise _invalid("must not be empty")
    return value


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Relative paths count from the config file's folder, so the daemon's working directory
    (often `/` under systemd) does not decide where the database lands."""
    context = info.context if isinstance(info.context, Mapping) else {}
    home = context.get("home")
    if value.parts and value.parts[0] == "~" and isinstance(home, str) and home:
        value = Path(home, *value.parts[1:])
    base_dir = context.get("base_dir")
    if isinstance(base_dir, Path) and not value.is_absolute():
        value = base_dir / value
    return value


def _resolve_database_path(value: Path, info: ValidationInfo) -> Path:
    # SQLite's name for a private in-memory database is not a file path.
    return value if str(value) == ":memory:" else _resolve_path(value, info)


def _check_socket_length(value: Path) -> Path:
    if len(os.fsencode(value)) > _MAX_SOCKET_PATH_BYTES:
        raise _invalid(
            f"is longer than the {_MAX_SOCKET_PATH_BYTES} bytes a Unix socket path may have",
            "use a shorter path, e.g. /run/anycode/admin.sock",
        )
    return value


def _int_as_text(value: object) -> object:
    # Telegram ids are numbers; people write them either way and the daemon compares text.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _check_telegram_user_id(value: str) -> str:
    if not _TELEGRAM_USER_ID.fullmatch(value.strip()):
        raise _invalid(
            f"must be a numeric Telegram user id, not {value!r}",
            "usernames can change and are not checked; @userinfobot tells you the number",
        )
    return value.strip()


def _check_slack_user_id(value: str) -> str:
    if not _SLACK_USER_ID.fullmatch(value.strip()):
        raise _invalid(
            f"must be a Slack member id like U0123ABCD, not {value!r}",
            "open the person's profile → ⋮ → Copy member ID",
        )
    return value.strip()


def _check_subnet_id(value: str) -> str:
    if not value.startswith("subnet-"):
        raise _invalid(f"{value!r} is not a subnet id", 'subnet ids look like "subnet-0abc123"')
    return value


def _check_security_group_id(value: str) -> str:
    if not value.startswith("sg-"):
        raise _invalid(f"{value!r} is not a security group id", 'ids look like "sg-0abc123"')
    return value


def _check_capability(value: str) -> str:
    name = value.strip().upper().removeprefix("CAP_")
    if name not in _LINUX_CAPABILITIES:
        close = difflib.get_close_matches(name, _LINUX_CAPABILITIES, n=1)
        raise _invalid(
            f"{value!r} is not a Linux capability",
            f"did you mean {close[0]}?" if close else "see capabilities(7)",
        )
    return name


def _check_env_name(name: str) -> str:
    if not ENV_NAME.fullmatch(name):
        raise _invalid("is not a valid environment variable name", "use letters, digits and _")
    if name.startswith(_RESERVED_ENV_PREFIX):
        raise _invalid(
            f"{_RESERVED_ENV_PREFIX}* variables are set by the daemon itself", "rename it"
        )
    return name


def _check_credential(value: SecretStr) -> SecretStr:
    if not value.get_secret_value():
        raise _invalid("must not be empty", "put the credential here, or remove the key")
    return value


def _check_argument(value: str) -> str:
    if not value:
        raise _invalid("must not be an empty argument")
    return value


TelegramUserId = Annotated[
    str, BeforeValidator(_int_as_text), AfterValidator(_check_telegram_user_id)
]
SlackUserId = Annotated[str, AfterValidator(_check_slack_user_id)]
SubnetId = Annotated[str, AfterValidator(_check_subnet_id)]
SecurityGroupId = Annotated[str, AfterValidator(_check_security_group_id)]
Capability = Annotated[str, AfterValidator(_check_capability)]
EnvName = Annotated[str, AfterValidator(_check_env_name)]
Credential = Annotated[SecretStr, AfterValidator(_check_credential)]
CommandArgument = Annotated[str, AfterValidator(_check_argument)]
ConfigPath = Annotated[Path, BeforeValidator(_non_empty_path), AfterValidator(_resolve_path)]
DatabasePath = Annotated[
    Path, BeforeValidator(_non_empty_path), AfterValidator(_resolve_database_path)
]
SocketPath = Annotated[
    Path,
    BeforeValidator(_non_empty_path),
    AfterValidator(_resolve_path),
    AfterValidator(_check_socket_length),
]
OptionalText = Annotated[str | None, BeforeValidator(_empty_means_unset)]


class _Section(BaseModel):
    # Frozen: one Config is shared by every actor, so nobody may change it under the others.
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- chat platforms ----------------------------------------------------------------------------


class TelegramConfig(_Section):
    """`[telegram]`: a bot polled with getUpdates."""

    bot_token: SecretStr
    allowed_users: tuple[TelegramUserId, ...] = ()
    # An empty allow-list lets nobody in unless this says everyone may use the bot.
    allow_everyone: StrictBool = False
    admins: tuple[TelegramUserId, ...] = ()
    api_base_url: str = TELEGRAM_API_BASE_URL
    poll_timeout: StrictInt = 30
    # Calls the whole bot makes per second, across all chats: the Bot FAQ asks bots to stay
    # around 30 (https://core.telegram.org/bots/faq#my-bot-is-hitting-limits-how-do-i-avoid-this).
    bot_requests_per_second: StrictFloat | StrictInt = 30

    @field_validator("bot_requests_per_second")
    @classmethod
    def _check_bot_rate(cls, value: float) -> float:
        if value <= 0:
            raise _invalid("must be greater than 0", "30 is what Telegram allows a bot")
        return value

    @field_validator("bot_token")
    @classmethod
    def _check_bot_token(cls, token: SecretStr) -> SecretStr:
        value = _secret_text(
            token, "paste the token @BotFather gave you, or set ANYCODE_TELEGRAM_BOT_TOKEN"
        )
        if not _TELEGRAM_TOKEN.fullmatch(value):
            raise _invalid(
                "does not look like a Telegram bot token (<bot id>:<secret>, like 123456789:AA…)",
                "copy the whole token from @BotFather (/mybots → API Token)",
            )
        return SecretStr(value)

    @field_validator("api_base_url")
    @classmethod
    def _check_api_base_url(cls, value: str) -> str:
        url = _check_base_url(value, TELEGRAM_API_BASE_URL)
        # A URL ending in /bot<token> would put the token in logs and in check-config's output.
        if re.search(r"/bot[0-9]+:", url):
            raise _invalid(
                "must not contain the bot token",
                f"give only the server address, like {TELEGRAM_API_BASE_URL}; "
                "the token goes in bot_token",
            )
        return url

    @field_validator("poll_timeout")
    @classmethod
    def _check_poll_timeout(cls, value: int) -> int:
        if not 1 <= value <= 50:
            raise _invalid(
                "must be between 1 and 50 seconds",
                "the Bot API holds a long poll for at most 50 s; 30 is a good value",
            )
        return value


class SlackConfig(_Section):
    """`[slack]`: a Socket Mode app (app-level token) that posts with its bot token."""

    app_token: SecretStr
    bot_token: SecretStr
    allowed_users: tuple[SlackUserId, ...] = ()
    allow_everyone: StrictBool = False
    admins: tuple[SlackUserId, ...] = ()
    api_base_url: str = SLACK_API_BASE_URL
    # A /task posted in a channel: its acknowledgement stays in the channel and the session's
    # output goes into a thread under it; false keeps every session's output in the channel.
    threads: StrictBool = True

    @field_validator("app_token")
    @classmethod
    def _check_app_token(cls, token: SecretStr) -> SecretStr:
        fix = "use the App-Level Token (Basic Information → App-Level Tokens, connections:write)"
        value = _secret_text(token, f"{fix}, or set ANYCODE_SLACK_APP_TOKEN")
        if value.startswith("xoxb-"):
            raise _invalid("must start with xapp- (this is the bot token)", fix)
        if not value.startswith("xapp-"):
            raise _invalid("must start with xapp-", fix)
        return SecretStr(value)

    @field_validator("bot_token")
    @classmethod
    def _check_bot_token(cls, token: SecretStr) -> SecretStr:
        fix = "use the Bot User OAuth Token (OAuth & Permissions, scope chat:write)"
        value = _secret_text(token, f"{fix}, or set ANYCODE_SLACK_BOT_TOKEN")
        if value.startswith("xapp-"):
            raise _invalid("must start with xoxb- (this is the app-level token)", fix)
        if not value.startswith("xoxb-"):
            raise _invalid("must start with xoxb-", fix)
        return SecretStr(value)

    @field_validator("api_base_url")
    @classmethod
    def _check_api_base_url(cls, value: str) -> str:
        return _check_base_url(value, SLACK_API_BASE_URL)


# --- sandboxes ---------------------------------------------------------------------------------


class SandboxConfig(_Section):
    """`[sandbox]`: where agents run and how the daemon talks to them."""

    provider: ProviderName = "docker"
    protocol: AgentProtocol = "sandbox-agent"
    acpx_permissions: AcpxPermissions = "approve-all"

    @field_validator("protocol", mode="before")
    @classmethod
    def _opencode_is_sandbox_agent(cls, value: object) -> object:
        # The legacy config format calls the sandbox-agent protocol "opencode"; such files load.
        return "sandbox-agent" if value == "opencode" else value


def _memory_bytes(text: str) -> int | None:
    match = _DOCKER_MEMORY.fullmatch(text.strip())
    if match is None:
        return None
    return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2).lower()])


class DockerConfig(_Section):
    """`[docker]`: local containers, one per session, hardened and limited by default.

    The provider starts each container with `cap_drop=["ALL"]` plus `cap_add`, and applies
    `memory` (`memory_bytes`), `cpus` and `pids_limit`, where 0 means no limit. Host ports come
    from `[port_range_start, port_range_end)` and are published on 127.0.0.1 only; with both set
    to 0 (`ephemeral_ports`) Docker picks a free ephemeral port for each sandbox instead.
    """

    image: str = "anycode-sandbox:latest"
    port_range_start: StrictInt = 12000
    # Validated even when defaulted, so a start moved above the default end is caught.
    port_range_end: StrictInt = Field(default=12100, validate_default=True)
    network: str = "bridge"
    memory: str = "4g"
    cpus: StrictFloat = 2.0
    pids_limit: StrictInt = 1024
    cap_add: tuple[Capability, ...] = _DEFAULT_CAPABILITIES

    @field_validator("image")
    @classmethod
    def _check_image(cls, value: str) -> str:
        return _non_empty_text(value)

    @field_validator("port_range_start", "port_range_end")
    @classmethod
    def _check_ports(cls, value: int) -> int:
        # 0 passes here; _check_port_range accepts it only as the pair 0, 0 (Docker picks).
        return value if value == 0 else _check_port(value)

    @field_validator("network")
    @classmethod
    def _check_network(cls, value: str) -> str:
        network = _non_empty_text(value)
        if network == "host":
            raise _invalid(
                'must not be "host": every sandbox listens on 2468, so a second one would collide',
                'use "bridge" or a user-defined bridge network',
            )
        if network == "none":
            raise _invalid(
                'must not be "none": the daemon reaches the sandbox through a published port',
                'use "bridge" or a user-defined bridge network',
            )
        return network

    @field_validator("memory")
    @classmethod
    def _check_memory(cls, value: str) -> str:
        size = _memory_bytes(value)
        if size is None:
            raise _invalid("must be a size like 4g, 512m or 0 (no limit)")
        if 0 < size < _DOCKER_MIN_MEMORY_BYTES:
            raise _invalid("must be at least 6m (Docker's minimum) or 0 (no limit)")
        return value.strip().lower()

    @field_validator("cpus")
    @classmethod
    def _check_cpus(cls, value: float) -> float:
        if value != 0 and value < 0.01:
            raise _invalid("must be 0 (no limit) or at least 0.01")
        return value

    @field_validator("pids_limit")
    @classmethod
    def _check_pids_limit(cls, value: int) -> int:
        if value < 0:
            raise _invalid("must be 0 (no limit) or a positive number of processes")
        return value

    @field_validator("port_range_end")
    @classmethod
    def _check_port_range(cls, end: int, info: ValidationInfo) -> int:
        # A field check, not a model check, so it runs even when other [docker] keys are wrong.
        start = info.data.get("port_range_start")
        if start == 0 and end == 0:
            return end
        if start == 0 or end == 0:
            raise _invalid(
                "0 (Docker picks a free port) needs both port_range_start and port_range_end = 0",
                "set both to 0, or give a range of TCP ports like 12000 and 12100",
            )
        if isinstance(start, int) and start >= end:
            raise _invalid(
                f"must be greater than port_range_start ({end} <= {start})",
                "sandboxes get host ports from port_range_start up to, not including, this",
            )
        return end

    @property
    def memory_bytes(self) -> int:
        """The memory limit in bytes; 0 means no limit."""
        return _memory_bytes(self.memory) or 0

    @property
    def ephemeral_ports(self) -> bool:
        """Whether Docker picks each sandbox's host port (the range is 0, 0) instead of us."""
        return self.port_range_start == 0 and self.port_range_end == 0


class EcsConfig(_Section):
    """`[ecs]`: one Fargate task per session (only read when `sandbox.provider = "ecs"`)."""

    cluster: str = ""
    task_definition: str = ""
    subnets: tuple[SubnetId, ...] = ()
    security_groups: tuple[SecurityGroupId, ...] = ()
    # Off by default: the daemon talks to sandbox-agent over plain HTTP, which must stay inside
    # the VPC; a public IP is for a daemon outside it and is warned about.
    assign_public_ip: StrictBool = False
    container_port: StrictInt = 2468
    startup_timeout_secs: StrictInt = 120
    poll_interval_ms: StrictInt = 1000
    region: OptionalText = None
    platform_version: OptionalText = None
    container_name: OptionalText = None
    log_group: OptionalText = None
    log_stream_prefix: OptionalText = None

    @field_validator("container_port")
    @classmethod
    def _check_container_port(cls, value: int) -> int:
        return _check_port(value)

    @field_validator("startup_timeout_secs")
    @classmethod
    def _check_startup_timeout(cls, value: int) -> int:
        if value < 1:
            raise _invalid(
                "must be at least 1 second", "Fargate tasks usually need 30–90 s; 120 is safe"
            )
        return value

    @field_validator("poll_interval_ms")
    @classmethod
    def _check_poll_interval(cls, value: int) -> int:
        if value < 250:
            raise _invalid(
                "must be at least 250 ms", "DescribeTasks is rate limited; 1000 is plenty"
            )
        return value

    @field_validator("region")
    @classmethod
    def _check_region(cls, value: str | None) -> str | None:
        if value is not None and not _AWS_REGION.fullmatch(value.strip()):
            raise _invalid(f"{value!r} is not an AWS region", 'regions look like "us-west-2"')
        return value.strip() if value is not None else None


class LocalConfig(_Section):
    """`[local]`: agents run as local processes, one work folder per session. No isolation.

    `allow_unsandboxed` must be true for `sandbox.provider = "local"`: it is the operator saying
    that agents may run as this user, with everything this user can read and change.
    """

    workdir: ConfigPath = Field(default=Path("anycode-work"), validate_default=True)
    allow_unsandboxed: StrictBool = False


# --- the rest ----------------------------------------------------------------------------------


class DatabaseConfig(_Section):
    """`[database]`: the SQLite file."""

    path: DatabasePath = Field(default=Path("anycode.db"), validate_default=True)
    # Ended sessions' events and interactions are deleted this many days after they ended.
    retention_days: StrictInt = 30

    @field_validator("retention_days")
    @classmethod
    def _check_retention(cls, value: int) -> int:
        if value < 1:
            raise _invalid(
                "must be at least 1 day", "30 keeps a month of audit trail for ended sessions"
            )
        return value


class AgentConfig(_Section):
    """One agent: its credentials and how to launch it under each protocol.

    `env` holds every credential, including those copied from the daemon's environment by
    `pass_env` at load time. A launch field left unset means the agent cannot run under that
    protocol: `sandbox_agent_id` for sandbox-agent, `acp_command` for acp, and for acpx
    `acpx_agent` (a name acpx knows) or else `acp_command` (given to acpx as a raw command).
    """

    env: dict[EnvName, Credential] = Field(default_factory=dict)
    pass_env: tuple[EnvName, ...] = ()
    sandbox_agent_id: str | None = None
    acp_command: tuple[CommandArgument, ...] = ()
    acpx_agent: str | None = None

    @field_validator("sandbox_agent_id")
    @classmethod
    def _check_sandbox_agent_id(cls, value: str | None) -> str | None:
        if value is not None and not _AGENT_ID.fullmatch(value):
            raise _invalid(
                f"{value!r} is not a sandbox-agent agent id",
                "use an id from sandbox-agent's GET /v1/agents, e.g. claude, codex, opencode, amp",
            )
        return value

    @field_validator("acpx_agent")
    @classmethod
    def _check_acpx_agent(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c.isspace() for c in value)):
            raise _invalid(
                "must be one word, an agent name acpx knows (claude, codex, …)",
                "for a command with arguments leave acpx_agent unset and set acp_command",
            )
        return value

    def supports(self, protocol: AgentProtocol) -> bool:
        """Whether this agent can run under `protocol` with these settings."""
        if protocol == "sandbox-agent":
            return self.sandbox_agent_id is not None
        if protocol == "acp":
            return bool(self.acp_command)
        return self.acpx_agent is not None or bool(self.acp_command)

    def env_values(self) -> dict[str, str]:
        """The credentials as plain text, for injection into a sandbox. Never log the result."""
        return {name: value.get_secret_value() for name, value in self.env.items()}


def builtin_agents() -> dict[str, AgentConfig]:
    """The agents known when none is configured: claude-code, codex and goose."""
    return {name: _builtin_agent(name) for name in BUILTIN_LAUNCH}


def _builtin_agent(name: str) -> AgentConfig:
    sandbox_agent_id, acp_command, acpx_agent = BUILTIN_LAUNCH[name]
    return AgentConfig(
        sandbox_agent_id=sandbox_agent_id, acp_command=acp_command, acpx_agent=acpx_agent
    )


class AgentsConfig(_Section):
    """`[agents]`: the default agent and every agent `/task` accepts.

    In the file each agent is a table `[agents.<name>]` (or, in the legacy config format,
    `[agents.credentials.<name>] env = {...}`); `definitions` holds them all by name, with the
    built-in launch settings of claude-code, codex and goose filled in.
    """

    # definitions comes first so that default_agent's check can see it.
    definitions: dict[str, AgentConfig] = Field(default_factory=builtin_agents)
    default_agent: str = Field(default=DEFAULT_AGENT, validate_default=True)

    @field_validator("default_agent")
    @classmethod
    def _default_agent_is_known(cls, name: str, info: ValidationInfo) -> str:
        definitions = info.data.get("definitions")
        if isinstance(definitions, dict):
            known = sorted(definitions)
        else:
            # Some agent table is invalid; the loader still knows every agent's name.
            context = info.context if isinstance(info.context, Mapping) else {}
            names = context.get("agent_names")
            if not isinstance(names, tuple):
                return name
            known = sorted(names)
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise _invalid(
                f"{name!r} is not a configured agent",
                f"{hint}known agents: {', '.join(known)}; or add an [agents.{name}] table",
            )
        return name

    def known(self) -> tuple[str, ...]:
        """Agent names `/task <agent> …` accepts, sorted."""
        return tuple(sorted(self.definitions))


class GithubConfig(_Section):
    """`[github]`: the token the daemon fetches, pushes and opens pull requests with (`[git]`).

    The token stays out of the sandboxes by default: the daemon clones a task's repository
    itself (a private one too), copies it into the sandbox, and pushes the agent's work from
    its own clone. `agent_token = true` also gives every sandbox the token as GITHUB_TOKEN, for
    agents that should use `gh` or push themselves; the agent can then read and use it.
    """

    token: SecretStr
    agent_token: StrictBool = False

    @field_validator("token")
    @classmethod
    def _check_token(cls, token: SecretStr) -> SecretStr:
        return SecretStr(_secret_text(token, "paste a GitHub token, or set ANYCODE_GITHUB_TOKEN"))


class GitlabConfig(_Section):
    """`[gitlab]`: the token the daemon pushes and opens merge requests with (`[git]`) on
    gitlab.com or the self-managed GitLab at `[git] gitlab_url`. Unlike `[github] token`, it is
    never given to a sandbox: only the daemon uses it."""

    token: SecretStr

    @field_validator("token")
    @classmethod
    def _check_token(cls, token: SecretStr) -> SecretStr:
        return SecretStr(_secret_text(token, "paste a GitLab token, or set ANYCODE_GITLAB_TOKEN"))


_BRANCH_PREFIX: Final = re.compile(r"[A-Za-z0-9._/-]*")


class GitConfig(_Section):
    """`[git]`: the branch, commit, push and pull request the daemon makes of an agent's work.

    The forge URLs default to the public GitHub and GitLab; set them for GitHub Enterprise
    Server (`github_url` and `github_api_url`, which is `https://HOST/api/v3` there) or a
    self-managed GitLab (`gitlab_url`, whose API is under `/api/v4` unless `gitlab_api_url`
    says otherwise).
    """

    branch_prefix: str = "anycode/"
    email_domain: str = "users.noreply.anycode.invalid"
    auto_pr: AutoPr = "each_turn"
    draft: StrictBool = True
    max_patch_kb: StrictInt = 1024
    timeout_secs: StrictInt = 300
    cache_dir: ConfigPath = Field(default=Path("git-cache"), validate_default=True)
    github_url: str = GITHUB_URL
    github_api_url: str = GITHUB_API_URL
    gitlab_url: str = GITLAB_URL
    gitlab_api_url: str = ""
    """Empty: `<gitlab_url>/api/v4`."""

    @field_validator("branch_prefix")
    @classmethod
    def _check_branch_prefix(cls, value: str) -> str:
        # What git-check-ref-format(1) forbids, for a prefix followed by a short session id.
        bad = (
            not _BRANCH_PREFIX.fullmatch(value)
            or value.startswith(("/", "-", "."))
            or any(part in value for part in ("..", "//", "/.", ".lock/", "@{"))
        )
        if bad:
            raise _invalid(
                f"{value!r} cannot start a git branch name",
                'use letters, digits, "-", "_", "." and "/", like "anycode/"',
            )
        return value

    @field_validator("email_domain")
    @classmethod
    def _check_email_domain(cls, value: str) -> str:
        domain = value.strip().lstrip("@")
        if not re.fullmatch(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+", domain):
            raise _invalid(
                f"{value!r} is not a mail domain",
                'commit authors get addresses at this domain, like "users.noreply.example.com"',
            )
        return domain

    @field_validator("max_patch_kb", "timeout_secs")
    @classmethod
    def _check_positive(cls, value: int) -> int:
        if value < 1:
            raise _invalid("must be at least 1")
        return value

    @field_validator("github_url")
    @classmethod
    def _check_github_url(cls, value: str) -> str:
        return _check_base_url(value, GITHUB_URL)

    @field_validator("github_api_url")
    @classmethod
    def _check_github_api_url(cls, value: str) -> str:
        return _check_base_url(value, GITHUB_API_URL)

    @field_validator("gitlab_url")
    @classmethod
    def _check_gitlab_url(cls, value: str) -> str:
        return _check_base_url(value, GITLAB_URL)

    @field_validator("gitlab_api_url")
    @classmethod
    def _check_gitlab_api_url(cls, value: str) -> str:
        return _check_base_url(value, f"{GITLAB_URL}/api/v4") if value.strip() else ""

    @model_validator(mode="after")
    def _gitlab_api_under_its_server(self) -> GitConfig:
        if not self.gitlab_api_url:
            # Frozen: set once here, as the validated value.
            object.__setattr__(self, "gitlab_api_url", f"{self.gitlab_url}/api/v4")
        return self

    @model_validator(mode="after")
    def _enterprise_needs_its_api(self) -> GitConfig:
        if self.github_url != GITHUB_URL and self.github_api_url == GITHUB_API_URL:
            raise _invalid(
                "github_url names a GitHub Enterprise server but github_api_url is still "
                "api.github.com",
                f'set github_api_url = "{self.github_url}/api/v3"',
            )
        return self

    @property
    def max_patch_bytes(self) -> int:
        return self.max_patch_kb * 1024


class SessionConfig(_Section):
    """`[session]`: limits and pacing of agent sessions."""

    max_concurrent: StrictInt = 5
    # Minutes may be fractional (0.5 = 30 s), which tests and short-lived demos use.
    timeout_minutes: StrictFloat | StrictInt = 30
    debounce_ms: StrictInt = 500
    idle_minutes: StrictFloat | StrictInt = 10
    max_upload_mb: StrictInt = 20
    # Per turn, besides the per-file limit: how many files and how many MB in all.
    max_upload_files: StrictInt = 20
    max_upload_total_mb: StrictInt = 50
    # Files people send (a photo, a document, a voice note): each is fetched only up to this
    # size and written into the sandbox's /workspace/inbox/. Telegram bots fetch 20 MB at most.
    max_download_mb: StrictInt = 20
    # Follow-ups waiting for the agent's turn to end; past this the sender is told.
    max_queued_follow_ups: StrictInt = 10
    # A chat with no live session is forgotten (its actors stopped) after this long.
    chat_idle_minutes: StrictFloat | StrictInt = 10
    # The largest checkpoint (workspace and agent state, before compression) taken at the end
    # of each turn to carry the session into a new sandbox if its own dies; 0 takes none.
    checkpoint_max_mb: StrictInt = 200

    @field_validator("checkpoint_max_mb")
    @classmethod
    def _check_checkpoint(cls, value: int) -> int:
        if value < 0:
            raise _invalid("must be 0 (no checkpoints) or more")
        return value

    @field_validator("max_upload_files", "max_upload_total_mb", "max_queued_follow_ups")
    @classmethod
    def _check_at_least_one(cls, value: int) -> int:
        if value < 1:
            raise _invalid("must be at least 1")
        return value

    @field_validator("max_concurrent")
    @classmethod
    def _check_max_concurrent(cls, value: int) -> int:
        if value < 1:
            raise _invalid("must be at least 1", "it is the number of active sessions per chat")
        return value

    @field_validator("chat_idle_minutes")
    @classmethod
    def _check_chat_idle(cls, value: float) -> float:
        if value <= 0:
            raise _invalid("must be greater than 0 minutes", "10 keeps a quiet chat for a while")
        return value

    @field_validator("timeout_minutes")
    @classmethod
    def _check_timeout(cls, value: float) -> float:
        if value <= 0:
            raise _invalid("must be greater than 0 minutes", "30 gives an agent half an hour")
        return value

    @field_validator("idle_minutes")
    @classmethod
    def _check_idle(cls, value: float) -> float:
        if value < 0:
            raise _invalid(
                "must be 0 or more minutes",
                "0 ends a session as soon as the agent's turn ends; 10 waits for a follow-up",
            )
        return value

    @field_validator("max_download_mb")
    @classmethod
    def _check_download(cls, value: int) -> int:
        if value < 1:
            raise _invalid("must be at least 1", "Telegram bots may download up to 20 MB")
        return value

    @field_validator("max_upload_mb")
    @classmethod
    def _check_upload(cls, value: int) -> int:
        if value < 1:
            raise _invalid("must be at least 1", "Telegram bots may upload up to 50 MB")
        return value

    @field_validator("debounce_ms")
    @classmethod
    def _check_debounce(cls, value: int) -> int:
        if value <= 0:
            raise _invalid(
                "must be greater than 0", "500 keeps edits under the chat platforms' rate limits"
            )
        return value


class LimitsConfig(_Section):
    """`[limits]`: what one person, and the daemon as a whole, may use.

    Counted from the store, so a restart does not reset them. A user is one platform's user id
    (a person on Telegram and on Slack counts twice).
    """

    max_sessions_per_user: StrictInt = 3
    max_sessions_total: StrictInt = 10
    max_tasks_per_user_per_day: StrictInt = 50
    # Commands and messages per user: a token bucket of `command_burst` refilled at this rate.
    commands_per_second: StrictFloat = 1.0
    command_burst: StrictInt = 5

    @field_validator(
        "max_sessions_per_user", "max_sessions_total", "max_tasks_per_user_per_day", "command_burst"
    )
    @classmethod
    def _check_positive(cls, value: int) -> int:
        if value < 1:
            raise _invalid("must be at least 1")
        return value

    @field_validator("commands_per_second")
    @classmethod
    def _check_rate(cls, value: float) -> float:
        if value <= 0:
            raise _invalid("must be greater than 0", "1 command per second is plenty for a person")
        return value


def _host_port(value: str) -> str:
    """`host:port` (an IPv6 host in brackets), stripped; the problem otherwise."""
    host, _, port = value.strip().rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    bare = host[1:-1] if bracketed else host
    if not bare or not port.isdigit() or (":" in bare) != bracketed or "[" in bare:
        raise _invalid(
            f"must be host:port, like 127.0.0.1:7070, not {value!r}",
            "write an IPv6 address in brackets: [::1]:7070; remove listen to stay local",
        )
    _check_port(int(port))
    return value.strip()


class PoolConfig(_Section):
    """`[pool]`: sandboxes kept ready for each agent, so that a `/task` does not wait for one to
    be created and its agent to start (off unless an agent is given a size).

    A pooled sandbox counts against `limits.max_sessions_total` like a session's: the pool only
    fills what the live sessions leave free.
    """

    # Ready sandboxes per agent name: {"claude-code" = 3}. An agent not named gets none.
    agents: dict[str, StrictInt] = Field(default_factory=dict)
    # A ready sandbox nobody claimed for this long is replaced by a fresh one.
    max_idle_minutes: StrictInt = 30

    @field_validator("agents")
    @classmethod
    def _check_sizes(cls, value: dict[str, int]) -> dict[str, int]:
        for name, size in value.items():
            if size < 0:
                raise _invalid(f"{name}: the pool size must be 0 or more", "0 keeps no pool")
        return value

    @field_validator("max_idle_minutes")
    @classmethod
    def _check_idle(cls, value: int) -> int:
        if value < 1:
            raise _invalid("must be at least 1", "30 replaces an unused sandbox every half hour")
        return value

    def size(self, agent: str) -> int:
        """How many ready sandboxes `agent` gets (0: no pool)."""
        return self.agents.get(agent, 0)


class AdminConfig(_Section):
    """`[admin]`: where the daemon serves the live actor tree to `anycode tree`.

    Always on the local Unix `socket` (mode 0600: its file permissions are the access control).
    On a network address only when `listen` ("host:port") is set, and then every request must
    carry `token`, because a TCP port has no file permissions.
    """

    socket: SocketPath = Field(default=Path("anycode.sock"), validate_default=True)
    listen: OptionalText = None
    # Validated even when absent, so a listen without a token is caught.
    token: SecretStr | None = Field(default=None, validate_default=True)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _host_port(value)

    @field_validator("token")
    @classmethod
    def _check_token(cls, token: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        fix = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        if token is None:
            if info.data.get("listen") is not None:
                raise _invalid("is required when admin.listen is set", fix)
            return None
        value = _secret_text(token, fix)
        if len(value) < _MIN_ADMIN_TOKEN_CHARS:
            raise _invalid(f"must be at least {_MIN_ADMIN_TOKEN_CHARS} characters", fix)
        return SecretStr(value)


_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
_API_USER_NAME: Final = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


class ApiUserConfig(_Section):
    """`[api.users.<name>]`: one person's bearer token for the HTTP API.

    Either `token_env`, the name of an environment variable of the daemon that holds the token,
    or `token_sha256`, the token's SHA-256 as lower-case hex (`printf %s TOKEN | sha256sum`),
    so the file never holds the token itself."""

    token_env: OptionalText = None
    token_sha256: OptionalText = Field(default=None, validate_default=True)

    @field_validator("token_sha256")
    @classmethod
    def _check_token(cls, value: str | None, info: ValidationInfo) -> str | None:
        has_env = info.data.get("token_env") is not None
        if (value is None) == (not has_env):
            raise _invalid(
                "set exactly one of token_env and token_sha256",
                'token_env = "ANYCODE_API_TOKEN_ADA", or token_sha256 = the hex of '
                "printf %s TOKEN | sha256sum",
            )
        if value is not None and not _SHA256_HEX.fullmatch(value.strip().lower()):
            raise _invalid("must be 64 hex digits (a SHA-256)", "printf %s TOKEN | sha256sum")
        return value.strip().lower() if value is not None else None


class ApiConfig(_Section):
    """`[api]`: the HTTP API, its live events and the web dashboard (anycode_actors/api/).

    Off unless the table is there. Each `[api.users.<name>]` is a person: their token lets them
    in as user `<name>` of platform "api", under the same ownership rules and `[limits]` as
    chat users; `admins` may see and steer everyone's API sessions."""

    listen: str = "127.0.0.1:7080"
    users: dict[str, ApiUserConfig] = Field(default_factory=dict)
    admins: tuple[str, ...] = ()
    max_body_kb: int = 64

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        return _host_port(value)

    @field_validator("users")
    @classmethod
    def _check_users(cls, users: dict[str, ApiUserConfig]) -> dict[str, ApiUserConfig]:
        for name in users:
            if not _API_USER_NAME.fullmatch(name):
                raise _invalid(
                    f"user name {name!r} must be 1-64 letters, digits or _.@-",
                    "rename the [api.users.<name>] table",
                )
        return users

    @field_validator("admins")
    @classmethod
    def _check_admins(cls, admins: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        users = info.data.get("users") or {}
        unknown = [name for name in admins if name not in users]
        if unknown:
            raise _invalid(
                f"names users without a token: {', '.join(unknown)}",
                "add an [api.users.<name>] table for each admin",
            )
        return admins

    @field_validator("max_body_kb")
    @classmethod
    def _check_body(cls, value: int) -> int:
        if not 1 <= value <= 10240:
            raise _invalid("must be between 1 and 10240 (KiB)")
        return value


class Config(BaseModel):
    """The whole configuration. Frozen; build it with `load_config` and pass it down."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    telegram: TelegramConfig | None = None
    slack: SlackConfig | None = None
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    docker: DockerConfig = Field(default_factory=DockerConfig)
    ecs: EcsConfig = Field(default_factory=EcsConfig)
    local: LocalConfig = Field(default_factory=LocalConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    agents: AgentsConfig = Field(default_factory=AgentsConfig)
    github: GithubConfig | None = None
    gitlab: GitlabConfig | None = None
    git: GitConfig = Field(default_factory=GitConfig)
    session: SessionConfig = Field(default_factory=SessionConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    pool: PoolConfig = Field(default_factory=PoolConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    api: ApiConfig | None = None

    @model_validator(mode="after")
    def _cross_section_rules(self) -> Config:
        problems = cross_section_problems(
            has_platform=any(s is not None for s in (self.telegram, self.slack, self.api)),
            sandbox=self.sandbox,
            ecs=self.ecs.model_dump(),
            agents=self.agents,
            local=self.local,
        )
        problems.extend(
            ConfigProblem(
                f"pool.agents.{name}",
                f"{name} is not a known agent",
                f"name one of {', '.join(self.known_agents())}",
            )
            for name in self.pool.agents
            if name not in self.agents.definitions
        )
        if problems:
            raise ConfigError(problems)
        return self

    def platforms(self) -> tuple[str, ...]:
        """The configured chat platforms, e.g. `("telegram",)`."""
        return tuple(name for name in ("telegram", "slack") if getattr(self, name) is not None)

    def access_problems(self) -> list[ConfigProblem]:
        """Why the daemon must not start as configured: a platform that would let anyone in.

        Kept out of validation so that tools (and tests) can still build such a config; `anycode
        run` and `check-config` refuse it.
        """
        problems = []
        for name in self.platforms():
            section = getattr(self, name)
            # Admins are let in too: a bot for its admins alone is not open to strangers.
            if not (section.allowed_users or section.admins or section.allow_everyone):
                problems.append(
                    ConfigProblem(
                        f"{name}.allowed_users",
                        "is empty, so anyone who finds the bot could run agents with your "
                        "credentials; the daemon refuses to start like this",
                        f"list the user ids that may use the bot in [{name}] allowed_users, or "
                        f"set allow_everyone = true in [{name}] to let anyone in on purpose",
                    )
                )
        if self.api is not None and not self.api.users:
            problems.append(
                ConfigProblem(
                    "api.users",
                    "is empty, so nobody could use the API",
                    'add an [api.users.<name>] table with token_env = "VARIABLE" or '
                    "token_sha256 for each person, or remove [api]",
                )
            )
        return problems

    def known_agents(self) -> tuple[str, ...]:
        """Agent names `/task` accepts: the configured ones, or claude-code, codex, goose."""
        return self.agents.known()

    def agent(self, name: str) -> AgentConfig:
        """The settings of agent `name`; KeyError if it is not a known agent."""
        try:
            return self.agents.definitions[name]
        except KeyError:
            raise KeyError(
                f"unknown agent {name!r}; known: {', '.join(self.known_agents())}"
            ) from None

    def sandbox_env(self, agent: str) -> dict[str, str]:
        """Plain-text credentials to inject into `agent`'s sandbox: its env, plus GITHUB_TOKEN
        with `[github] agent_token = true`.

        The agent's own GITHUB_TOKEN wins over `[github]`, the more specific setting. The
        provider adds the ANYCODE_* variables itself. Never log the result.
        """
        env = self.agent(agent).env_values()
        if self.github is not None and self.github.agent_token:
            env.setdefault("GITHUB_TOKEN", self.github.token.get_secret_value())
        return env

    def redacted(self) -> dict[str, Any]:
        """Plain data (dicts, lists, scalars) of the whole config with every secret masked."""
        return cast(dict[str, Any], _redact(self.model_dump()))

    def effective_toml(self) -> str:
        """The effective config as TOML text: defaults filled in, secrets masked."""
        data = self.redacted()
        agents = data["agents"]
        data["agents"] = {"default_agent": agents["default_agent"], **agents["definitions"]}
        return dump_toml(data, header=_EFFECTIVE_HEADER)


def cross_section_problems(
    *,
    has_platform: bool,
    sandbox: SandboxConfig | None,
    ecs: Mapping[str, object] | None,
    agents: AgentsConfig | None,
    local: LocalConfig | None,
) -> list[ConfigProblem]:
    """Rules that span sections; each runs when the sections it reads are valid themselves.

    `ecs` is the table's values, validated or raw: a required key is missing either way.
    """
    problems = []
    if not has_platform:
        problems.append(
            ConfigProblem(
                "telegram/slack",
                "at least one messaging platform must be configured (telegram, slack or api)",
                "add a [telegram] section with bot_token (or set ANYCODE_TELEGRAM_BOT_TOKEN), "
                "or a [slack] section with app_token and bot_token",
            )
        )
    if sandbox is not None and sandbox.provider == "ecs":
        if sandbox.protocol in ("acp", "acpx"):
            problems.append(
                ConfigProblem(
                    "sandbox.protocol",
                    f'"{sandbox.protocol}" runs the agent through exec inside the sandbox, '
                    "which the ecs provider cannot do (ECS exec is not supported)",
                    'use protocol = "sandbox-agent" with ecs, or provider = "docker" or "local"',
                )
            )
        if ecs is not None:
            required = (
                ("cluster", "the name or ARN of the ECS cluster that runs sandboxes"),
                ("task_definition", 'family:revision or ARN, like "anycode-task:1"'),
                ("subnets", 'at least one subnet for the tasks, like ["subnet-0abc123"]'),
            )
            problems.extend(
                ConfigProblem(f"ecs.{key}", 'is required when sandbox.provider = "ecs"', fix)
                for key, fix in required
                if not ecs.get(key)
            )
    if (
        sandbox is not None
        and sandbox.provider == "local"
        and local is not None
        and not local.allow_unsandboxed
    ):
        problems.append(
            ConfigProblem(
                "local.allow_unsandboxed",
                'must be true when sandbox.provider = "local": the local provider runs agents as '
                "plain processes of this user, with no container, so an agent can read and change "
                "anything this user can (files, keys, other projects)",
                "for development and demos only, set allow_unsandboxed = true in [local]; "
                'otherwise use provider = "docker"',
            )
        )
    if sandbox is not None and agents is not None and agents.default_agent in agents.definitions:
        name = agents.default_agent
        if not agents.definitions[name].supports(sandbox.protocol):
            needs = {
                "sandbox-agent": "sandbox_agent_id",
                "acp": "acp_command",
                "acpx": "acpx_agent or acp_command",
            }[sandbox.protocol]
            problems.append(
                ConfigProblem(
                    "agents.default_agent",
                    f'{name} cannot run with sandbox.protocol = "{sandbox.protocol}" '
                    f"(it has no {needs})",
                    f"set {needs} in [agents.{name}], or pick another default_agent or protocol",
                )
            )
    return problems


# --- redaction ----------------------------------------------------------------------------------


def _redact(value: object) -> object:
    if isinstance(value, SecretStr):
        return mask_secret(value.get_secret_value())
    if isinstance(value, Mapping):
        return {str(key): _redact(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


# --- the sections of a file ----------------------------------------------------------------------

#: Every `[section]` of config.toml and the model that validates it, in the order of `Config`.
SECTIONS: Final[Mapping[str, type[BaseModel]]] = MappingProxyType(
    {
        "telegram": TelegramConfig,
        "slack": SlackConfig,
        "sandbox": SandboxConfig,
        "docker": DockerConfig,
        "ecs": EcsConfig,
        "local": LocalConfig,
        "database": DatabaseConfig,
        "agents": AgentsConfig,
        "github": GithubConfig,
        "gitlab": GitlabConfig,
        "git": GitConfig,
        "session": SessionConfig,
        "limits": LimitsConfig,
        "pool": PoolConfig,
        "admin": AdminConfig,
        "api": ApiConfig,
    }
)
#: Sections that are None in `Config` when the file leaves them out.
OPTIONAL_SECTIONS: Final = frozenset({"telegram", "slack", "github", "gitlab", "api"})
