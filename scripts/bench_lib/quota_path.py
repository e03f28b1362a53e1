"""One process's quota work per answer, as ``scripts/bench_fleet --parts reserve`` measures it.

    python quota_path.py REDIS_URL KEY_PREFIX fleet|local CALLS

Runs CALLS reserve + settle cycles of one bot with per-bot and per-user limits that never bind (ten
users in turn, 500 tokens estimated, 150 used): ``fleet`` through the fleet-wide quotas in Redis
(orchestrator/fleet/quotas.py, settles batched as on a node), ``local`` through the single-process
books (llm/admission.LocalQuotas, with one turn of the event loop per cycle, as an answer has).
Prints JSON: the CPU time (user + system) per cycle, start-up excluded.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from orchestrator.config import QuotaSettings
from orchestrator.fleet.connection import open_redis
from orchestrator.fleet.quotas import FleetQuotas
from orchestrator.llm.admission import LocalQuotas
from orchestrator.llm.images import ImageBook
from orchestrator.llm.quota import QuotaBook
from orchestrator.llm.spend import SpendBook

BOT = QuotaSettings(requests_per_minute=10**6, tokens_per_minute=10**9, tokens_per_day=10**10)
USER = QuotaSettings(requests_per_minute=10**6, tokens_per_minute=10**8, tokens_per_day=10**9)


async def cycles(redis_url: str, key_prefix: str, mode: str, calls: int) -> float:
    redis = open_redis(redis_url, timeout=2.0)
    fleet = FleetQuotas(redis, key_prefix, QuotaBook(), SpendBook())
    local = LocalQuotas(QuotaBook(), SpendBook(), ImageBook())
    try:
        async with fleet.settling():
            await fleet.reserve("p", "sage", "warm", 500, BOT, USER)  # connected, scripts loaded
            started = _cpu()
            for index in range(calls):
                user = f"u{index % 10}"
                if mode == "fleet":
                    reservation = await fleet.reserve("p", "sage", user, 500, BOT, USER)
                    await fleet.settle(reservation, None, 100, 50)
                else:
                    reservation = local.take("p", "sage", user, 500, BOT, USER)
                    local.count(reservation, None, 100, 50)
                    await asyncio.sleep(0)
            return (_cpu() - started) / calls
    finally:
        await redis.aclose()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    url, prefix, mode, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    per_call = asyncio.run(cycles(url, prefix, mode, count))
    print(json.dumps({"mode": mode, "calls": count, "cpu_ms_per_call": per_call * 1000}))
