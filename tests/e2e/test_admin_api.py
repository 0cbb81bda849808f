"""The admin API on the session server: refusals, credentials and tenant isolation."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import httpx
import openai
import pytest
from safetensors.torch import load_file, save_file

from loraloop.adapters.names import CONFIG_FILE, WEIGHTS_FILE
from loraloop.serve.cli.client import AdminApiError, AdminClient

from ..conftest import ADMIN_HEADERS, ADMIN_KEY

GOOD = "acme/support"


class ReduceTrap:
    """Unpickling this would create a file: proof that a refused pickle was never loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _config(directory: Path) -> dict:
    return json.loads((directory / CONFIG_FILE).read_text())


def _files(config: dict, weights: bytes, weights_name: str = WEIGHTS_FILE) -> list[tuple]:
    return [("file", (CONFIG_FILE, json.dumps(config).encode())), ("file", (weights_name, weights))]


def bad_uploads(good: Path, scratch: Path) -> dict[str, tuple[list[tuple], str]]:
    """Refused uploads: case -> (multipart files, a phrase the refusal must contain)."""
    config, weights = _config(good), (good / WEIGHTS_FILE).read_bytes()
    tensors = load_file(good / WEIGHTS_FILE)
    first = sorted(tensors)[0]
    tensors[first] = tensors[first][:, :-1].contiguous()
    save_file(tensors, scratch / "reshaped.safetensors")
    marker = scratch / "unpickled"
    return {
        "pickle weights": (
            _files(config, pickle.dumps(ReduceTrap(marker)), "adapter_model.bin"),
            "pickle-based formats are never loaded",
        ),
        "wrong base model": (
            _files({**config, "base_model_name_or_path": "org/other-7b"}, weights),
            "names another base model",
        ),
        "rank over the maximum": (_files({**config, "r": 128}, weights), "maximum rank of 64"),
        "unknown target module": (
            _files({**config, "target_modules": [*config["target_modules"], "mlp_x"]}, weights),
            "'mlp_x' is not a linear layer",
        ),
        "wrong tensor shape": (
            _files(config, (scratch / "reshaped.safetensors").read_bytes()),
            "has shape",
        ),
        "truncated weights": (_files(config, weights[: len(weights) // 2]), "corrupt or truncated"),
        "../ in a file name": (
            [("file", ("../" + CONFIG_FILE, b"{}")), *_files(config, weights)[1:]],
            "send plain file names",
        ),
        "absolute file name": (
            [("file", ("/etc/" + CONFIG_FILE, b"{}")), *_files(config, weights)[1:]],
            "send plain file names",
        ),
    }


@pytest.fixture(scope="module")
def admin(vllm_server):
    with AdminClient(vllm_server.url, ADMIN_KEY, actor="tester") as client:
        yield client


def _registry_view(admin: AdminClient, adapter_id: str) -> tuple:
    return (
        admin.show_adapter(adapter_id),
        admin.list_versions(adapter_id),
        len(admin.history(adapter_id, limit=1000)),
    )


def test_bad_uploads_are_refused_with_every_problem_and_change_nothing(
    vllm_server, admin, adapter_dirs, client, tmp_path
):
    before = _registry_view(admin, GOOD)
    models_before = [m.id for m in client.models.list().data]
    for case, (files, phrase) in bad_uploads(adapter_dirs[GOOD], tmp_path).items():
        response = httpx.post(
            f"{vllm_server.url}/admin/v1/adapters/{GOOD}/versions",
            files=files,
            headers=ADMIN_HEADERS,
            timeout=30,
        )
        assert response.status_code == 400, case
        error = response.json()["error"]
        assert error["code"] == "adapter_invalid", case
        assert any(phrase in problem for problem in error["problems"]), (case, error)
    assert not (tmp_path / "unpickled").exists()
    assert _registry_view(admin, GOOD) == before
    assert [m.id for m in client.models.list().data] == models_before


def _place(root: Path, name: str, source: Path) -> Path:
    target = root / name
    target.mkdir()
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copyfile(source / file, target / file)
    return target


def test_server_paths_only_from_inside_the_allowed_root(
    admin, adapter_root, adapter_dirs, tmp_path
):
    outside = _place(tmp_path, "outside", adapter_dirs["acme/sales"])
    linked = adapter_root / "linked"
    linked.mkdir()
    (linked / CONFIG_FILE).write_bytes((outside / CONFIG_FILE).read_bytes())
    (linked / WEIGHTS_FILE).symlink_to(outside / WEIGHTS_FILE)
    (adapter_root / "escape").symlink_to(outside)
    before = _registry_view(admin, GOOD)
    refusals = {
        str(outside): "outside the allowed adapter roots",
        f"{adapter_root}/../{outside.relative_to(tmp_path.parent)}": (
            "outside the allowed adapter roots"
        ),
        str(adapter_root / "escape"): "outside the allowed adapter roots",
        str(linked): "links outside the allowed adapter roots",
        "relative/dir": "absolute path",
        str(adapter_root / "missing"): "does not exist",
    }
    for path, phrase in refusals.items():
        with pytest.raises(AdminApiError) as refused:
            admin.register(GOOD, server_path=path)
        assert refused.value.status == 400 and any(phrase in p for p in refused.value.problems), (
            path,
            refused.value.problems,
        )
    assert _registry_view(admin, GOOD) == before


def test_register_from_an_allowed_path_and_actor_in_history(admin, adapter_root, adapter_dirs):
    _place(adapter_root, "globex-docs-v2", adapter_dirs["acme/legal"])
    version, created = admin.register(
        "globex/docs",
        server_path=str(adapter_root / "globex-docs-v2"),
        reason="copied from acme",
        source="import",
    )
    assert created and version["version"] == 2 and version["source"] == "import"
    last = admin.history("globex/docs")[-1]
    assert (last["kind"], last["actor"], last["reason"]) == (
        "register",
        "admin:tester",
        "copied from acme",
    )


def _tenant_client(server, tenant: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.url}/v1", api_key=server.tenant_keys[tenant], max_retries=0
    )


@pytest.mark.parametrize("model", ["globex/chat", "globex/chat@1", "initech/tps"])
def test_a_tenant_cannot_reach_another_tenants_adapter(vllm_server, model):
    acme = _tenant_client(vllm_server, "acme")
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as chat:
        acme.chat.completions.create(model=model, messages=messages, max_tokens=2)
    with pytest.raises(openai.NotFoundError) as completion:
        acme.completions.create(model=model, prompt="hi", max_tokens=2)
    with pytest.raises(openai.NotFoundError) as missing:
        acme.chat.completions.create(model="globex/no-such", messages=messages, max_tokens=2)
    # A foreign adapter and a missing one look the same, so names cannot be probed.
    assert chat.value.body["code"] == completion.value.body["code"] == "model_not_found"
    assert chat.value.body["message"].replace(model, "X") == (
        missing.value.body["message"].replace("globex/no-such", "X")
    )


def test_a_tenant_sees_and_uses_only_its_own_adapters(vllm_server):
    acme = _tenant_client(vllm_server, "acme")
    listed = {m.id for m in acme.models.list().data}
    assert listed == {"demo", "acme/support", "acme/sales", "acme/legal"}
    answer = acme.chat.completions.create(
        model="acme/sales", max_tokens=2, messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.model == "acme/sales@1"


def test_keys_are_checked(vllm_server, admin):
    for headers in (
        {},
        {"Authorization": "Bearer llk_not-a-real-key-000000000000000000000"},
        {"Authorization": "Basic abc"},
    ):
        response = httpx.get(f"{vllm_server.url}/v1/models", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    admin.create_tenant("hooli")
    issued = admin.issue_key("hooli")
    hooli = {"Authorization": f"Bearer {issued['key']}"}
    assert httpx.get(f"{vllm_server.url}/v1/models", headers=hooli).status_code == 200
    listed = admin.list_keys("hooli")
    assert [k["prefix"] for k in listed] == [issued["prefix"]] and "key" not in listed[0]
    admin.revoke_key("hooli", issued["prefix"], reason="rotated")
    assert httpx.get(f"{vllm_server.url}/v1/models", headers=hooli).status_code == 401


def _admin_routes(server) -> list[tuple[str, str]]:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    values = {
        "tenant": "acme",
        "name": "support",
        "version": "1",
        "prefix": "llk_abcdefgh",
        "run_id": "1",
        "job_id": "1",
        "session_id": "1",
    }
    return [
        (method.upper(), path.format(**values))
        for path, methods in spec["paths"].items()
        if path.startswith("/admin/")
        for method in methods
    ]


def test_every_admin_route_refuses_tenant_keys_and_anonymous_calls(vllm_server):
    routes = _admin_routes(vllm_server)
    assert len(routes) >= 21  # the walk covers the whole admin API
    tenant = {"Authorization": f"Bearer {vllm_server.tenant_keys['acme']}"}
    for method, path in routes:
        url = f"{vllm_server.url}{path}"
        anonymous = httpx.request(method, url, timeout=10)
        assert anonymous.status_code == 401, (method, path)
        refused = httpx.request(method, url, headers=tenant, timeout=10)
        assert refused.status_code == 403, (method, path)
        assert refused.json()["error"]["code"] == "forbidden"


def test_admin_errors_use_the_openai_shape(admin, vllm_server):
    with pytest.raises(AdminApiError) as missing:
        admin.promote(GOOD, 99)
    assert missing.value.status == 404
    with pytest.raises(AdminApiError) as conflict:
        admin.promote(GOOD, 1, expected_live=7)
    assert conflict.value.status == 409 and "re-read it" in conflict.value.message
    response = httpx.post(
        f"{vllm_server.url}/admin/v1/adapters/{GOOD}/promote",
        json={"version": 0},
        headers=ADMIN_HEADERS,
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "version"
    with pytest.raises(AdminApiError) as bad_name:
        admin.create_adapter("acme/Bad Name")
    assert bad_name.value.status == 400
