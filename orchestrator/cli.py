"""Command line: ``orchestrator run | check | models | usage | status | demo | invite | memory``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sqlite3
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import anyio

from .config import Config, PostgresURL, dotenv_in, load_config
from .errors import ConfigError, ProviderError, format_duration
from .llm.pool import LLMPool
from .ops.logs import redactor, setup_logging

if TYPE_CHECKING:
    from .memory import Store

_T = TypeVar("_T")

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "bots.yaml"


def _load(
    path: str, *, require_tokens: bool = True, require_api_keys: bool = True, require_redis: bool = False
) -> Config:
    """Load ``path`` checking the secrets the command needs; on error print every problem and exit 2."""
    try:
        return load_config(
            path, require_tokens=require_tokens, require_api_keys=require_api_keys, require_redis=require_redis
        )
    except ConfigError as exc:
        print(redactor.redact(str(exc)), file=sys.stderr)
        raise SystemExit(2) from None


def cmd_run(args: argparse.Namespace) -> int:
    from .app import App, config_secrets
    from .ops.health import HealthPortError

    config = _load(args.config, require_redis=True)
    redactor.update(config_secrets(config))
    for warning in config.warnings:
        log.warning("%s", warning)
    app = App(config, watch=not args.no_watch, health_port=args.health_port, health_host=args.health_host)
    status = 0
    try:
        anyio.run(app.run, backend="asyncio")
    except* HealthPortError as group:
        error = group.exceptions[0]  # a nested group only if a task group re-raised it
        log.error("%s", error.strerror if isinstance(error, HealthPortError) else error)
        status = 1
    except* KeyboardInterrupt:  # Ctrl-C before the signal handler is installed, or after it is gone
        log.warning("interrupted: stopping now")
        status = 128 + signal.SIGINT
    return status or app.exit_code


def cmd_check(args: argparse.Namespace) -> int:
    from .persona import slash

    directory = Path(args.config).absolute().parent  # as load_config: a symlink's own directory
    dotenv = dotenv_in(directory)
    if dotenv is not None:
        print(f"read {dotenv} (the environment wins over it)")
    else:
        print(f"no .env in {directory}: secrets come from the environment only")
    config = _load(args.config)
    for warning in config.warnings:
        print(f"warning: {warning}")
    names = ", ".join(f"{bot.name} ({bot.prefix}chat, {bot.provider}/{bot.model})" for bot in config.bots.values())
    print(f"{args.config}: OK, {len(config.bots)} bot(s): {names}")
    for bot in config.bots.values():
        print(f"  {bot.name}: {slash.describe(bot)}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    config = _load(args.config, require_tokens=False)  # only the providers are asked

    async def main() -> int:
        status = 0
        async with LLMPool(config.providers) as pool:
            for name in config.providers:
                if args.provider and name != args.provider:
                    continue
                try:
                    models = await pool.list_models(name)
                except ProviderError as exc:
                    print(f"{name}: cannot list models: {exc.detail}", file=sys.stderr)
                    status = 1
                    continue
                print(f"{name} ({config.providers[name].base_url}):")
                for model in models:
                    print(f"  {model}")
        return status

    return anyio.run(main, backend="asyncio")


def cmd_usage(args: argparse.Namespace) -> int:
    """Tokens, spend and images per bot (and its top users) per UTC day, from the store, next to the daily budgets."""
    import time

    from .llm.quota import QuotaBook, utc_day
    from .llm.spend import format_usd

    config = _load(args.config, require_tokens=False, require_api_keys=False)  # reads the database only
    if isinstance(config.database, Path) and not config.database.exists():
        print(f"no usage recorded yet ({config.database} does not exist)")
        return 0
    now = time.time()
    days = [utc_day(now - 86400 * back) for back in range(args.days)]

    Totals = dict[tuple[str, str], int]

    async def read(store: Store) -> dict[str, tuple[Totals, dict[tuple[str, str], float], Totals]]:
        # In a worker thread, as QuotaBook reads them: PostgreSQL's are read on the event loop through it.
        def read_days() -> dict[str, tuple[Totals, dict[tuple[str, str], float], Totals]]:
            return {
                day: (store.load_daily_usage(day), store.load_daily_spend(day), store.load_daily_images(day))
                for day in days
            }

        return await anyio.to_thread.run_sync(read_days)

    recorded = _with_store(config, read)
    everyone = QuotaBook.ALL_USERS
    for day in days:
        usage, spend, images = recorded[day]
        print(f"usage on {day} (UTC):")
        for bot in config.bots.values():
            used = usage.get((bot.name, everyone), 0)
            budget = bot.quota.tokens_per_day
            line = f"  {bot.name:16} {used:>10} tokens"
            if budget:
                line += f" ({100 * used / budget:.1f}% of {budget})"
            if bot.price is not None or (bot.name, everyone) in spend:
                usd, cap = spend.get((bot.name, everyone), 0.0), bot.quota.usd_per_day
                line += f"  {format_usd(usd)}" + (f" ({100 * usd / cap:.1f}% of {format_usd(cap)})" if cap else "")
            if bot.image_model is not None or (bot.name, everyone) in images:
                drawn, most = images.get((bot.name, everyone), 0), bot.quota.images_per_day
                line += f"  {drawn} image{'s' if drawn != 1 else ''}" + (f" (of {most})" if most is not None else "")
            print(line)
            users = sorted(
                ((tokens, user) for (name, user), tokens in usage.items() if name == bot.name and user != everyone),
                reverse=True,
            )
            for tokens, user in users[: args.top]:
                usd_text = f"  {format_usd(spend[(bot.name, user)])}" if (bot.name, user) in spend else ""
                drawn = images.get((bot.name, user), 0)
                images_text = f"  {drawn} image{'s' if drawn != 1 else ''}" if drawn else ""
                print(f"    user {user:>20} {tokens:>10}{usd_text}{images_text}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_until_interrupted

    try:
        return anyio.run(
            run_until_interrupted, args.config, args.message, args.provider_url, args.attach or (), backend="asyncio"
        )
    except KeyboardInterrupt:  # Ctrl-C while the demo's own handler is not installed yet, or no more
        return 130


def health_url(args: argparse.Namespace) -> str:
    if args.url:
        url: str = args.url.rstrip("/")
        return url if url.endswith("/healthz") else url + "/healthz"
    return f"http://127.0.0.1:{args.health_port}/healthz"


def fetch_health(url: str, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    """GET /healthz; a 503 (stopping) still carries the JSON report."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.load(exc)


