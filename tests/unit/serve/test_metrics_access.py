"""Who may read /metrics, and what its labels say: with a metrics token set only a scraper
that sends it reads them; adapter ids show only where the operator enables it, otherwise a
digest that names no tenant labels each adapter's series.

The server runs in process with its lifespan, on a real SQLite registry and a scripted
engine at the Engine protocol seam, with an adapter under rollout (its series included).
"""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from loraloop.serve.app import create_app
from loraloop.serve.metrics import adapter_label

from ...support import wait_until
from .rollout_setup import ADAPTER, PROMPT, ScriptedEngine, server_settings, start_rollout

TOKEN = "metrics-token-0123456789"
SCRAPER = {"Authorization": f"Bearer {TOKEN}"}


def adapters_shown(text: str) -> set[str]:
    return {
        sample.labels["adapter"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "adapter" in sample.labels
    }


def scraped_after_traffic(app, adapter_dirs, headers=None) -> str:
    state = app.state.loraloop
    start_rollout(state, adapter_dirs)
    with TestClient(app) as client:
        wait_until(lambda: ADAPTER in state.routes.snapshot.rollouts, 10, "the rollout routed")
        reply = client.post(
            "/v1/chat/completions",
            json={"model": ADAPTER, "messages": [{"role": "user", "content": PROMPT}]},
        )
        assert reply.status_code == 200, reply.text
        client.post("/v1/chat/completions", json={"model": "acme/unknown", "messages": []})
        return client.get("/metrics", headers=headers).text


def test_adapter_ids_show_only_where_the_operator_enables_them(demo_model, adapter_dirs, tmp_path):
    app = create_app(server_settings(demo_model, tmp_path, registry_poll_s=0.05), ScriptedEngine())
    text = scraped_after_traffic(app, adapter_dirs)
    digest = "a-" + hashlib.sha256(ADAPTER.encode()).hexdigest()[:12]
    assert adapter_label(ADAPTER) == digest
    assert adapters_shown(text) == {digest, "-"}
    assert "acme" not in text
    labelled = {
        (sample.name, sample.labels["adapter"])
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "adapter" in sample.labels
    }
    for name in (
        "loraloop_requests_total",
        "loraloop_generation_tokens_total",
        "loraloop_rollout_requests_total",
        "loraloop_rollout_step",
        "loraloop_adapter_live_version",
    ):
        assert (name, digest) in labelled, name


def test_adapter_ids_shown_when_enabled(demo_model, adapter_dirs, tmp_path):
    settings = server_settings(
        demo_model, tmp_path, registry_poll_s=0.05, metrics={"adapter_names": True}
    )
    text = scraped_after_traffic(create_app(settings, ScriptedEngine()), adapter_dirs)
    assert adapters_shown(text) == {ADAPTER, "-"}


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": "Bearer test-admin-key-0123456789"},
    ],
)
def test_with_a_token_only_its_holder_scrapes(demo_model, tmp_path, headers):
    settings = server_settings(demo_model, tmp_path, metrics={"token": TOKEN})
    with TestClient(create_app(settings, ScriptedEngine())) as client:
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == 401
        assert "metrics token" in refused.json()["error"]["message"]
        allowed = client.get("/metrics", headers=SCRAPER)
        assert allowed.status_code == 200 and "loraloop_requests_in_progress" in allowed.text
        assert client.get("/health").status_code == 200  # the probes need no token


def test_a_short_token_is_refused_at_start_up(demo_model, tmp_path):
    with pytest.raises(ValueError, match="LORALOOP_METRICS__TOKEN"):
        server_settings(demo_model, tmp_path, metrics={"token": "short"})
