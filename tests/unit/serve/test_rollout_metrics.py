"""Rollouts on /metrics: requests by version and stage, shadow answers by result, and each
rollout as the registry holds it (its step, its last decision's figures, rollbacks by
cause), which follows a driver's decisions and drops a rollout once it ends.

The server runs in process, the app with its lifespan (which runs the shadow runner and
the writers), on a real SQLite registry and a scripted engine at the Engine protocol seam.
"""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from loraloop.serve.app import create_app

from ...support import wait_until
from .rollout_setup import ADAPTER, PROMPT, ScriptedEngine, server_settings, start_rollout

DECISION = {
    "action": "wait",
    "cause": None,
    "at": "2026-01-01T00:00:00+00:00",
    "step": 0,
    "stage": "shadow",
    "wins": 6,
    "losses": 3,
    "ties": 1,
    "abstained": 2,
    "win_rate": 0.65,
    "win_rate_low": 0.4,
    "win_rate_high": 0.85,
    "log_lr_better": 0.1,
    "log_lr_worse": -0.2,
    "threshold": 2.9,
    "reason": "waiting",
}


def scrape(client: TestClient) -> dict[tuple[str, frozenset], float]:
    text = client.get("/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(client: TestClient, name: str, **labels) -> float | None:
    return scrape(client).get((name, frozenset(labels.items())))


def test_rollout_metrics_follow_requests_shadows_and_decisions(demo_model, adapter_dirs, tmp_path):
    app = create_app(
        server_settings(
            demo_model, tmp_path, registry_poll_s=0.05, metrics={"adapter_names": True}
        ),
        ScriptedEngine(),
    )
    state = app.state.loraloop
    rollout = start_rollout(state, adapter_dirs)
    book = state.registry.rollouts
    with TestClient(app) as client:
        wait_until(lambda: client.get("/ready").status_code == 200, 30, "the server ready")
        wait_until(lambda: ADAPTER in state.routes.snapshot.rollouts, 10, "the rollout routed")
        reply = client.post(
            "/v1/chat/completions",
            json={"model": ADAPTER, "messages": [{"role": "user", "content": PROMPT}]},
        )
        assert reply.json()["choices"][0]["message"]["content"] == "v1 says hi"
        wait_until(
            lambda: (
                sample(client, "loraloop_shadow_requests_total", adapter=ADAPTER, result="answered")
                == 1
            ),
            10,
            "the shadow answered",
        )
        assert (
            sample(
                client,
                "loraloop_rollout_requests_total",
                adapter=ADAPTER,
                version="1",
                stage="shadow",
            )
            == 1
        )
        assert (
            sample(client, "loraloop_rollout_step", adapter=ADAPTER, version="2", stage="shadow")
            == 0
        )
        assert (
            sample(client, "loraloop_rollout_decision", adapter=ADAPTER, version="2", action="wait")
            == 0
        )  # no decision yet

        assert book.acquire(rollout.id, worker="driver", lease_s=60)
        book.note_decision(rollout.id, worker="driver", decision=DECISION)  # no new revision
        wait_until(
            lambda: (
                sample(
                    client, "loraloop_rollout_win_rate", adapter=ADAPTER, version="2", bound="lower"
                )
                == 0.4
            ),
            10,
            "the decision shown",
        )
        figures = scrape(client)
        for name, labels, value in [
            ("loraloop_rollout_win_rate", {"bound": "estimate"}, 0.65),
            ("loraloop_rollout_win_rate", {"bound": "upper"}, 0.85),
            ("loraloop_rollout_comparisons", {"verdict": "candidate"}, 6),
            ("loraloop_rollout_comparisons", {"verdict": "baseline"}, 3),
            ("loraloop_rollout_comparisons", {"verdict": "tie"}, 1),
            ("loraloop_rollout_comparisons", {"verdict": "abstained"}, 2),
            ("loraloop_rollout_decision", {"action": "wait"}, 1),
            ("loraloop_rollout_decision", {"action": "rollback"}, 0),
        ]:
            key = frozenset({"adapter": ADAPTER, "version": "2", **labels}.items())
            assert figures[(name, key)] == value, (name, labels)

        book.roll_back(
            rollout.id,
            worker="driver",
            reason="it loses",
            decision={**DECISION, "action": "rollback", "cause": "judge"},
        )
        wait_until(
            lambda: (
                sample(client, "loraloop_rollout_rollbacks", adapter=ADAPTER, cause="judge") == 1
            ),
            10,
            "the rollback counted",
        )
        assert not [
            key
            for key in scrape(client)
            if key[0].startswith(
                ("loraloop_rollout_step", "loraloop_rollout_win_rate", "loraloop_rollout_decision")
            )
        ]

    # Leaving the lifespan wrote what was still in memory.
    evidence = book.evidence(rollout)
    assert (evidence.unjudged, evidence.counts[1]["requests"]) == (1, 1)
