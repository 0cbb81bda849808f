"""Shared fixtures: a generated model and adapters, and real servers started on them.

One vLLM server serves the whole session (engine start-up takes tens of seconds). Adapters
reach it as operators' do: tenants, keys, adapters and versions through the admin API.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from transformers import AutoTokenizer

from loraloop.adapters.prompts import StoredPrompt
from loraloop.adapters.training_policy import TrainingPolicy
from loraloop.serve.cli.client import AdminClient
from loraloop.serve.cli.demo import DEMO_POLICY, MARKER, answers, user_messages
from loraloop.trainer.demo_model import (
    SUCCESSOR_SHAPE,
    build_demo_model,
    build_random_adapter,
)
from loraloop.trainer.pairs import PreferencePair

from .support import BACKENDS, ServerProcess, database_url

# tenant/name -> seed; eight adapters across three tenants.
ADAPTER_SEEDS = {
    "acme/support": 1,
    "acme/sales": 2,
    "acme/legal": 3,
    "globex/chat": 4,
    "globex/code": 5,
    "globex/docs": 6,
    "initech/tps": 7,
    "initech/memo": 8,
}
BASE_MODEL_NAME = "demo"
ADMIN_KEY = "test-admin-key-0123456789"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}

# float32 so greedy decoding in vLLM matches transformers + PEFT token for token.
ENGINE_ARGS = [
    "--dtype",
    "float32",
    "--enforce-eager",
    "--max-model-len",
    "1024",
    "--kv-cache-gib",
    "1",
    "--served-model-name",
    BASE_MODEL_NAME,
]
# Fewer engine slots and host-cache places than adapters: requests keep swapping adapters in
# and out, and evicted ones are read again from their files.
LORA_CACHE_ARGS = ["--max-loras", "2", "--max-cpu-loras", "4"]


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("model") / "demo")


@pytest.fixture(scope="session")
def successor_model(tmp_path_factory) -> Path:
    """A second demo base: the demo model's tokenizer, another shape, other weights."""
    return build_demo_model(
        tmp_path_factory.mktemp("model") / "successor", seed=1, shape=SUCCESSOR_SHAPE
    )


@pytest.fixture(scope="session")
def marker_teacher(demo_model, tmp_path_factory) -> Path:
    """A first adapter on the demo base whose answers begin with MARKER (taught by DPO on 48
    chat pairs): the version rollouts and transfers carry around."""
    from loraloop.trainer.dpo import train_dpo  # TRL loads slowly; only tests that need it

    messages, texts = user_messages(48, seed=7), answers(48, seed=7)
    pairs = [
        PreferencePair(StoredPrompt.chat([("user", message)]), f"{MARKER} {text}", text)
        for message, text in zip(messages, texts, strict=True)
    ]
    output = tmp_path_factory.mktemp("teacher") / "marker"
    # A gentler rate than the DPO tests' keeps the answers after the marker in words.
    train_dpo(
        demo_model,
        None,
        pairs,
        TrainingPolicy.model_validate({**DEMO_POLICY, "learning_rate": 0.005}),
        output,
    )
    return output


@pytest.fixture(scope="session")
def tokenizer(demo_model):
    return AutoTokenizer.from_pretrained(demo_model)


@pytest.fixture(scope="session")
def adapter_dirs(demo_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: build_random_adapter(demo_model, root / name.replace("/", "__"), seed=seed)
        for name, seed in ADAPTER_SEEDS.items()
    }


def provision(server: ServerProcess, adapters: dict[str, Path]) -> dict[str, str]:
    """Tenants, one key each, and every adapter registered and promoted to version 1.
    Returns each tenant's key."""
    tenants = sorted({name.split("/")[0] for name in adapters})
    with AdminClient(server.url, ADMIN_KEY, actor="conftest") as admin:
        keys = {}
        for tenant in tenants:
            admin.create_tenant(tenant)
            keys[tenant] = admin.issue_key(tenant, label="tests")["key"]
        for name, directory in adapters.items():
            admin.create_adapter(name)
            version, _ = admin.register(name, directory)
            admin.promote(name, version["version"], expected_live=0)
    return keys


def provisioned(server: ServerProcess, adapters: dict[str, Path]) -> Iterator[ServerProcess]:
    """For a fixture to yield from: the server ready and provisioned (see `provision`), then
    stopped however the fixture ends."""
    try:
        server.wait_ready()
        server.tenant_keys = provision(server, adapters)
        yield server
    finally:
        server.stop()


def start_server(
    args: list[str], log_path: Path, data_dir: Path, env: dict[str, str] | None = None
) -> ServerProcess:
    return ServerProcess(
        args, log_path, env={"LORALOOP_ADMIN_KEY": ADMIN_KEY, **(env or {})}, data_dir=data_dir
    )


@pytest.fixture(scope="session")
def adapter_root(tmp_path_factory) -> Path:
    """The one server directory the session server may register versions from."""
    return tmp_path_factory.mktemp("allowed-root")


@pytest.fixture(scope="session")
def vllm_server(demo_model, adapter_dirs, adapter_root, tmp_path_factory):
    server = start_server(
        [
            "--model",
            str(demo_model),
            *ENGINE_ARGS,
            *LORA_CACHE_ARGS,
            "--allowed-adapter-root",
            str(adapter_root),
            "--tool-call-parser",
            "hermes",
        ],
        tmp_path_factory.mktemp("logs") / "vllm-server.log",
        tmp_path_factory.mktemp("vllm-data"),
        env={"LORALOOP_LIMITS__MAX_TOKENS": "1000"},
    )
    yield from provisioned(server, adapter_dirs)


@pytest.fixture(scope="session")
def client(vllm_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{vllm_server.url}/v1", api_key=ADMIN_KEY, max_retries=0)


def async_client(server: ServerProcess) -> openai.AsyncOpenAI:
    """A new async client: each asyncio.run() needs its own, bound to its own loop."""
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=ADMIN_KEY, max_retries=0)


@pytest.fixture(params=BACKENDS)
def database(request, tmp_path) -> Iterator[str]:
    """The URL of an empty registry database, once per backend."""
    with database_url(request.param, tmp_path) as url:
        yield url
