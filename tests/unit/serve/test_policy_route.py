"""PUT .../policy: a policy is checked against the server's settings, off the event loop,
and every refusal is a 400 naming the field as the client wrote it.

The server runs in process on a real SQLite registry, an engine stand-in at the Engine
protocol seam; requests go through the app with its middleware and error handlers.
"""

from __future__ import annotations

import threading
import time

from fastapi.testclient import TestClient

from loraloop.serve.app import create_app

from .rollout_setup import ADAPTER, ScriptedEngine, server_settings

POLICY = f"/admin/v1/adapters/{ADAPTER}/policy"


def llm_judge(api_key_env: str) -> dict:
    return {
        "judge": {
            "kind": "llm",
            "url": "http://judge.test/v1",
            "model": "m",
            "rubric": "r",
            "api_key_env": api_key_env,
        }
    }


def serving(demo_model, tmp_path, **settings) -> TestClient:
    app = create_app(server_settings(demo_model, tmp_path, **settings), ScriptedEngine())
    registry = app.state.loraloop.registry
    registry.tenants.create("acme", actor="test")
    registry.adapters.create(ADAPTER, actor="test")
    return TestClient(app)


def test_a_judge_key_outside_the_allow_list_is_a_400_naming_the_field(demo_model, tmp_path):
    with serving(demo_model, tmp_path, judge_key_variables=("JUDGE_*",)) as client:
        for variable in (
            "LORALOOP_ADMIN_KEY",
            "AWS_SECRET_ACCESS_KEY",
            "LORALOOP_DATABASE_URL",
            "PGPASSWORD",
            "OPENAI_API_KEY",
        ):
            reply = client.put(POLICY, json=llm_judge(variable))
            assert reply.status_code == 400, reply.text
            error = reply.json()["error"]
            assert error["param"] == "judge.api_key_env", error
            assert variable in error["message"]
            assert "LORALOOP_JUDGE_KEY_VARIABLES" in error["message"]
        assert client.get(POLICY).json()["judge"] is None  # nothing was stored
        reply = client.put(POLICY, json=llm_judge("JUDGE_ACME_KEY"))
        assert reply.status_code == 200, reply.text
        assert client.get(POLICY).json()["judge"]["api_key_env"] == "JUDGE_ACME_KEY"


def test_the_allow_list_is_the_servers_setting(demo_model, tmp_path):
    with serving(demo_model, tmp_path, judge_key_variables=("OPENAI_API_KEY",)) as client:
        assert client.put(POLICY, json=llm_judge("OPENAI_API_KEY")).status_code == 200
        assert client.put(POLICY, json=llm_judge("JUDGE_KEY")).status_code == 400


def test_patterns_and_schemas_beyond_the_bounds_are_400s_and_nothing_stalls(demo_model, tmp_path):
    nested: dict = {}
    node = nested
    for _ in range(300):
        node["items"] = {}
        node = node["items"]
    with serving(demo_model, tmp_path) as client:
        started = time.monotonic()
        reply = client.put(
            POLICY, json={"judge": {"kind": "rules", "required": ["((a{1,100}){1,100}){1,100}"]}}
        )
        assert time.monotonic() - started < 1
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "judge.required.0", (
            reply.text
        )
        reply = client.put(POLICY, json={"judge": {"kind": "rules", "json_schema": nested}})
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == "judge.json_schema"
        assert "nests deeper than 32 levels" in reply.json()["error"]["message"]
        reply = client.put(POLICY, content=b"{not json")
        assert reply.status_code == 400 and "not valid JSON" in reply.json()["error"]["message"]

        # A pattern only the bounded compile refuses takes a while: the server answers
        # others meanwhile.
        slow: dict = {}
        putting = threading.Thread(
            target=lambda: slow.update(
                reply=client.put(
                    POLICY,
                    json={"judge": {"kind": "rules", "required": ["(?x)#[\n((a{100}){100}){300}"]}},
                )
            )
        )
        putting.start()
        time.sleep(0.3)  # the PUT is compiling in its child process
        health_started = time.monotonic()
        assert client.get("/health").status_code == 200
        health_s = time.monotonic() - health_started
        putting.join()
        assert health_s < 0.5
        assert slow["reply"].status_code == 400
        assert slow["reply"].json()["error"]["param"] == "judge.required"


def test_the_policy_body_is_documented_as_the_policy(demo_model, tmp_path):
    with serving(demo_model, tmp_path) as client:
        spec = client.get("/openapi.json").json()
    body = spec["paths"]["/admin/v1/adapters/{tenant}/{name}/policy"]["put"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TrainingPolicy"
    }
    assert "TrainingPolicy" in spec["components"]["schemas"]
