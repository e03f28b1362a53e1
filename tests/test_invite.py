"""`orchestrator invite`: each bot's OAuth2 URL, with the permissions the code uses and nothing more."""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import discord
import pytest

from orchestrator.discord_io.invite import application_id_from_token, invite_url, required_permissions

from .conftest import World, token_for
from .inprocess import run_cli

APP_ID = 1234567890123456789


def portal_token(user_id: int) -> str:
    """A token shaped like the developer portal's: base64 user id, timestamp, HMAC."""
    return (
        base64.b64encode(str(user_id).encode()).decode().rstrip("=")
        + ".GabcDe.0123456789abcdefghijklmnopqrstuvwxyz_-AB"
    )


def test_permissions_are_exactly_what_the_bot_uses() -> None:
    expected = discord.Permissions(
        view_channel=True,
        send_messages=True,
        send_messages_in_threads=True,
        read_message_history=True,
        attach_files=True,
    )
    assert required_permissions() == expected
    assert not required_permissions().embed_links and not required_permissions().administrator


def test_the_url_carries_client_id_permissions_and_both_scopes() -> None:
    url = invite_url(APP_ID)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "discord.com", "/oauth2/authorize")
    assert query["client_id"] == [str(APP_ID)]
    assert discord.Permissions(int(query["permissions"][0])) == required_permissions()
    assert "scope=bot%20applications.commands" in url


@pytest.mark.parametrize("user_id", [APP_ID, 80351110224678912, 1])
def test_the_application_id_is_read_from_a_portal_token(user_id: int) -> None:
    assert application_id_from_token(portal_token(user_id)) == user_id


@pytest.mark.bad_input
@pytest.mark.parametrize("token", ["", "discord-token-sage-abcdef0123456789", "!!!.x.y", "aGVsbG8.x.y", "Zm9v\n.x"])
def test_a_token_of_another_shape_tells_no_id(token: str) -> None:
    assert application_id_from_token(token) is None


def write_config(tmp_path: Path, bots: dict[str, str]) -> Path:
    lines = ["providers:", "  openai: {base_url: http://127.0.0.1:9/v1, api_key_env: OPENAI_API_KEY}", "bots:"]
    for name in bots:
        lines += [f"  - name: {name}", f"    token_env: TOKEN_{name.upper()}", "    persona: You are a test."]
    path = tmp_path / "bots.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_invite_offline_needs_only_the_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, {"sage": "", "hafez": ""})
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # no provider key: invite does not call providers
    monkeypatch.setenv("TOKEN_SAGE", portal_token(APP_ID))
    monkeypatch.setenv("TOKEN_HAFEZ", portal_token(APP_ID + 1))
    assert run_cli("invite", str(path)) == 0
    out = capsys.readouterr().out
    assert f"sage: {invite_url(APP_ID)}" in out and f"hafez: {invite_url(APP_ID + 1)}" in out
    assert f"permissions {required_permissions().value}: View Channels, Send Messages" in out


@pytest.mark.bad_input
def test_invite_offline_explains_a_token_it_cannot_read_and_still_lists_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, {"sage": "", "hafez": ""})
    monkeypatch.setenv("TOKEN_SAGE", "not-a-discord-token-secret")
    monkeypatch.setenv("TOKEN_HAFEZ", portal_token(APP_ID))
    assert run_cli("invite", str(path)) == 1
    out, err = capsys.readouterr()
    assert "bot 'sage': its token does not have the shape of a Discord bot token" in err and "--online" in err
    assert f"hafez: {invite_url(APP_ID)}" in out
    assert "not-a-discord-token-secret" not in out + err


@pytest.mark.bad_input
def test_invite_without_a_token_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, {"sage": ""})
    monkeypatch.delenv("TOKEN_SAGE", raising=False)
    assert run_cli("invite", str(path)) == 2
    assert "TOKEN_SAGE is not set" in capsys.readouterr().err


async def test_invite_online_asks_discord_and_reports_a_refused_token(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world.write([{"name": "sage"}, {"name": "hafez", "token_env": "TOKEN_REVOKED"}])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("DISCORD_API_URL", world.discord.api_url)
    monkeypatch.setenv("TOKEN_SAGE", token_for("sage"))  # the sandbox's tokens carry no id: only Discord can tell
    monkeypatch.setenv("TOKEN_REVOKED", "revoked-token-0123456789")
    code = await anyio.to_thread.run_sync(lambda: run_cli("invite", str(world.path), "--online"))
    out, err = capsys.readouterr()
    assert code == 1
    assert f"sage: {invite_url(world.bot_ids['sage'])}" in out
    assert "bot 'hafez': Discord refused the token (401)" in err
    assert "revoked-token-0123456789" not in out + err and token_for("sage") not in out + err
