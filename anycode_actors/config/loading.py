"""Loading config.toml: from a file, TOML text or parsed data to a validated `Config`.

Load it with `load_config(path)` (or `parse_config(text)` / `config_from_mapping(data)`). Each
returns a frozen `Config` or raises `ConfigError` that lists *every* problem at once, each with
the key path as written in the file and a fix, because a person editing a config wants the whole
list, not one error per attempt.

Secrets may also come from the environment (see `SECRET_ENV_VARS`); the environment wins over the
file, and a token in the environment alone is enough to enable its section. Loading takes the
environment as an argument so that tests never touch the process environment.

The legacy config format loads too: agents as `[agents.credentials.<name>] env = {...}` tables
(normalised here), `sandbox.protocol = "opencode"` and empty optional `[ecs]` keys (both handled
by the models).
"""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ValidationError

from anycode_actors.config.models import (
    AGENT_NAME,
    BUILTIN_LAUNCH,
    ENV_NAME,
    OPTIONAL_SECTIONS,
    SECRET_ENV_VARS,
    SECTIONS,
    AgentConfig,
    AgentsConfig,
    Config,
    LocalConfig,
    SandboxConfig,
    cross_section_problems,
)
from anycode_actors.config.problems import (
    format_path,
    in_section_order,
    sections_with_key,
    suggest,
    syntax_problem,
    translate_errors,
)
from anycode_actors.errors import ConfigError, ConfigProblem

__all__ = ["config_from_mapping", "load_config", "parse_config"]

# Keys of `[agents]` that are not agents.
_AGENTS_RESERVED_KEYS: Final = ("default_agent", "credentials")
_T = TypeVar("_T")


