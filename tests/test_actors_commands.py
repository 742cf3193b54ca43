"""The rules for reading /task: agent, prompt and repository."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anycode_actors.actors.commands import TASK_USAGE, BadTask, detect_repo, parse_task

AGENTS = ["claude-code", "codex", "goose"]


def test_a_known_first_word_selects_the_agent() -> None:
    request = parse_task("codex fix the bug", AGENTS, "claude-code")
    assert (request.agent, request.prompt) == ("codex", "fix the bug")


def test_the_agent_name_is_matched_case_insensitively() -> None:
    assert parse_task("Codex fix it", AGENTS, "claude-code").agent == "codex"


def test_an_unknown_first_word_falls_back_to_the_default_agent_with_the_whole_prompt() -> None:
    request = parse_task("fix the bug", AGENTS, "claude-code")
    assert (request.agent, request.prompt) == ("claude-code", "fix the bug")


def test_empty_arguments_get_the_usage() -> None:
    with pytest.raises(BadTask, match=r"^Usage: /task \[agent\] <prompt>$"):
        parse_task("   ", AGENTS, "claude-code")
    assert TASK_USAGE == "Usage: /task [agent] <prompt>"


def test_an_agent_without_a_prompt_is_refused_with_a_clear_message() -> None:
    with pytest.raises(BadTask, match=r"^Please provide a prompt after the agent name\.$"):
        parse_task("codex", AGENTS, "claude-code")


@pytest.mark.parametrize(
    ("prompt", "repo"),
    [
        ("fix the flaky login test in acme/web", "https://github.com/acme/web"),
        ("look at https://github.com/acme/web please", "https://github.com/acme/web"),
        ("see https://github.com/acme/web.git", "https://github.com/acme/web"),
        ("see https://github.com/acme/web/tree/main/src", "https://github.com/acme/web"),
        ("issue https://github.com/acme/web/issues/12.", "https://github.com/acme/web"),
        ("mirror at https://gitlab.com/group/sub/proj", "https://gitlab.com/group/sub/proj"),
        ("clone octo-org/hello.world and run tests", "https://github.com/octo-org/hello.world"),
        ("repo rust-lang/cargo: bump deps", "https://github.com/rust-lang/cargo"),
        ("(in acme/web)", "https://github.com/acme/web"),
    ],
)
def test_repositories_are_found(prompt: str, repo: str) -> None:
    assert detect_repo(prompt) == repo


@pytest.mark.parametrize(
    "prompt",
    [
        "fix the panic in src/main.rs",
        "use tabs and/or spaces",
        "read the docs at https://x.com/a/b",
        "edit ./scripts/build.sh",
        "split it 1/2 and 3/4 of the way",
        "open /etc/hosts",
        "check lib/utils and tests/unit",
        "update README.md and docs/index.md",
        "the client/server split",
        "mail me at ada@example.com/x",
        "hello",
    ],
)
def test_paths_files_and_english_pairs_are_not_repositories(prompt: str) -> None:
    assert detect_repo(prompt) is None


def test_a_cued_shorthand_wins_over_an_earlier_uncued_one() -> None:
    prompt = "compare foo-bar/baz with the code in acme/web"
    assert detect_repo(prompt) == "https://github.com/acme/web"


@given(st.text(max_size=200))
def test_detection_never_crashes_and_only_returns_https_urls(prompt: str) -> None:
    repo = detect_repo(prompt)
    assert repo is None or repo.startswith(("https://github.com/", "https://gitlab.com/"))


@pytest.mark.parametrize("name", ["api", "server", "docs", "app", "client"])
def test_common_repository_names_are_still_repositories(name: str) -> None:
    assert detect_repo(f"fix the bug in acme/{name}") == f"https://github.com/acme/{name}"