def format_status(report: dict[str, Any]) -> list[str]:
    """One line per bot: state, uptime, restarts, chats/answers, usage and the last error."""
    header = ("BOT", "STATE", "UPTIME", "RESTARTS", "CHATS", "ANSWERED", "REQ/MIN", "TOKENS TODAY", "LAST ERROR")
    rows = [header]
    for name, bot in sorted(report.get("bots", {}).items()):
        usage = bot.get("usage", {})
        error = bot.get("last_error") or ""
        rows.append(
            (
                name,
                bot["state"],
                format_duration(bot["uptime_s"]) if bot["state"] == "running" else "-",
                str(bot["restarts"]),
                str(bot["chats"]),
                str(bot["answered"]),
                str(usage.get("requests_last_minute", "-")),
                str(usage.get("tokens_today", "-")),
                error if len(error) <= 100 else error[:99] + "…",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return [
        "  ".join([cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)] + [row[-1]]).rstrip()
        for row in rows
    ]


def cmd_status(args: argparse.Namespace) -> int:
    """The running orchestrator's bots (from /healthz), and the fleet (from Redis) with ``--fleet`` or
    when /healthz has a fleet section."""
    code, report = 200, dict[str, Any]()
    if args.health_port is not None or args.url:
        url = health_url(args)
        try:
            code, report = fetch_health(url)
        except (OSError, ValueError) as exc:
            print(f"cannot read {url}: {exc}", file=sys.stderr)
            return 2
        node = f" (node {report['node']})" if report.get("node") else ""
        print(f"{url}: {report.get('status', code)}{node}")
        if report.get("reason"):
            print(f"reason: {report['reason']}")
        for line in format_status(report):
            print(line)
        if report.get("last_reload_error"):
            print(f"the last edit of bots.yaml was rejected:\n{report['last_reload_error']}")
    elif not args.fleet:
        print(
            "say where to look: --health-port PORT or --url URL (a running orchestrator), and/or --fleet",
            file=sys.stderr,
        )
        return 2
    if (args.fleet or "fleet" in report) and not _print_fleet(args.config):
        return 2
    failed = [name for name, bot in report.get("bots", {}).items() if bot.get("state") == "failed"]
    return 0 if code == 200 and not failed else 1


def _print_fleet(path: str) -> bool:
    """Print the fleet of bots.yaml at ``path`` as Redis sees it; False (and why, on stderr) if it cannot."""
    from .fleet.connection import REDIS_ERRORS, shown
    from .fleet.status import format_fleet, read_fleet

    config = _load(path, require_tokens=False, require_api_keys=False, require_redis=True)
    fleet = config.fleet
    if fleet is None:
        print(f"{path} has no 'fleet:' section: its bots run in one process, not as a fleet", file=sys.stderr)
        return False
    redactor.update([urlsplit(fleet.redis_url.get_secret_value()).password or ""])
    try:
        view = anyio.run(read_fleet, fleet, list(config.bots), backend="asyncio")
    except REDIS_ERRORS as exc:
        where = shown(fleet.redis_url.get_secret_value())
        print(redactor.redact(f"cannot read the fleet from Redis at {where}: {exc}"), file=sys.stderr)
        return False
    for line in format_fleet(fleet, view):
        print(line)
    return True


def cmd_invite(args: argparse.Namespace) -> int:
    """Each bot's invite URL. The application id is read from its token, or with ``--online`` asked
    of Discord (which also tries the token). Needs only the Discord tokens."""
    import discord

    from .discord_io.client import configure_discord
    from .discord_io.invite import (
        PERMISSIONS,
        application_id_from_token,
        fetch_application_id,
        invite_url,
        required_permissions,
    )

    config = _load(args.config, require_api_keys=False)
    redactor.update([bot.token.get_secret_value() for bot in config.bots.values()])

    async def ask_discord() -> dict[str, int | str]:
        """Each bot's application id, or why Discord could not tell."""
        configure_discord(config.discord)
        answers: dict[str, int | str] = {}
        for bot in config.bots.values():
            try:
                answers[bot.name] = await fetch_application_id(bot.token.get_secret_value())
            except discord.LoginFailure:
                answers[bot.name] = "Discord refused the token (401); put the bot's current token in its token_env"
            except (discord.HTTPException, OSError) as exc:
                answers[bot.name] = f"cannot ask {config.discord.api_url}: {exc}"
        return answers

    online = anyio.run(ask_discord, backend="asyncio") if args.online else {}
    permissions = required_permissions()
    print(f"permissions {permissions.value}: {', '.join(label for label, _ in PERMISSIONS.values())}")
    status = 0
    for bot in config.bots.values():
        from_token = application_id_from_token(bot.token.get_secret_value())
        answer = online.get(bot.name, from_token)
        if isinstance(answer, str):
            print(redactor.redact(f"bot {bot.name!r}: {answer}"), file=sys.stderr)
            status = 1
        elif answer is None:
            print(
                f"bot {bot.name!r}: its token does not have the shape of a Discord bot token, so it does not tell the "
                "application id; check the token, or run `orchestrator invite --online` to ask Discord",
                file=sys.stderr,
            )
            status = 1
        else:
            if from_token is not None and from_token != answer:
                print(
                    f"bot {bot.name!r}: Discord says its application is {answer}, not {from_token} as its token "
                    "suggests; using Discord's",
                    file=sys.stderr,
                )
            print(f"{bot.name}: {invite_url(answer, permissions)}")
    return status


def _add_invite(add_command: Callable[..., argparse.ArgumentParser]) -> None:
    invite = add_command("invite", help="print each bot's invite URL with the permissions it needs")
    invite.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    invite.add_argument(
        "--online", action="store_true", help="ask Discord for each application id (also checks the tokens)"
    )
    invite.set_defaults(func=cmd_invite)


def _with_store(config: Config, work: Callable[[Store], Awaitable[_T]]) -> _T:
    """``work`` done on the database of bots.yaml, which must exist and answer (these commands never
    create one); otherwise say why and exit 1."""
    from .memory import NoDatabase, StoreUnavailable, open_store

    if isinstance(config.database, PostgresURL):
        redactor.update(config.database.secrets())

    async def main() -> _T:
        async with open_store(config.database, create=False) as store:
            return await work(store)

    try:
        return anyio.run(main, backend="asyncio")
    except (NoDatabase, StoreUnavailable) as exc:
        print(redactor.redact(f"{exc} (the database of {config.path})"), file=sys.stderr)
        raise SystemExit(1) from None


def cmd_memory_backup(args: argparse.Namespace) -> int:
    from .memory.postgres import backup_hint

    target = Path(args.file)
    config = _load(args.config, require_tokens=False, require_api_keys=False)
    database = config.database
    if isinstance(database, PostgresURL):
        print(backup_hint(f"PostgreSQL at {database.place}"), file=sys.stderr)
        return 2
    if target.resolve() == database.resolve():
        print(f"{target} is the database itself; name another file", file=sys.stderr)
        return 2
    if target.exists() and not args.force:
        print(f"{target} exists; name a new file, or add --force to replace it", file=sys.stderr)
        return 1
    try:
        _with_store(config, lambda store: store.backup(target))
    except (OSError, sqlite3.Error) as exc:
        print(f"cannot write the backup to {target}: {exc}", file=sys.stderr)
        return 1
    print(f"backed up {database} to {target} ({target.stat().st_size} bytes)")
    return 0


def cmd_memory_forget(args: argparse.Namespace) -> int:
    config = _load(args.config, require_tokens=False, require_api_keys=False)
    forgotten = _with_store(config, lambda store: store.forget_user(args.user, args.bot))
    scope = f"bot {args.bot!r}" if args.bot else "every bot"
    print(f"forgot user {args.user} ({scope}): {forgotten.turns} turn(s), {forgotten.usage_days} daily usage record(s)")
    if args.bot and args.bot not in config.bots and not (forgotten.turns or forgotten.usage_days):
        print(f"note: there is no bot {args.bot!r} in {args.config}; check the name", file=sys.stderr)
    print(
        "note: a running `orchestrator run` still has the user's recent turns in memory until it restarts",
        file=sys.stderr,
    )
    return 0


def cmd_memory_export(args: argparse.Namespace) -> int:
    """Everything stored under one user id, as JSON on stdout (ids as strings: they exceed JSON's safe integers)."""
    from datetime import datetime

    config = _load(args.config, require_tokens=False, require_api_keys=False)
    data = _with_store(config, lambda store: store.export_user(args.user))
    document = {
        "user": str(args.user),
        "turns": [
            {
                "bot": turn.bot,
                "channel": str(turn.channel),
                "role": turn.role,
                "content": turn.content,
                "time": datetime.fromtimestamp(turn.created, UTC).isoformat(timespec="seconds"),
            }
            for turn in data.turns
        ],
        "usage": [
            {"day": u.day, "bot": u.bot, "tokens": u.tokens, "usd": u.usd, "images": u.images} for u in data.usage
        ],
    }
    json.dump(document, sys.stdout, ensure_ascii=False, indent=2)
    print()
    return 0


def _discord_id(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"must be a Discord user id (digits, e.g. 80351110224678912), not {text!r}")
    return int(text)


def _add_memory(add_command: Callable[..., argparse.ArgumentParser], global_options: argparse.ArgumentParser) -> None:
    memory = add_command("memory", help="back up the database; export or forget one user's data")
    commands = memory.add_subparsers(dest="memory_command", required=True)
    backup = commands.add_parser(
        "backup", parents=[global_options], help="a consistent copy of the database, safe while `run` runs"
    )
    backup.add_argument("file", help="where to write the copy")
    backup.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    backup.add_argument("--force", action="store_true", help="replace FILE if it exists")
    backup.set_defaults(func=cmd_memory_backup)
    forget = commands.add_parser(
        "forget", parents=[global_options], help="delete one user's turns and usage; prints the counts"
    )
    forget.add_argument("--user", type=_discord_id, required=True, metavar="ID", help="the user's Discord id")
    forget.add_argument("--bot", metavar="NAME", help="only their data with this bot")
    forget.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    forget.set_defaults(func=cmd_memory_forget)
    export = commands.add_parser(
        "export", parents=[global_options], help="one user's turns and usage as JSON on stdout"
    )
    export.add_argument("--user", type=_discord_id, required=True, metavar="ID", help="the user's Discord id")
    export.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    export.set_defaults(func=cmd_memory_export)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _add_global_options(parser: argparse.ArgumentParser, **defaults: str) -> None:
    """``--log-level`` and ``--log-format``: with ``defaults`` on the main parser; without (suppressed)
    on each command's, so a value given before the command is not reset by the command's default."""
    parser.add_argument(
        "--log-level",
        default=defaults.get("log_level", argparse.SUPPRESS),
        help="DEBUG, INFO, WARNING or ERROR (default INFO)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=defaults.get("log_format", argparse.SUPPRESS),
        help="text or json, one object per line (default text)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator", description="Run many LLM persona bots on Discord.")
    _add_global_options(parser, log_level="INFO", log_format="text")
    global_options = argparse.ArgumentParser(add_help=False)
    _add_global_options(global_options)
    sub = parser.add_subparsers(dest="command", required=True)

    def add_command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[global_options], help=help)

    run = add_command("run", help="run every bot of bots.yaml until SIGINT/SIGTERM")
    run.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    run.add_argument("--no-watch", action="store_true", help="do not reload bots.yaml when it changes")
    run.add_argument(
        "--health-port",
        type=int,
        metavar="PORT",
        help="serve /healthz and /metrics on this port (default: health_port of bots.yaml; off when neither)",
    )
    run.add_argument("--health-host", default="127.0.0.1", help="address for --health-port (default 127.0.0.1)")
    run.set_defaults(func=cmd_run)

    check = add_command("check", help="validate bots.yaml and the environment without connecting")
    check.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    check.set_defaults(func=cmd_check)

    models = add_command("models", help="list each provider's models")
    models.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    models.add_argument("--provider", help="only this provider")
    models.set_defaults(func=cmd_models)

    usage = add_command("usage", help="tokens, spend and images per bot and its top users, per UTC day")
    usage.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    usage.add_argument("--top", type=int, default=5, help="how many users to list per bot (default 5)")
    usage.add_argument(
        "--days", type=_positive_int, default=1, help="this many UTC days, today first (default 1: today)"
    )
    usage.set_defaults(func=cmd_usage)

    status = add_command(
        "status", help="each bot's state, uptime, restarts and usage, from a running orchestrator; the fleet"
    )
    where = status.add_mutually_exclusive_group()
    where.add_argument("--health-port", type=int, metavar="PORT", help="the --health-port of the running orchestrator")
    where.add_argument("--url", help="its /healthz URL, e.g. http://127.0.0.1:8080/healthz")
    status.add_argument(
        "--fleet",
        action="store_true",
        help="also the fleet, read from the Redis of bots.yaml: nodes, and each bot's holder and lease age "
        "(shown without it too when /healthz has a fleet section)",
    )
    status.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help="bots.yaml, read for --fleet")
    status.set_defaults(func=cmd_status)

    demo = add_command("demo", help="run the bots against the bundled loopback Discord and OpenAI servers")
    demo.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    demo.add_argument("-m", "--message", action="append", help="post this message (repeatable); default: stdin")
    demo.add_argument("--provider-url", help="use this OpenAI-compatible server for the model (key: DEMO_API_KEY)")
    demo.add_argument(
        "--attach", action="append", metavar="FILE", help="send this file with the first message (repeatable)"
    )
    demo.set_defaults(func=cmd_demo)

    _add_invite(add_command)
    _add_memory(add_command, global_options)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    raise SystemExit(args.func(args))
