"""Real `orchestrator run` processes for the tests that signal, kill or pause them."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import anyio
from anyio.abc import Process

ROOT = Path(__file__).resolve().parent.parent


def base_env() -> dict[str, str]:
    """This process's environment without the Discord and OpenAI settings of the developer's shell."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "OPENAI_"))}


@contextlib.asynccontextmanager
async def orchestrator_run(
    config: Path, log: Path, env: Mapping[str, str], *, watch: bool = False
) -> AsyncIterator[Process]:
    """``orchestrator run config`` with its output appended to ``log``, watching ``config`` for changes
    only if ``watch``; killed if still running at the end, and always reaped."""
    with log.open("ab") as output:
        process = await anyio.open_process(
            [sys.executable, "-m", "orchestrator", "run", str(config), *([] if watch else ["--no-watch"])],
            cwd=ROOT,
            env=dict(env),
            stdout=output,
            stderr=output,
        )
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()
                await process.aclose()
