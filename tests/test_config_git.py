"""`[git]` and `[github] agent_token`: defaults, each rule with its key path and fix, and what
the daemon-side git code reads from them."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from anycode_actors.config import Config, ConfigError, ConfigProblem, parse_config
from anycode_actors.config.models import GitConfig

TOKEN = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"
TELEGRAM = f'[telegram]\nbot_token = "{TOKEN}"\n'


def parse(text: str, base_dir: Path | None = None) -> Config:
    if base_dir is None:
        return parse_config(TELEGRAM + text, environ={})
    return parse_config(TELEGRAM + text, environ={}, base_dir=base_dir)


def problem_at(text: str, path: str) -> ConfigProblem:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    found = [p for p in caught.value.problems if p.path == path]
    assert found, f"no problem at {path}: {caught.value.problems}"
    return found[0]


def test_defaults() -> None:
    git = parse("").git
    assert (git.branch_prefix, git.auto_pr, git.draft) == ("anycode/", "each_turn", True)
    assert git.email_domain == "users.noreply.anycode.invalid"
    assert (git.max_patch_kb, git.max_patch_bytes, git.timeout_secs) == (1024, 1024 * 1024, 300)
    assert (git.github_url, git.github_api_url) == ("https://github.com", "https://api.github.com")
    assert (git.gitlab_url, git.gitlab_api_url) == (
        "https://gitlab.com",
        "https://gitlab.com/api/v4",
    )
    assert git.cache_dir == Path("git-cache")


def test_the_cache_folder_counts_from_the_config_files_folder(tmp_path: Path) -> None:
    assert parse("", base_dir=tmp_path).git.cache_dir == tmp_path / "git-cache"
    absolute = parse('[git]\ncache_dir = "/var/cache/anycode"\n', base_dir=tmp_path)
    assert absolute.git.cache_dir == Path("/var/cache/anycode")


def test_an_enterprise_and_self_managed_setup_loads() -> None:
    git = parse(
        "[git]\n"
        'github_url = "https://ghe.acme.io/"\n'
        'github_api_url = "https://ghe.acme.io/api/v3"\n'
        'gitlab_url = "http://172.17.0.1:8929"\n'
        'auto_pr = "on_end"\n'
        "draft = false\n"
        'email_domain = "@acme.io"\n'
    ).git
    assert (git.github_url, git.github_api_url) == (
        "https://ghe.acme.io",
        "https://ghe.acme.io/api/v3",
    )
    assert git.gitlab_api_url == "http://172.17.0.1:8929/api/v4"
    assert (git.auto_pr, git.draft, git.email_domain) == ("on_end", False, "acme.io")


def test_an_enterprise_url_without_its_api_url_is_refused_with_the_fix() -> None:
    problem = problem_at('[git]\ngithub_url = "https://ghe.acme.io"\n', "git")
    assert "github_api_url" in problem.message
    assert 'github_api_url = "https://ghe.acme.io/api/v3"' in problem.fix


@pytest.mark.parametrize("prefix", ["/x", "-x", "a..b", "a b", "a//b", "x@{", "bad~", "a/.b"])
def test_a_branch_prefix_git_would_refuse_is_refused(prefix: str) -> None:
    problem = problem_at(f'[git]\nbranch_prefix = "{prefix}"\n', "git.branch_prefix")
    assert "cannot start a git branch name" in problem.message


@pytest.mark.parametrize("prefix", ["", "anycode/", "bots/anycode-", "ai_"])
def test_usual_branch_prefixes_load(prefix: str) -> None:
    assert parse(f'[git]\nbranch_prefix = "{prefix}"\n').git.branch_prefix == prefix


def test_rules_name_their_key() -> None:
    assert (
        "mail domain" in problem_at('[git]\nemail_domain = "nodot"\n', "git.email_domain").message
    )
    assert "at least 1" in problem_at("[git]\nmax_patch_kb = 0\n", "git.max_patch_kb").message
    assert "at least 1" in problem_at("[git]\ntimeout_secs = 0\n", "git.timeout_secs").message
    assert (
        "http(s) URL" in problem_at('[git]\ngitlab_url = "gitlab.com"\n', "git.gitlab_url").message
    )
    auto = problem_at('[git]\nauto_pr = "always"\n', "git.auto_pr")
    assert "each_turn" in auto.message + auto.fix


def test_the_agent_token_is_off_by_default_and_on_gives_sandboxes_the_token() -> None:
    default = parse('[github]\ntoken = "ghp_abc"\n')
    assert default.github is not None and default.github.agent_token is False
    assert "ghp_abc" not in default.sandbox_env("claude-code").values()
    on = parse('[github]\ntoken = "ghp_abc"\nagent_token = true\n')
    assert on.github is not None and on.github.agent_token is True
    assert on.sandbox_env("claude-code")["GITHUB_TOKEN"] == "ghp_abc"


def test_the_section_is_frozen_and_in_the_effective_config() -> None:
    config = parse("")
    with pytest.raises(pydantic.ValidationError):
        config.git.draft = False  # type: ignore[misc]
    assert "[git]" in config.effective_toml()
    assert GitConfig().auto_pr == "each_turn"
