"""``python -m orchestrator.sandbox.discord_server``: a sandbox in its own process, until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal

from .control import DiscordSandbox


async def _serve(host: str, port: int, bots: list[tuple[str, str]], heartbeat_interval_ms: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with DiscordSandbox(host=host, port=port, heartbeat_interval_ms=heartbeat_interval_ms) as sandbox:
        for token, name in bots:
            sandbox.add_bot(token, name)
        print(f"api_url={sandbox.api_url}", flush=True)
        print(f"gateway_url={sandbox.gateway_url}", flush=True)
        ids = f"guild_id={sandbox.guild_id} channel_id={sandbox.channel_id} user_id={sandbox.default_user_id}"
        print(ids, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Run a sandbox until SIGINT/SIGTERM, printing its URLs (``key=value`` lines)."""
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.sandbox.discord_server", description="Run a loopback Discord sandbox."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--bot", action="append", default=[], metavar="TOKEN=NAME", help="register a bot (repeatable)")
    parser.add_argument("--heartbeat-interval-ms", type=int, default=41250)
    args = parser.parse_args(argv)
    bots: list[tuple[str, str]] = []
    for spec in args.bot:
        token, sep, name = spec.partition("=")
        if not (sep and token and name):
            parser.error(f"--bot expects TOKEN=NAME, got {spec!r}")
        bots.append((token, name))
    asyncio.run(_serve(args.host, args.port, bots, args.heartbeat_interval_ms))
