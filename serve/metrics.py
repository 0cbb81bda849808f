"""Prometheus metrics. Labels stay bounded: endpoints, registered adapters and their versions,
outcomes; never request ids, keys or client-chosen text.

Series are counted by adapter id, but /metrics shows the ids only where the operator enables
it (metrics.adapter_names): otherwise each `adapter` label is `adapter_label(id)`, a digest
that names no tenant and is the same on every replica and after every restart, so rates and
the dashboard work as before. The metrics' readers (a scraper, a dashboard's viewers) need
not learn which tenants and adapters the server has.

Request metrics are this process's own. Registry-wide facts (training runs, promotions,
rollbacks, rejections) happen in other processes too (the trainer), so they are read from the
registry at scrape time: every replica reports the same value; aggregate them with max().
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator
from functools import lru_cache
from time import perf_counter

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from loraloop.adapters.db import Database
from loraloop.adapters.errors import RegistryUnavailable
from loraloop.adapters.event_and_run_counts import read_counts

from .admission import AdmissionGate
from .engine.interface import Engine, GenerationDelta
from .routing import CurrentRoutes
from .usage import UsageRecorder

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1)
# Where a request could not be tied to an adapter (refused before resolution, or not a
# generation): keeps the metrics label bounded whatever the client sent.
NO_ADAPTER = "-"


@lru_cache(maxsize=8192)
def adapter_label(adapter_id: str) -> str:
    """The `adapter` label of an adapter's series when names are not shown: "a-" and the
    first 12 hex digits of the SHA-256 of "tenant/name". An operator finds an adapter's
    series with `printf %s tenant/name | sha256sum | cut -c1-12`."""
    if adapter_id == NO_ADAPTER:
        return adapter_id
    return "a-" + hashlib.sha256(adapter_id.encode()).hexdigest()[:12]


class _Shown(Collector):
    """A registry's metrics as /metrics shows them: adapter labels as `adapter_label`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self):
        for family in self.registry.collect():  # families built afresh for each scrape
            family.samples = [
                sample._replace(
                    labels={**sample.labels, "adapter": adapter_label(sample.labels["adapter"])}
                )
                if "adapter" in sample.labels
                else sample
                for sample in family.samples
            ]
            yield family


def exposition(registry: CollectorRegistry, *, adapter_names: bool) -> bytes:
    """The text /metrics answers (blocking: registry-wide counts are read from the database)."""
    return generate_latest(registry if adapter_names else _Shown(registry))


class _LiveCounts(Collector):
    """Values read from the admission gate, the engine and the routing snapshot at scrape."""

    def __init__(self, admission: AdmissionGate, engine: Engine, routes: CurrentRoutes) -> None:
        self.admission, self.engine, self.routes = admission, engine, routes

    def collect(self):
        yield GaugeMetricFamily(
            "loraloop_requests_in_progress",
            "Generation requests admitted and not yet finished.",
            value=self.admission.in_progress,
        )
        yield GaugeMetricFamily(
            "loraloop_engine_requests_active",
            "Sequences the engine is generating (one per choice).",
            value=self.engine.active_requests,
        )
        yield CounterMetricFamily(
            "loraloop_engine_requests_aborted",
            "Sequences stopped in the engine before they finished, e.g. the client left.",
            value=self.engine.aborted_requests,
        )
        live = GaugeMetricFamily(
            "loraloop_adapter_live_version",
            "The live version of each adapter, as this server routes.",
            labels=["adapter"],
        )
        for adapter_id, version in sorted(self.routes.snapshot.live.items()):
            live.add_metric([adapter_id], version)
        yield live
        yield GaugeMetricFamily(
            "loraloop_registry_available",
            "1 while this server can read the registry database; 0 while it serves from its "
            "last routing snapshot and refuses writes (feedback, admin) with 503.",
            value=int(self.routes.registry_lost_at is None),
        )


