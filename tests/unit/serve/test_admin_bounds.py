"""Values the trainer cannot use, and ids the database cannot hold, are refused at the door:
a 400 naming the field, never a 500, and nothing stored (SQLite and PostgreSQL).

The app runs in process with its lifespan, on a real registry and a scripted engine at the
Engine protocol seam; requests carry raw JSON, as a client that writes `Infinity` sends it.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from loraloop.serve.app import create_app

from .rollout_setup import ADAPTER, ScriptedEngine, register_two_versions, server_settings

POLICY = f"/admin/v1/adapters/{ADAPTER}/policy"


@pytest.fixture
def client(database, demo_model, adapter_dirs, tmp_path):
    app = create_app(server_settings(demo_model, tmp_path, database_url=database), ScriptedEngine())
    register_two_versions(app.state.loraloop, adapter_dirs)
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"gate": {"max_kl_from_live": Infinity}}', "max_kl_from_live"),
        ('{"gate": {"max_kl_from_base": Infinity}}', "max_kl_from_base"),
        ('{"max_wait_s": 1e14}', "max_wait_s"),
        (f'{{"seed": {10**40}}}', "seed"),
    ],
)
def test_a_policy_the_trainer_cannot_use_is_refused(client, body, field):
    before = client.get(POLICY).json()
    reply = client.put(POLICY, content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert field in reply.json()["error"]["message"] + str(reply.json()["error"]["param"])
    assert client.get(POLICY).json() == before  # nothing stored


def test_an_id_too_large_for_the_database_is_a_400(client):
    reply = client.get("/admin/v1/transfers", params={"id": "99999999999999999999"})
    assert reply.status_code == 400, reply.text
    assert "id" in str(reply.json()["error"]["param"]) + reply.json()["error"]["message"]
    assert client.get("/admin/v1/transfers", params={"id": "7"}).json() == []
