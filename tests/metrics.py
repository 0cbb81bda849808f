"""Reading the server's Prometheus metrics in tests."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families


def read_metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise KeyError(name)


def wait_for_metric(url: str, name: str, expected: float, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while (value := read_metric(url, name)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return value