class _RegistryCounts(Collector):
    """Registry-wide counts, read from the database at scrape time."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self):
        try:
            counts = read_counts(self.db)
        except RegistryUnavailable:  # the scrape still reports everything this process knows
            return
        changes = CounterMetricFamily(
            "loraloop_registry_events",
            "Registry changes by kind (promote, rollback, reject, register, ...), all processes.",
            labels=["kind"],
        )
        for kind, count in counts.events_by_kind.items():
            changes.add_metric([kind], count)
        yield changes
        by_status = GaugeMetricFamily(
            "loraloop_training_runs", "Training runs by status, all trainers.", labels=["status"]
        )
        for status, count in counts.runs_by_status.items():
            by_status.add_metric([status], count)
        yield by_status


class ServeMetrics:
    def __init__(
        self,
        admission: AdmissionGate,
        engine: Engine,
        routes: CurrentRoutes,
        db: Database,
        usage: UsageRecorder | None = None,
    ) -> None:
        self.usage = usage  # per adapter version and hour, for the registry (the console)
        self.registry = registry = CollectorRegistry()
        registry.register(_LiveCounts(admission, engine, routes))
        registry.register(_RegistryCounts(db))
        self.requests = Counter(
            "loraloop_requests",
            "API requests by outcome.",
            ["endpoint", "adapter", "version", "status"],
            registry=registry,
        )
        self.rejected = Counter(
            "loraloop_requests_rejected",
            "Requests refused for load: overloaded (503) or rate_limited (429).",
            ["reason"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "loraloop_prompt_tokens", "Prompt tokens processed.", ["adapter"], registry=registry
        )
        self.generation_tokens = Counter(
            "loraloop_generation_tokens", "Tokens generated.", ["adapter"], registry=registry
        )
        self.ttft = Histogram(
            "loraloop_time_to_first_token_seconds",
            "From admission to the first generated token.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tpot = Histogram(
            "loraloop_time_per_output_token_seconds",
            "Decoding time per output token after the first, per request.",
            ["endpoint"],
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.duration = Histogram(
            "loraloop_request_duration_seconds",
            "End to end, until the last byte of the response.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.adapter_loads = Counter(
            "loraloop_adapter_loads",
            "Adapter loads into the engine.",
            ["outcome"],
            registry=registry,
        )
        self.adapter_load_seconds = Histogram(
            "loraloop_adapter_load_seconds",
            "Time to load an adapter into the engine.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.cache_lookups = Counter(
            "loraloop_adapter_cache_lookups",
            "Requests whose adapter was already loaded (hit) or not.",
            ["result"],
            registry=registry,
        )
        self.feedback = Counter(
            "loraloop_feedback", "Feedback stored, by kind.", ["kind"], registry=registry
        )
        self.invalid_structured_outputs = Counter(
            "loraloop_structured_outputs_invalid",
            "Finished answers withheld because they "
            "broke their schema (response_format or tools) despite the grammar.",
            ["param"],
            registry=registry,
        )
        self.rollout_requests = Counter(
            "loraloop_rollout_requests",
            "Requests served by a version of an unfinished "
            "rollout (its candidate or baseline), by the rollout's stage.",
            ["adapter", "version", "stage"],
            registry=registry,
        )
        self.shadow_requests = Counter(
            "loraloop_shadow_requests",
            "Shadow answers for rollouts: answered, dropped_full "
            "(queue full), dropped_busy (engine busy), dropped_stale (the rollout left the "
            "step it was queued in) or failed.",
            ["adapter", "result"],
            registry=registry,
        )
        self.console_sign_ins = Counter(
            "loraloop_console_sign_ins",
            "Console sign-ins: signed_in, refused (a wrong key) "
            "or throttled (too many wrong keys from one address or for one key prefix).",
            ["result"],
            registry=registry,
        )

    async def observe_generation(
        self,
        events: AsyncGenerator[tuple[int, GenerationDelta], None],
        *,
        endpoint: str,
        adapter: str,
        choices: int,
        prompt_tokens: int,
        started: float,
        version: int | None = None,
    ) -> AsyncGenerator[tuple[int, GenerationDelta], None]:
        """Pass the events through, timing the first token and counting the rest."""
        first, tokens = None, 0
        try:
            async for event in events:
                if first is None:
                    first = perf_counter()
                    self.ttft.labels(endpoint).observe(first - started)
                tokens += len(event[1].token_ids)
                yield event
        finally:  # a client that leaves early still used what was generated until then
            self.prompt_tokens.labels(adapter).inc(prompt_tokens)
            self.generation_tokens.labels(adapter).inc(tokens)
            if self.usage is not None and version is not None:
                self.usage.record(adapter, version, prompt_tokens, tokens)
            per_choice = tokens / max(choices, 1)
            if first is not None and per_choice > 1:
                self.tpot.labels(endpoint).observe((perf_counter() - first) / (per_choice - 1))
