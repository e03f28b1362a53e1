#!/usr/bin/env python3
"""The common approach the benchmarks compare against: one script, one process, one bot.

A discord.py ``commands.Bot`` whose ``!chat`` calls the *synchronous* ``openai.OpenAI`` client
inside the async command handler, so the whole event loop blocks for every model answer and the
bot answers one message at a time. A system prompt, per-user history in a dict (lost on restart),
the answer sent as a reply split naively every 2000 characters. Nothing here is an orchestrator
feature; it is deliberately what a typical single-bot tutorial script looks like.

    python scripts/baseline_bot.py --token TOKEN --prefix '!' --persona 'You are Sage.' \\
        --discord-api-url http://127.0.0.1:PORT/api/v10 --discord-gateway-url ws://127.0.0.1:PORT/gateway \\
        --openai-base-url http://127.0.0.1:PORT2/v1

Every option also reads an environment variable (DISCORD_TOKEN, DISCORD_API_URL,
DISCORD_GATEWAY_URL, OPENAI_BASE_URL, OPENAI_API_KEY, ...). Prints ``READY <name> <monotonic>``
on stdout when discord.py reports the bot ready (the benchmark measures start-up with it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import discord
import openai
import yarl
from discord.ext import commands


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default=env("BOT_NAME", "bot"))
    parser.add_argument("--token", default=env("DISCORD_TOKEN"))
    parser.add_argument("--prefix", default=env("BOT_PREFIX", "!"))
    parser.add_argument("--persona", default=env("BOT_PERSONA", "You are a helpful assistant."))
    parser.add_argument("--discord-api-url", default=env("DISCORD_API_URL"))
    parser.add_argument("--discord-gateway-url", default=env("DISCORD_GATEWAY_URL"))
    parser.add_argument("--openai-base-url", default=env("OPENAI_BASE_URL"))
    parser.add_argument("--openai-api-key", default=env("OPENAI_API_KEY"))
    parser.add_argument("--model", default=env("OPENAI_MODEL", "gpt-4o-mini"))
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--history", type=int, default=10, help="exchanges kept per user")
    parser.add_argument(
        "--seed-history", type=int, default=0, help="start each user's history with this many made-up exchanges"
    )
    parser.add_argument("--guild-ready-timeout", type=float, default=0.05)
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("a Discord token is needed: --token or DISCORD_TOKEN")
    return args


def seed_history(exchanges: int) -> list[dict[str, str]]:
    """The same made-up earlier conversation the benchmark writes into the orchestrator's memory."""
    turns: list[dict[str, str]] = []
    for i in range(exchanges):
        turns.append({"role": "user", "content": f"earlier question {i}: what do you think about topic {i}?"})
        turns.append({"role": "assistant", "content": f"earlier answer {i}: topic {i} is interesting because of {i}."})
    return turns


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.discord_api_url:
        discord.http.Route.BASE = args.discord_api_url.rstrip("/")
    if args.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(args.discord_gateway_url)

    client = openai.OpenAI(base_url=args.openai_base_url, api_key=args.openai_api_key)
    intents = discord.Intents.default()
    intents.message_content = True
    bot = commands.Bot(
        command_prefix=args.prefix, intents=intents, help_command=None, guild_ready_timeout=args.guild_ready_timeout
    )
    history: dict[int, list[dict[str, str]]] = {}

    @bot.event
    async def on_ready() -> None:
        print(f"READY {args.name} {time.monotonic():.6f}", flush=True)

    @bot.command()
    async def chat(ctx: commands.Context, *, text: str) -> None:
        async with ctx.typing():
            turns = history.setdefault(ctx.author.id, seed_history(args.seed_history))
            messages = [{"role": "system", "content": args.persona}, *turns, {"role": "user", "content": text}]
            try:
                # The synchronous client: the event loop (heartbeats, every other user) waits here.
                response = client.chat.completions.create(
                    model=args.model, messages=messages, max_tokens=args.max_tokens, temperature=0.7
                )
            except openai.OpenAIError as exc:
                await ctx.reply(f"Error: {exc}")
                return
            answer = response.choices[0].message.content or "(empty answer)"
        turns += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
        del turns[: -2 * args.history]
        for start in range(0, len(answer), 2000):
            if start == 0:
                await ctx.reply(answer[:2000])
            else:
                await ctx.send(answer[start : start + 2000])

    bot.run(args.token, log_level=40)  # logging.ERROR: keep stderr quiet


if __name__ == "__main__":
    sys.exit(main())
