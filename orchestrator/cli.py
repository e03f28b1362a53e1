"""Command line: ``orchestrator run | check | models | usage | status | demo``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

import anyio

from .config import Config, load_config
from .errors import ConfigError, ProviderError, format_duration
from .llm.pool import LLMPool
from .observability import redactor, setup_logging

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "bots.yaml"


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(redactor.redact(str(exc)), file=sys.stderr)
        raise SystemExit(2) from None


def cmd_run(args: argparse.Namespace) -> int:
    from .app import App, config_secrets
    from .health import HealthPortError

    config = _load(args.config)
    redactor.update(config_secrets(config))
    for warning in config.warnings:
        log.warning("%s", warning)
    app = App(config, watch=not args.no_watch, health_port=args.health_port, health_host=args.health_host)
    status = 0
    try:
        anyio.run(app.run, backend="asyncio")
    except* HealthPortError as group:
        log.error("%s", group.exceptions[0].strerror)
        status = 1
    return status


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    for warning in config.warnings:
        print(f"warning: {warning}")
    names = ", ".join(f"{bot.name} ({bot.prefix}chat, {bot.provider}/{bot.model})" for bot in config.bots.values())
    print(f"{args.config}: OK, {len(config.bots)} bot(s): {names}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    config = _load(args.config)

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
    """Today's token usage per bot (and its top users) from the store, next to the daily budgets."""
    from .llm.quota import QuotaBook, utc_day
    from .memory import SQLiteStore

    config = _load(args.config)
    if not config.database.exists():
        print(f"no usage recorded yet ({config.database} does not exist)")
        return 0
    store = SQLiteStore(config.database)
    try:
        usage = store.load_daily_usage(utc_day())
    finally:
        store.close()
    print(f"token usage on {utc_day()} (UTC):")
    for bot in config.bots.values():
        used = usage.get((bot.name, QuotaBook.ALL_USERS), 0)
        budget = bot.quota.tokens_per_day
        share = f" ({100 * used / budget:.1f}% of {budget})" if budget else ""
        print(f"  {bot.name:16} {used:>10} tokens{share}")
        users = sorted(
            ((tokens, user) for (name, user), tokens in usage.items() if name == bot.name and user != QuotaBook.ALL_USERS),
            reverse=True,
        )
        for tokens, user in users[: args.top]:
            print(f"    user {user:>20} {tokens:>10}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_until_interrupted

    try:
        return anyio.run(run_until_interrupted, args.config, args.message, args.provider_url, backend="asyncio")
    except KeyboardInterrupt:  # Ctrl-C while the demo's own handler is not installed yet, or no more
        return 130


def health_url(args: argparse.Namespace) -> str:
    if args.url:
        url = args.url.rstrip("/")
        return url if url.endswith("/healthz") else url + "/healthz"
    return f"http://127.0.0.1:{args.health_port}/healthz"


def fetch_health(url: str, timeout: float = 5.0) -> tuple[int, dict]:
    """GET /healthz; a 503 (stopping) still carries the JSON report."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - an operator-given URL
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.load(exc)


def format_status(report: dict) -> list[str]:
    """One line per bot: state, uptime, restarts, chats/answers, usage and the last error."""
    header = ("BOT", "STATE", "UPTIME", "RESTARTS", "CHATS", "ANSWERED", "REQ/MIN", "TOKENS TODAY", "LAST ERROR")
    rows = [header]
    for name, bot in sorted(report.get("bots", {}).items()):
        usage = bot.get("usage", {})
        error = bot.get("last_error") or ""
        rows.append((
            name,
            bot["state"],
            format_duration(bot["uptime_s"]) if bot["state"] == "running" else "-",
            str(bot["restarts"]),
            str(bot["chats"]),
            str(bot["answered"]),
            str(usage.get("requests_last_minute", "-")),
            str(usage.get("tokens_today", "-")),
            error if len(error) <= 100 else error[:99] + "…",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return [
        "  ".join([cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]).rstrip() for row in rows
    ]


def cmd_status(args: argparse.Namespace) -> int:
    url = health_url(args)
    try:
        code, report = fetch_health(url)
    except (OSError, ValueError) as exc:
        print(f"cannot read {url}: {exc}", file=sys.stderr)
        return 2
    print(f"{url}: {report.get('status', code)}")
    for line in format_status(report):
        print(line)
    if report.get("last_reload_error"):
        print(f"the last edit of bots.yaml was rejected:\n{report['last_reload_error']}")
    failed = [name for name, bot in report.get("bots", {}).items() if bot.get("state") == "failed"]
    return 0 if code == 200 and not failed else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator", description="Run many LLM persona bots on Discord.")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run every bot of bots.yaml until SIGINT/SIGTERM")
    run.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    run.add_argument("--no-watch", action="store_true", help="do not reload bots.yaml when it changes")
    run.add_argument(
        "--health-port", type=int, metavar="PORT",
        help="serve /healthz and /metrics on this port (default: health_port of bots.yaml; off when neither)",
    )
    run.add_argument("--health-host", default="127.0.0.1", help="address for --health-port (default 127.0.0.1)")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate bots.yaml and the environment without connecting")
    check.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    check.set_defaults(func=cmd_check)

    models = sub.add_parser("models", help="list each provider's models")
    models.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    models.add_argument("--provider", help="only this provider")
    models.set_defaults(func=cmd_models)

    usage = sub.add_parser("usage", help="today's token usage per bot and its top users")
    usage.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    usage.add_argument("--top", type=int, default=5, help="how many users to list per bot (default 5)")
    usage.set_defaults(func=cmd_usage)

    status = sub.add_parser("status", help="each bot's state, uptime, restarts and usage, from a running orchestrator")
    where = status.add_mutually_exclusive_group(required=True)
    where.add_argument("--health-port", type=int, metavar="PORT", help="the --health-port of the running orchestrator")
    where.add_argument("--url", help="its /healthz URL, e.g. http://127.0.0.1:8080/healthz")
    status.set_defaults(func=cmd_status)

    demo = sub.add_parser("demo", help="run the bots against the bundled loopback Discord and OpenAI servers")
    demo.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    demo.add_argument("-m", "--message", action="append", help="post this message (repeatable); default: stdin")
    demo.add_argument("--provider-url", help="use this OpenAI-compatible server for the model (key: DEMO_API_KEY)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    raise SystemExit(args.func(args))
