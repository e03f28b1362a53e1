"""What `orchestrator run` logs about itself: one start-up line, and nothing about files it ignores."""

from __future__ import annotations

import logging

import anyio
import pytest
import watchfiles

from .conftest import World


async def test_start_up_line_names_the_bots_and_the_health_address(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.write([{"name": "sage"}, {"name": "hafez", "prefix": "?"}])
    with caplog.at_level(logging.INFO, logger="orchestrator.app"):
        async with world.running(health_port=0) as app:
            port = app.health_port_bound
    assert f"starting 2 bots: sage, hafez; health on 127.0.0.1:{port}" in caplog.messages
    caplog.clear()
    world.write([{"name": "sage"}])
    with caplog.at_level(logging.INFO, logger="orchestrator.app"):
        async with world.running():
            pass
    assert "starting 1 bot: sage; no health port" in caplog.messages


async def test_the_watcher_ignores_other_files_in_the_config_directory_and_watchfiles_is_quiet(
    world: World, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.write([{"name": "sage"}])
    for name, value in world.env().items():  # reloads read the environment, as in production
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG)
    async with world.running(watch=True, watch_debounce_ms=50) as app:
        supervisor = app.supervisor
        assert supervisor is not None
        log_file = world.tmp_path / "orchestrator.log"  # an operator's log file beside bots.yaml
        for line in range(5):
            with log_file.open("a") as handle:
                handle.write(f"line {line}\n")
        world.path.write_text(world.path.read_text().replace("You are Sage.", "You are Sage, edited."))
        with anyio.fail_after(10):
            await supervisor.wait_until(lambda s: s.children["sage"].spec.persona == "You are Sage, edited.")
    assert [r.getMessage() for r in caplog.records if "changed on disk" in r.getMessage()] == [
        "bots.yaml changed on disk: reloading"
    ]
    assert [r.getMessage() for r in caplog.records if r.name.startswith("watchfiles")] == []


async def test_stopping_does_not_wait_for_the_watchers_timeout(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The watcher thread returns on its own only after ``rust_timeout``: make that a minute, and a
    stop must still end the watcher at once (it used to wait the whole timeout, 5 s by default)."""
    real_awatch = watchfiles.awatch
    monkeypatch.setattr(
        watchfiles, "awatch", lambda *paths, **options: real_awatch(*paths, **options, rust_timeout=60_000)
    )
    world.write([{"name": "sage"}])
    with anyio.fail_after(20):  # fails after the minute, when the thread lets the cancellation through
        async with world.running(watch=True):
            pass