def load_config(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> Config:
    """Read and validate a config file. Relative paths in it count from the file's folder.

    `environ` defaults to `os.environ`; it supplies secrets (`SECRET_ENV_VARS`), the variables
    named by `pass_env` and `HOME` for `~` in paths. Raises `ConfigError` with every problem.
    """
    file = Path(path)
    source = str(file)
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        fix = "copy config.example.toml to config.toml and edit it, or pass the right path"
        raise ConfigError([ConfigProblem(source, "file not found", fix)], source) from None
    except UnicodeDecodeError as exc:
        problem = ConfigProblem(
            source, f"is not UTF-8 text (byte {exc.start})", "save the file as UTF-8"
        )
        raise ConfigError([problem], source) from None
    except OSError as exc:
        raise ConfigError(
            [ConfigProblem(source, f"cannot be read: {exc.strerror}")], source
        ) from None
    return parse_config(text, environ=environ, base_dir=file.absolute().parent, source=source)


def parse_config(
    text: str,
    *,
    environ: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    source: str = "config",
) -> Config:
    """Validate config TOML text. Without `base_dir`, relative paths stay relative."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([syntax_problem(exc)], source) from None
    return config_from_mapping(data, environ=environ, base_dir=base_dir, source=source)


def config_from_mapping(
    data: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    source: str = "config",
) -> Config:
    """Validate already-parsed TOML data (nested dicts, as tomllib returns them)."""
    loader = _Loader(os.environ if environ is None else environ, base_dir)
    return loader.load(data, source)


class _Loader:
    """One load: collects problems from every stage so that all are reported together."""

    def __init__(self, environ: Mapping[str, str], base_dir: Path | None) -> None:
        self._environ = environ
        self._base_dir = base_dir
        self._problems: list[ConfigProblem] = []
        # (section, key) → the environment variable that supplied its value.
        self._env_sources: dict[tuple[str, str], str] = {}
        # Agent name → its table's path in the file (plain, or the legacy credentials form).
        self._agent_origins: dict[str, tuple[str, ...]] = {}

    def load(self, data: Mapping[str, Any], source: str) -> Config:
        raw = copy.deepcopy(dict(data))
        self._apply_env(raw)
        self._drop_unknown_sections(raw)
        if isinstance(raw.get("agents"), dict):
            raw["agents"] = self._normalise_agents(raw["agents"])

        context = {
            "base_dir": self._base_dir,
            "home": self._environ.get("HOME"),
            "agent_names": tuple(self._agent_origins) or tuple(BUILTIN_LAUNCH),
        }
        sections: dict[str, BaseModel | None] = {}
        for name, model in SECTIONS.items():
            if name not in raw and name in OPTIONAL_SECTIONS:
                sections[name] = None
                continue
            try:
                sections[name] = model.model_validate(raw.get(name, {}), context=context)
            except ValidationError as exc:
                sections[name] = None
                self._problems.extend(
                    translate_errors(
                        name,
                        model,
                        exc,
                        env_sources=self._env_sources,
                        agent_origins=self._agent_origins,
                    )
                )

        self._problems.extend(
            cross_section_problems(
                has_platform=any(name in raw for name in ("telegram", "slack", "api")),
                sandbox=_as(sections["sandbox"], SandboxConfig),
                ecs=raw["ecs"] if isinstance(raw.get("ecs"), dict) else {},
                agents=_as(sections["agents"], AgentsConfig),
                local=_as(sections["local"], LocalConfig),
            )
        )
        if self._problems:
            raise ConfigError(in_section_order(self._problems), source)
        return Config.model_validate(sections)

    def _apply_env(self, raw: dict[str, Any]) -> None:
        for variable, (section, key) in SECRET_ENV_VARS.items():
            value = self._environ.get(variable, "")
            # An empty variable counts as unset, as `VAR=` in env files usually means "no value".
            if not value:
                continue
            table = raw.setdefault(section, {})
            if isinstance(table, dict):
                table[key] = value
                self._env_sources[(section, key)] = variable

    def _drop_unknown_sections(self, raw: dict[str, Any]) -> None:
        for key in [k for k in raw if k not in SECTIONS]:
            value = raw.pop(key)
            close = suggest(key, list(SECTIONS))
            homes = sections_with_key(key)
            if isinstance(value, dict):
                message = f"unknown section [{key}]" + (
                    f"; did you mean [{close}]?" if close else ""
                )
                fix = f"known sections: {', '.join(SECTIONS)}"
            else:
                message = "unknown key at the top level"
                if homes:
                    fix = (
                        f"move it under [{homes[0]}] (keys above the first [header] are top-level)"
                    )
                else:
                    fix = f"keys belong in sections: {', '.join(SECTIONS)}"
            self._problems.append(ConfigProblem(format_path((key,)), message, fix))

    def _normalise_agents(self, table: dict[str, Any]) -> dict[str, Any]:
        """Turn `[agents]` as written (both forms) into AgentsConfig's shape.

        Built-in agents (claude-code, codex, goose) get their launch settings for keys they leave
        out; other agents default to their own name as sandbox-agent id and acpx agent name.
        """
        definitions: dict[str, Any] = {}
        credentials = table.get("credentials", {})
        if isinstance(credentials, dict):
            for name, entry in credentials.items():
                self._add_agent(definitions, name, entry, ("agents", "credentials", name))
        else:
            self._problems.append(
                ConfigProblem(
                    "agents.credentials",
                    "must be a table",
                    "write [agents.credentials.<name>] tables",
                )
            )
        for key, value in table.items():
            if key in _AGENTS_RESERVED_KEYS:
                continue
            if not isinstance(value, dict):
                close = suggest(key, list(_AGENTS_RESERVED_KEYS))
                message = "unknown key" + (f"; did you mean {close}?" if close else "")
                fix = "agents are tables: [agents.<name>]; other keys: default_agent, credentials"
                self._problems.append(ConfigProblem(format_path(("agents", key)), message, fix))
                continue
            if suggest(key, ["credentials"]) and not set(value) & set(AgentConfig.model_fields):
                self._problems.append(
                    ConfigProblem(
                        format_path(("agents", key)),
                        "unknown key; did you mean credentials?",
                        "the legacy form is [agents.credentials.<name>]",
                    )
                )
                continue
            if key in definitions:
                self._problems.append(
                    ConfigProblem(
                        format_path(("agents", key)),
                        f"agent {key} is configured twice, here and in [agents.credentials.{key}]",
                        f"move env into [agents.{key}] and delete [agents.credentials.{key}]",
                    )
                )
                continue
            self._add_agent(definitions, key, value, ("agents", key))

        normalised: dict[str, Any] = {}
        if "default_agent" in table:
            normalised["default_agent"] = table["default_agent"]
        if definitions:
            normalised["definitions"] = definitions
        return normalised

    def _add_agent(
        self, definitions: dict[str, Any], name: str, entry: Any, origin: tuple[str, ...]
    ) -> None:
        if not AGENT_NAME.fullmatch(name):
            self._problems.append(
                ConfigProblem(
                    format_path(origin),
                    "is not a valid agent name",
                    "use up to 32 lowercase letters, digits, - and _ (it is typed after /task)",
                )
            )
            return
        self._agent_origins[name] = origin
        if not isinstance(entry, dict):
            definitions[name] = entry
            return
        launch = BUILTIN_LAUNCH.get(name, (name, (), name))
        defaults = dict(zip(("sandbox_agent_id", "acp_command", "acpx_agent"), launch, strict=True))
        merged = {
            key: value for key, value in defaults.items() if value is not None and value != ()
        }
        merged.update(entry)
        self._pass_env(merged, origin)
        definitions[name] = merged

    def _pass_env(self, entry: dict[str, Any], origin: tuple[str, ...]) -> None:
        """Copy the daemon's variables named by `pass_env` into the agent's env."""
        names = entry.get("pass_env")
        env = entry.setdefault("env", {})
        if not isinstance(names, list) or not isinstance(env, dict):
            return
        for index, name in enumerate(names):
            if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
                continue
            path = format_path((*origin, "pass_env", index))
            if name in env:
                self._problems.append(
                    ConfigProblem(
                        path, f"{name} is also set in env", "keep it in one of env or pass_env"
                    )
                )
            elif not self._environ.get(name):
                self._problems.append(
                    ConfigProblem(
                        path,
                        f"{name} is not set in the daemon's environment",
                        f"export {name} before starting anycode, or remove it from pass_env",
                    )
                )
            else:
                env[name] = self._environ[name]


def _as(value: object, kind: type[_T]) -> _T | None:
    return value if isinstance(value, kind) else None
