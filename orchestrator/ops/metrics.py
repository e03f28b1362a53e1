"""Prometheus metrics for ``GET /metrics``.

Almost everything is read from the live state when Prometheus scrapes (a custom collector over
the supervisor's children, each bot's counters, the pool's statistics and the quota book), so the
core modules keep plain counters and know nothing about Prometheus. The one exception is the
answer latency and the added latency, histograms the bots feed when an answer is delivered
(:meth:`Metrics.observe_answer`, :meth:`Metrics.observe_added`).

Every :class:`Metrics` has its own registry: two apps in one process (tests) never share series.

    orchestrator_bot_state{bot,state}                   1 for the bot's current state, 0 for the others
    orchestrator_bot_state_seconds{bot}                 seconds in the current state
    orchestrator_bot_restarts_total{bot}                restarts after crashes
    orchestrator_chats_total{bot}                       chat requests handled
    orchestrator_answers_total{bot}                     answers delivered
    orchestrator_busy_total{bot}                        messages refused because the mailbox was full
    orchestrator_handler_errors_total{bot}              errors while handling a message: unexpected ones, and
                                                        Discord refusing an answer or an update of a streamed one
    orchestrator_gateway_events_dropped_total{bot}      messages for other bots dropped before decoding
    orchestrator_answer_latency_seconds{bot}            histogram: message received → answer delivered
    orchestrator_added_latency_seconds{bot,part}        histogram: the orchestrator's own share of a plain answer;
                                                        inbound: message received → provider request sent,
                                                        outbound: provider answer read → Discord send, total: both
    orchestrator_provider_requests_total                requests sent to providers (retries included)
    orchestrator_provider_retries_total                 retries after 429 / 5xx / timeouts
    orchestrator_provider_errors_total{provider,kind}   failed attempts: auth, model_not_found, refused, busy, timeout,
                                                        unavailable, bad_response
    orchestrator_quota_rejections_total{bot,scope,limit} requests refused by a quota or spend cap (scope: bot or user)
    orchestrator_tokens_total{bot,provider}             tokens used, as counted by the providers
    orchestrator_spend_usd_total{bot}                   USD spent (provider-reported usage × bots.yaml prices)
    orchestrator_config_reload_failed                   1 while the last edit of bots.yaml was rejected

In fleet mode (orchestrator/fleet/), also:

    orchestrator_node_info{node}                        1, labelled with this node's id
    orchestrator_fleet_nodes                            live nodes this node sees (itself included)
    orchestrator_fleet_redis_up                         1 while the last round with Redis succeeded
    orchestrator_fleet_leases_held                      bot leases this node holds
    orchestrator_fleet_lease_acquisitions_total{bot}    leases taken by this node
    orchestrator_fleet_lease_losses_total{bot}          leases lost without releasing them (not renewed in time)
    orchestrator_fleet_failovers_total{bot}             bots taken over from a node whose lease ran out
    orchestrator_fleet_messages_claimed_elsewhere_total{bot}  messages taken here without the bot's lease:
                                                        left to the node holding it (fleet/claims.py)
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .views import FleetView, SupervisorView

if TYPE_CHECKING:
    from ..llm.pool import LLMPool

__all__ = ["ADDED_LATENCY_BUCKETS", "CONTENT_TYPE_LATEST", "LATENCY_BUCKETS", "Metrics", "error_kind"]

# LLM answers take from a fraction of a second (small local models) to minutes (long answers, retries).
LATENCY_BUCKETS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0)
# What the orchestrator adds is milliseconds (scripts/bench judges its p99 against 5 ms).
ADDED_LATENCY_BUCKETS = tuple(ms / 1000 for ms in (
    0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100, 250, 500, 1000, 2500, 10000,
))  # fmt: skip


class MetricsSource(Protocol):
    """What the collector reads at scrape time (the :class:`~orchestrator.app.App`)."""

    @property
    def supervisor(self) -> SupervisorView | None: ...
    @property
    def pool(self) -> LLMPool | None: ...
    @property
    def fleet(self) -> FleetView | None: ...
    @property
    def last_reload_error(self) -> str | None: ...


def error_kind(class_name: str) -> str:
    """``ProviderBadResponse`` → ``bad_response``, ``ProviderAuthError`` → ``auth``."""
    name = class_name.removeprefix("Provider").removesuffix("Error") or class_name
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Metrics:
    """One registry with the live collector and the latency histogram."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.source: MetricsSource | None = None
        self.answer_latency = Histogram(
            "orchestrator_answer_latency_seconds",
            "Seconds from receiving a chat message to delivering the answer.",
            ["bot"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.added_latency = Histogram(
            "orchestrator_added_latency_seconds",
            "The orchestrator's own time in a plain answer: message received to provider request (inbound), "
            "provider answer to Discord send (outbound), and both (total).",
            ["bot", "part"],
            buckets=ADDED_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_LiveCollector(self))

    def observe_answer(self, bot: str, seconds: float) -> None:
        self.answer_latency.labels(bot).observe(max(0.0, seconds))

    def observe_added(self, bot: str, inbound: float, outbound: float) -> None:
        inbound, outbound = max(0.0, inbound), max(0.0, outbound)
        self.added_latency.labels(bot, "inbound").observe(inbound)
        self.added_latency.labels(bot, "outbound").observe(outbound)
        self.added_latency.labels(bot, "total").observe(inbound + outbound)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (call it on the event loop's thread)."""
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        source = self._metrics.source
        if source is None:
            return
        yield from self._bots(source.supervisor)
        yield from self._pool(source.pool)
        reload_failed = GaugeMetricFamily(
            "orchestrator_config_reload_failed", "1 while the last edit of bots.yaml was rejected."
        )
        reload_failed.add_metric([], 1.0 if source.last_reload_error else 0.0)
        yield reload_failed
        if source.fleet is not None:
            yield from self._fleet(source.fleet)

    @staticmethod
    def _bots(supervisor: SupervisorView | None) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "orchestrator_bot_state", "1 for the bot's current state, 0 for the others.", labels=["bot", "state"]
        )
        state_seconds = GaugeMetricFamily(
            "orchestrator_bot_state_seconds", "Seconds the bot has been in its current state.", labels=["bot"]
        )
        restarts = CounterMetricFamily("orchestrator_bot_restarts", "Restarts after crashes.", labels=["bot"])
        counters = {
            "chats": CounterMetricFamily("orchestrator_chats", "Chat requests handled.", labels=["bot"]),
            "answered": CounterMetricFamily("orchestrator_answers", "Answers delivered.", labels=["bot"]),
            "busy": CounterMetricFamily(
                "orchestrator_busy", "Messages refused because the bot's mailbox was full.", labels=["bot"]
            ),
            "errors": CounterMetricFamily(
                "orchestrator_handler_errors",
                "Errors while handling a message: unexpected ones, Discord refusing an answer or a streamed update.",
                labels=["bot"],
            ),
            "dropped": CounterMetricFamily(
                "orchestrator_gateway_events_dropped",
                "Gateway messages that could not concern the bot, dropped before decoding.",
                labels=["bot"],
            ),
            "claimed_elsewhere": CounterMetricFamily(
                "orchestrator_fleet_messages_claimed_elsewhere",
                "Messages taken here without the bot's lease, left to the node holding it.",
                labels=["bot"],
            ),
        }
        now = time.monotonic()
        children = list(supervisor.children.items()) if supervisor is not None else []
        for name, child in children:
            for candidate in type(child.state):
                state.add_metric([name, candidate.value], 1.0 if candidate is child.state else 0.0)
            state_seconds.add_metric([name], now - child.since)
            restarts.add_metric([name], child.restarts)
            for field_name, family in counters.items():
                family.add_metric([name], getattr(child.counters, field_name))
        yield from (state, state_seconds, restarts, *counters.values())

    @staticmethod
    def _fleet(fleet: FleetView) -> Iterator[Metric]:
        node = GaugeMetricFamily("orchestrator_node_info", "This node of the fleet.", labels=["node"])
        node.add_metric([fleet.node_id], 1.0)
        nodes = GaugeMetricFamily("orchestrator_fleet_nodes", "Live nodes this node sees, itself included.")
        nodes.add_metric([], len(set(fleet.live_nodes) | {fleet.node_id}))
        redis_up = GaugeMetricFamily("orchestrator_fleet_redis_up", "1 while the last round with Redis succeeded.")
        redis_up.add_metric([], 0.0 if fleet.redis_error else 1.0)
        held = GaugeMetricFamily("orchestrator_fleet_leases_held", "Bot leases this node holds.")
        held.add_metric([], len(fleet.leases))
        counters = {
            "acquisitions": CounterMetricFamily(
                "orchestrator_fleet_lease_acquisitions", "Bot leases taken by this node.", labels=["bot"]
            ),
            "losses": CounterMetricFamily(
                "orchestrator_fleet_lease_losses",
                "Bot leases lost without releasing them (not renewed in time).",
                labels=["bot"],
            ),
            "failovers": CounterMetricFamily(
                "orchestrator_fleet_failovers", "Bots taken over from a node whose lease ran out.", labels=["bot"]
            ),
        }
        for attribute, family in counters.items():
            for bot, count in sorted(getattr(fleet, attribute).items()):
                family.add_metric([bot], count)
        yield from (node, nodes, redis_up, held, *counters.values())

    @staticmethod
    def _pool(pool: LLMPool | None) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "orchestrator_provider_requests", "Requests sent to providers, retries included."
        )
        retries = CounterMetricFamily("orchestrator_provider_retries", "Retries after 429, 5xx or timeouts.")
        errors = CounterMetricFamily(
            "orchestrator_provider_errors", "Failed provider attempts by kind.", labels=["provider", "kind"]
        )
        rejections = CounterMetricFamily(
            "orchestrator_quota_rejections", "Requests refused by a quota.", labels=["bot", "scope", "limit"]
        )
        tokens = CounterMetricFamily(
            "orchestrator_tokens", "Tokens used, as counted by the providers.", labels=["bot", "provider"]
        )
        spend = CounterMetricFamily(
            "orchestrator_spend_usd",
            "USD spent: the providers' reported usage times the prices in bots.yaml.",
            labels=["bot"],
        )
        if pool is not None:
            requests.add_metric([], pool.stats.requests)
            retries.add_metric([], pool.stats.retries)
            for (provider, class_name), count in sorted(pool.stats.provider_errors.items()):
                errors.add_metric([provider, error_kind(class_name)], count)
            for (bot, scope, limit), count in sorted(pool.quotas.rejections.items()):
                rejections.add_metric([bot, scope, limit], count)
            for (bot, scope), count in sorted(pool.spend.rejections.items()):
                rejections.add_metric([bot, scope, "usd_per_day"], count)
            for (bot, provider), count in sorted(pool.quotas.tokens_used.items()):
                tokens.add_metric([bot, provider], count)
            for bot, usd in sorted(pool.spend.spent.items()):
                spend.add_metric([bot], usd)
        yield from (requests, retries, errors, rejections, tokens, spend)
