"""How validation errors become `ConfigProblem`s: key paths as written, messages with a fix.

pydantic reports a location inside the models (`("definitions", "codex", "env")`) and a terse
message; a person editing config.toml wants the key path as they wrote it (`agents.codex.env`,
or `agents.credentials.codex.env` in the legacy config format), a sentence, and what to change.
Messages never quote the input of a secret.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from types import MappingProxyType, UnionType
from typing import Any, Final, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from anycode_actors.config.models import PROBLEM_TYPE, SECRET_ENV_VARS, SECTIONS, AgentConfig
from anycode_actors.config.writing import toml_key
from anycode_actors.errors import ConfigProblem

__all__ = [
    "format_path",
    "in_section_order",
    "sections_with_key",
    "suggest",
    "syntax_problem",
    "translate_errors",
]

_TOML_POSITION: Final = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")

_TYPE_MESSAGES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "missing": "is required",
        "string_type": "must be a string (in double quotes)",
        "int_type": "must be a whole number",
        "float_type": "must be a number",
        "bool_type": "must be true or false",
        "list_type": 'must be a list, like ["a", "b"]',
        "tuple_type": 'must be a list, like ["a", "b"]',
        "dict_type": "must be a table",
        "model_type": "must be a table",
        "model_attributes_type": "must be a table",
        "path_type": "must be a path (a string)",
    }
)


def syntax_problem(exc: tomllib.TOMLDecodeError) -> ConfigProblem:
    """The problem of a file that is not TOML, at the line and column tomllib names."""
    # tomllib's messages name a position, never the text there (which could be a token).
    message = str(exc)
    position = _TOML_POSITION.search(message)
    where = f"line {position.group(1)}, column {position.group(2)}" if position else ""
    reason = _TOML_POSITION.sub("", message)
    return ConfigProblem(
        where,
        f"invalid TOML: {reason}",
        'check that line: strings need "double quotes", each key appears once per table',
    )


def suggest(word: str, candidates: object) -> str | None:
    """The candidate closest to `word` (a misspelt key), if one is close enough."""
    names = [str(c) for c in candidates] if isinstance(candidates, list | tuple | Mapping) else []
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    return close[0] if close else None


def sections_with_key(key: str) -> list[str]:
    """The sections that have a key named `key` (for a key written in the wrong table)."""
    found = [name for name, model in SECTIONS.items() if key in model.model_fields]
    if key in AgentConfig.model_fields:
        found.append("agents.<name>")
    return found


def _model_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class that validates the table at `loc` (for did-you-mean on unknown keys)."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = _unwrap_optional(field.annotation)
        elif get_origin(current) is dict:
            current = _unwrap_optional(get_args(current)[1])
        else:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, UnionType):
        for arg in get_args(annotation):
            if arg is not type(None):
                return arg
    return annotation


def format_path(loc: tuple[str | int, ...]) -> str:
    """A key path as written in TOML: `agents."odd name".env`, `ecs.subnets[0]`."""
    text = ""
    for part in loc:
        if part == "[key]":
            continue  # pydantic's marker for "the key itself is invalid", not a path step
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + toml_key(part)
    return text


def in_section_order(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    """`problems` sorted by their section's place in the file's order (stable within one)."""
    order = {name: index for index, name in enumerate(SECTIONS)}

    def section_index(problem: ConfigProblem) -> int:
        head = re.split(r"[./\[]", problem.path, maxsplit=1)[0]
        # Syntax errors and unknown sections first: they explain whatever follows.
        return order.get(head, -1)

    return sorted(problems, key=section_index)


def translate_errors(
    section: str,
    model: type[BaseModel],
    exc: ValidationError,
    *,
    env_sources: Mapping[tuple[str, str], str],
    agent_origins: Mapping[str, tuple[str, ...]],
) -> list[ConfigProblem]:
    """The problems of one section's `ValidationError`.

    `env_sources` maps (section, key) to the environment variable that supplied the value, so a
    message can say where a wrong token came from; `agent_origins` maps an agent's name to its
    table's path in the file.
    """
    problems = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        message, fix = _describe(section, model, loc, error)
        path = _user_path(section, loc, agent_origins)
        variable = env_sources.get((section, str(loc[0]))) if loc else None
        if variable is not None:
            message += f" (value from the environment variable {variable})"
        problems.append(ConfigProblem(path, message, fix))
    return problems


def _describe(
    section: str, model: type[BaseModel], loc: tuple[str | int, ...], error: Any
) -> tuple[str, str]:
    """Message and fix for one pydantic error. Never includes the input of a secret."""
    kind = error["type"]
    context = error.get("ctx") or {}
    if kind == PROBLEM_TYPE:
        return str(context["message"]), str(context.get("fix", ""))
    if kind == "extra_forbidden":
        key = str(loc[-1])
        parent = _model_at(model, loc[:-1])
        close = suggest(key, list(parent.model_fields)) if parent else None
        if close:
            return f"unknown key; did you mean {close}?", "correct the spelling"
        elsewhere = [s for s in sections_with_key(key) if s != section]
        if elsewhere:
            return "unknown key", f"{key} belongs in [{elsewhere[0]}]"
        known = ", ".join(parent.model_fields) if parent else ""
        return "unknown key", f"known keys here: {known}" if known else ""
    if kind == "literal_error":
        # Only choice fields (provider, protocol, …) are literals, and none of them is secret.
        expected = context.get("expected", "")
        got = error.get("input")
        close = suggest(str(got), re.findall(r"'([^']*)'", str(expected)))
        fix = f'did you mean "{close}"?' if close else ""
        choices = str(expected).replace("'", '"')
        return f"must be one of {choices} (got {got!r})", fix
    if kind == "missing":
        key = str(loc[-1]) if loc else section
        variable = next(
            (v for v, target in SECRET_ENV_VARS.items() if target == (section, key)), None
        )
        if variable and len(loc) == 1:
            return (
                "is required",
                f"set {key} in [{section}] or the environment variable {variable}",
            )
        return "is required", f"add {key} = … to this table"
    if kind in _TYPE_MESSAGES:
        if not loc and kind in ("dict_type", "model_type", "model_attributes_type"):
            return "must be a table", f"write it as a [{section}] section"
        return _TYPE_MESSAGES[kind], ""
    return str(error["msg"]), ""


def _user_path(
    section: str, loc: tuple[str | int, ...], agent_origins: Mapping[str, tuple[str, ...]]
) -> str:
    """The key path as the user wrote it (agents live in `definitions` only internally)."""
    if section == "agents" and len(loc) >= 2 and loc[0] == "definitions":
        name = str(loc[1])
        origin = agent_origins.get(name, ("agents", name))
        return format_path((*origin, *loc[2:]))
    return format_path((section, *loc))
