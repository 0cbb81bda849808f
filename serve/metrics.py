"""Prometheus metrics of the serving path. Labels stay bounded: no per-request values."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .admission import AdmissionGate
from .engine.protocol import Engine


class _LiveCounts(Collector):
    """Values read from the admission gate and the engine at scrape time."""

    def __init__(self, admission: AdmissionGate, engine: Engine) -> None:
        self.admission, self.engine = admission, engine

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


class ServeMetrics:
    def __init__(self, admission: AdmissionGate, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_LiveCounts(admission, engine))
