"""An adapter's history as each reader sees it: an operator everything; its tenant, signed
in to the console, no more than its other routes show it (not the policy it may not read).

The server runs in process with its lifespan, auth on, on a real SQLite registry and a
scripted engine at the Engine protocol seam.
"""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from loraloop.adapters.training_policy import TrainingPolicy
from loraloop.serve.app import create_app
from loraloop.serve.settings import ServeSettings

from ...support import wait_until
from .rollout_setup import ADAPTER, ScriptedEngine, register_two_versions

ADMIN_KEY = "test-admin-key-0123456789"
HISTORY = f"/admin/v1/adapters/{ADAPTER}/history"
SECRETS = ("judge.internal", "grade like a strict auditor", "JUDGE_ACME_KEY")
POLICY = TrainingPolicy.model_validate(
    {
        "judge": {
            "kind": "llm",
            "url": "http://judge.internal:9000/v1",
            "model": "grader",
            "rubric": "grade like a strict auditor",
            "api_key_env": "JUDGE_ACME_KEY",
        },
        "rollout": {"steps": [{"percent": 0}]},
        "min_pairs": 8,
    }
)


def test_a_tenant_reads_its_history_without_its_policy(demo_model, adapter_dirs, tmp_path):
    settings = ServeSettings(
        model=str(demo_model),
        served_model_name="demo",
        data_dir=tmp_path,
        max_model_len=512,
        admin_key=ADMIN_KEY,
        registry_poll_s=0.05,
    )
    app = create_app(settings, ScriptedEngine())
    state = app.state.loraloop
    register_two_versions(state, adapter_dirs)
    key = state.registry.tenants.issue_key("acme", actor="test").key
    state.registry.adapters.set_policy(ADAPTER, POLICY, actor="op", reason="judged by grader")
    with TestClient(app) as client:
        operator = client.get(HISTORY, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        wait_until(
            lambda: client.post("/console/session", json={"key": key}).is_success,
            10,
            "the tenant signed in",
        )
        assert client.get(f"/admin/v1/adapters/{ADAPTER}/policy").status_code == 403
        tenant = client.get(HISTORY)
    assert operator.status_code == tenant.status_code == 200, tenant.text
    assert all(secret in operator.text for secret in SECRETS)
    assert not any(secret in tenant.text for secret in SECRETS), tenant.text
    (policy_set,) = [e for e in tenant.json() if e["kind"] == "policy_set"]
    assert policy_set["reason"] == "judged by grader"
    assert policy_set["detail"]["policy"] == {"rollout": POLICY.model_dump(mode="json")["rollout"]}
    registered = [e for e in tenant.json() if e["kind"] == "register"]
    assert len(registered) == 2 and "base" not in json.dumps([e["detail"] for e in registered])
    assert [e["kind"] for e in tenant.json()] == [e["kind"] for e in operator.json()]
