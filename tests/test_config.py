"""bots.yaml validation: every kind of error names the file, the line, the bot and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import load_config, parse_config
from orchestrator.errors import ConfigError

ENV = {"OPENAI_API_KEY": "sk-abcdef123456", "TOKEN_A": "token-aaaaaaaa", "TOKEN_B": "token-bbbbbbbb"}

GOOD = """\
providers:
  openai:
    base_url: http://127.0.0.1:1/v1
    api_key_env: OPENAI_API_KEY
defaults:
  provider: openai
  model: gpt-4o-mini
  params: {max_tokens: 500, temperature: 0.7}
  quota: {requests_per_minute: 60, tokens_per_day: 1000}
bots:
  - name: sage
    token_env: TOKEN_A
    persona: |
      You are Sage.
    params: {temperature: 0.3}
    quota: {tokens_per_day: 200}
  - name: hafez
    token_env: TOKEN_B
    prefix: "?"
    persona: تو حافظ هستی.
    model: other-model
"""


def issues(text: str, env: dict[str, str] = ENV) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "bots.yaml", env)
    return [str(issue) for issue in info.value.issues]


def test_a_good_file_resolves_defaults_key_by_key() -> None:
    config = parse_config(GOOD, "bots.yaml", ENV)
    sage, hafez = config.bots["sage"], config.bots["hafez"]
    assert sage.params.temperature == 0.3 and sage.params.max_tokens == 500
    assert sage.quota.tokens_per_day == 200 and sage.quota.requests_per_minute == 60
    assert hafez.model == "other-model" and hafez.prefix == "?" and sage.prefix == "!"
    assert sage.token.get_secret_value() == "token-aaaaaaaa"
    assert "token-aaaaaaaa" not in repr(sage)
    assert config.warnings == []


def test_the_repository_example_is_valid() -> None:
    env = {"OPENAI_API_KEY": "sk-x" * 4, "DISCORD_TOKEN_SAGE": "token-1" * 3, "DISCORD_TOKEN_HAFEZ": "token-2" * 3}
    config = load_config(Path(__file__).parent.parent / "bots.yaml", env=env)
    assert len(config.bots) >= 2
    assert any(any("\u0600" <= ch <= "\u06ff" for ch in bot.persona) for bot in config.bots.values())


def test_typo_suggests_the_nearest_key_with_line_and_bot() -> None:
    [problem] = issues(GOOD.replace("params: {temperature: 0.3}", "params: {temprature: 0.3}"))
    assert (
        problem
        == "bots.yaml:15: bots[0] (bot 'sage').params.temprature: unknown key 'temprature'; did you mean 'temperature'?"
    )


def test_unknown_top_level_key_suggests_too() -> None:
    [problem] = issues(GOOD.replace("defaults:", "defualts:"))
    assert problem.startswith("bots.yaml:5: defualts: unknown key") and "did you mean 'defaults'" in problem


def test_missing_environment_variable_names_the_variable_and_bot() -> None:
    env = {k: v for k, v in ENV.items() if k != "TOKEN_B"}
    [problem] = issues(GOOD, env)
    assert problem.startswith("bots.yaml:18: bots[1] (bot 'hafez').token_env:")
    assert "TOKEN_B is not set" in problem and "the Discord token of bot 'hafez'" in problem
    assert "''" not in problem


def test_missing_variable_names_the_dotenv_that_was_read_or_where_it_belongs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ENV:
        monkeypatch.delenv(variable, raising=False)
    (tmp_path / "bots.yaml").write_text(GOOD, encoding="utf-8")
    (tmp_path / ".env").write_text("OPENAI_API_KEY=sk-from-dotenv\nTOKEN_A=token-dotenv-a\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "bots.yaml")
    [problem] = [str(issue) for issue in info.value.issues]
    assert f"TOKEN_B is not set (neither in the environment nor in {tmp_path / '.env'})" in problem
    (tmp_path / ".env").unlink()
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "bots.yaml")
    assert all(f"in the environment or in {tmp_path / '.env'}" in str(issue) for issue in info.value.issues)


def test_missing_api_key_variable() -> None:
    env = {k: v for k, v in ENV.items() if k != "OPENAI_API_KEY"}
    [problem] = issues(GOOD, env)
    assert problem.startswith("bots.yaml:4: providers.openai.api_key_env:") and "OPENAI_API_KEY" in problem


def test_duplicate_names_and_tokens_are_errors() -> None:
    text = GOOD.replace("name: hafez", "name: sage")
    assert any("duplicate bot name 'sage'" in p and p.startswith("bots.yaml:17:") for p in issues(text))
    text = GOOD.replace("token_env: TOKEN_B", "token_env: TOKEN_A")
    [problem] = issues(text)
    assert "same Discord token as bot 'sage'" in problem and problem.startswith("bots.yaml:18:")


def test_out_of_range_value_shows_what_was_given() -> None:
    [problem] = issues(GOOD.replace("temperature: 0.3", "temperature: 5"))
    assert problem.startswith("bots.yaml:15: bots[0] (bot 'sage').params.temperature:")
    assert "less than or equal to 2" in problem and "(got 5)" in problem


def test_every_problem_is_reported_at_once() -> None:
    text = GOOD.replace("temperature: 0.3", "temprature: 0.3").replace("TOKEN_B", "TOKEN_MISSING")
    assert len(issues(text)) == 2


def test_unknown_default_provider_is_reported_once_with_a_suggestion() -> None:
    [problem] = issues(GOOD.replace("  provider: openai", "  provider: opena1"))
    assert problem == (
        "bots.yaml:6: defaults.provider: provider 'opena1' is not defined under 'providers:'; did you mean 'openai'?"
    )


def test_unknown_provider_is_an_error_with_suggestion() -> None:
    text = GOOD.replace("model: other-model", "model: other-model\n    provider: opanai")
    [problem] = issues(text)
    assert "provider 'opanai' is not defined" in problem and "did you mean 'openai'" in problem


def test_yaml_syntax_error_has_a_line() -> None:
    [problem] = issues(GOOD.replace("  - name: hafez", "  - name: [hafez"))
    assert problem.startswith("bots.yaml:17: not valid YAML: the '[' opened here is not closed")


@pytest.mark.bad_input
def test_unclosed_brace_is_reported_on_the_line_of_the_brace() -> None:
    [problem] = issues(GOOD.replace("params: {temperature: 0.3}", "params: {temperature: 0.3"))
    assert problem.startswith("bots.yaml:15: not valid YAML: the '{' opened here is not closed properly (line 16: ")


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("old", "new", "line", "where", "key"),
    [
        ("api_key_env: OPENAI_API_KEY", "api_key: sk-pasted-secret-42", 4, "providers.openai.api_key", "api_key_env"),
        ("token_env: TOKEN_A", "token: pasted.discord.secret42", 12, "bots[0] (bot 'sage').token", "token_env"),
    ],
)
def test_a_secret_pasted_without_env_suggests_the_env_key_and_is_never_echoed(
    old: str, new: str, line: int, where: str, key: str
) -> None:
    [problem] = issues(GOOD.replace(old, new))  # the missing token_env is not reported a second time
    assert problem.startswith(
        f"bots.yaml:{line}: {where}: unknown key '{where.rsplit('.', 1)[1]}'; did you mean '{key}'?"
    )
    assert "Do not paste secrets into bots.yaml" in problem and "environment" in problem
    assert "secret42" not in problem and "sk-pasted" not in problem


def test_not_utf8_and_empty_files() -> None:
    [problem] = issues(b"bots:\n  - name: \xff\xfe\n")  # type: ignore[arg-type]
    assert problem == "bots.yaml:2: the file is not valid UTF-8 text; save it as UTF-8"
    [problem] = issues("")
    assert "empty" in problem


def test_alias_bomb_is_refused() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for level in "bcdefgh":
        prev = chr(ord(level) - 1)
        bomb += f"{level}: &{level} [{', '.join([f'*{prev}'] * 10)}]\n"
    [problem] = issues(bomb)
    assert problem == "bots.yaml: the file expands to more than 50000 values (YAML anchors?)"


def test_environment_overrides_discord_urls() -> None:
    env = ENV | {"DISCORD_API_URL": "http://127.0.0.1:9/api/v10", "DISCORD_GATEWAY_URL": "ws://127.0.0.1:9/gw"}
    config = parse_config(GOOD, "bots.yaml", env)
    assert config.discord.api_url == "http://127.0.0.1:9/api/v10"
    assert config.discord.gateway_url == "ws://127.0.0.1:9/gw"


def test_only_the_dotenv_beside_the_file_is_read_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir, elsewhere = tmp_path / "config", tmp_path / "elsewhere"
    config_dir.mkdir()
    elsewhere.mkdir()
    (config_dir / "bots.yaml").write_text(GOOD, encoding="utf-8")
    (config_dir / ".env").write_text("OPENAI_API_KEY=sk-beside\nTOKEN_A=token-beside-a\nTOKEN_B=token-beside-b\n")
    (elsewhere / ".env").write_text("OPENAI_API_KEY=sk-cwd\nTOKEN_A=token-cwd-a\nTOKEN_B=token-cwd-b\n")
    for variable in ENV:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("TOKEN_B", "token-from-environment")
    monkeypatch.chdir(elsewhere)
    config = load_config(config_dir / "bots.yaml")
    assert config.bots["sage"].token.get_secret_value() == "token-beside-a"
    assert config.bots["hafez"].token.get_secret_value() == "token-from-environment"
    assert config.providers["openai"].api_key.get_secret_value() == "sk-beside"
    (config_dir / ".env").unlink()
    with pytest.raises(ConfigError, match="TOKEN_A is not set"):  # the working directory's .env is not a fallback
        load_config(config_dir / "bots.yaml")


def test_commands_that_do_not_connect_need_fewer_secrets() -> None:
    no_tokens = {"OPENAI_API_KEY": ENV["OPENAI_API_KEY"]}
    assert len(issues(GOOD, no_tokens)) == 2
    config = parse_config(GOOD, "bots.yaml", no_tokens, require_tokens=False)
    assert (
        list(config.bots) == ["sage", "hafez"]
        and config.providers["openai"].api_key.get_secret_value() == "sk-abcdef123456"
    )
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is not set"):
        parse_config(GOOD, "bots.yaml", {}, require_tokens=False)
    assert list(parse_config(GOOD, "bots.yaml", {}, require_tokens=False, require_api_keys=False).bots) == [
        "sage",
        "hafez",
    ]
    # the file itself is still checked
    with pytest.raises(ConfigError, match="did you mean 'temperature'"):
        parse_config(GOOD.replace("temperature: 0.3", "temprature: 0.3"), "bots.yaml", {}, require_tokens=False)


def test_dotenv_beside_the_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bots.yaml").write_text(GOOD, encoding="utf-8")
    (tmp_path / ".env").write_text("OPENAI_API_KEY=sk-from-dotenv\nTOKEN_A=token-dotenv-a\nTOKEN_B=token-dotenv-b\n")
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    config = load_config(tmp_path / "bots.yaml")
    assert config.bots["sage"].token.get_secret_value() == "token-dotenv-a"


def test_overlapping_prefixes_warn() -> None:
    config = parse_config(GOOD.replace('prefix: "?"', 'prefix: "!"'), "bots.yaml", ENV)
    [warning] = config.warnings
    assert warning.startswith("bots.yaml:17: bots[1] (bot 'hafez'): bots 'sage' and 'hafez' both answer '!chat'")
    disjoint = GOOD.replace('prefix: "?"', 'prefix: "!"\n    access: {channels: [2]}').replace(
        "quota: {tokens_per_day: 200}", "quota: {tokens_per_day: 200}\n    access: {channels: [1]}"
    )
    assert parse_config(disjoint, "bots.yaml", ENV).warnings == []


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "nope.yaml", env=ENV)


@pytest.mark.parametrize(
    ("written", "enabled", "max_images", "max_bytes", "inline"),
    [
        ("", False, 4, 8_000_000, False),
        ("vision: true", True, 4, 8_000_000, False),
        ("vision: {inline: true}", True, 4, 8_000_000, True),
        ("vision: {max_images: 2, max_bytes: 500 KB}", True, 2, 500_000, False),
        ("vision: {enabled: false, max_bytes: 1.5 MB}", False, 4, 1_500_000, False),
        ("vision: {max_bytes: 123456}", True, 4, 123_456, False),
    ],
)
def test_vision_is_on_with_true_or_a_mapping(
    written: str, enabled: bool, max_images: int, max_bytes: int, inline: bool
) -> None:
    text = GOOD.replace("    model: other-model\n", f"    model: other-model\n    {written}\n")
    vision = parse_config(text, "bots.yaml", ENV).bots["hafez"].vision
    assert (vision.enabled, vision.max_images, vision.max_bytes, vision.inline) == (
        enabled, max_images, max_bytes, inline
    )  # fmt: skip
    assert not parse_config(text, "bots.yaml", ENV).bots["sage"].vision.enabled


def test_defaults_vision_is_merged_and_a_bot_may_turn_it_off() -> None:
    text = GOOD.replace("defaults:\n", "defaults:\n  vision: {inline: true, max_images: 3}\n").replace(
        "    model: other-model\n", "    model: other-model\n    vision: false\n"
    )
    config = parse_config(text, "bots.yaml", ENV)
    sage, hafez = config.bots["sage"].vision, config.bots["hafez"].vision
    assert (sage.enabled, sage.inline, sage.max_images) == (True, True, 3)
    assert (hafez.enabled, hafez.inline, hafez.max_images) == (False, True, 3)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("vision: {max_images: 0}", "bots.yaml:22: bots[1] (bot 'hafez').vision.max_images: Input should be greater"),
        ("vision: {max_bytes: 8 GB}", "bots[1] (bot 'hafez').vision.max_bytes: Value error, must be a number of bytes"),
        ("vision: {max_bytes: 50 MB}", "vision.max_bytes: Input should be less than or equal to 20000000"),
        ("vision: {inlne: true}", "vision.inlne: unknown key 'inlne'; did you mean 'inline'?"),
        ("vision: maybe", "bots[1] (bot 'hafez').vision: Value error, must be true, false or a mapping"),
    ],
)
def test_bad_vision_settings_name_the_bot_the_key_and_the_line(written: str, expected: str) -> None:
    found = issues(GOOD.replace("    model: other-model\n", f"    model: other-model\n    {written}\n"))
    assert any(expected in issue for issue in found), found
