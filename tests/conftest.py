"""Shared fixtures: a generated model and adapters, and real servers started on them.

One vLLM server serves the whole session (engine start-up takes tens of seconds).
"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from transformers import AutoTokenizer

from loraloop.serve.demo_model import build_demo_model, build_random_adapter

from .server import ServerProcess

# tenant/name -> seed; eight adapters across three tenants.
ADAPTER_SEEDS = {
    "acme/support": 1, "acme/sales": 2, "acme/legal": 3, "globex/chat": 4,
    "globex/code": 5, "globex/docs": 6, "initech/tps": 7, "initech/memo": 8,
}
BROKEN_ADAPTER = "acme/broken"
BASE_MODEL_NAME = "demo"

# float32 so greedy decoding in vLLM matches transformers + PEFT token for token.
ENGINE_ARGS = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "1024",
               "--kv-cache-gib", "1", "--served-model-name", BASE_MODEL_NAME]
# Fewer engine slots and host-cache places than adapters: requests keep swapping adapters in
# and out, and evicted ones are read again from their files.
LORA_CACHE_ARGS = ["--max-loras", "2", "--max-cpu-loras", "4"]


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("model") / "demo")


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


@pytest.fixture(scope="session")
def broken_adapter_dir(adapter_dirs, tmp_path_factory) -> Path:
    """A copy of a good adapter whose weights file is cut in half."""
    broken = tmp_path_factory.mktemp("broken") / "adapter"
    broken.mkdir()
    source = adapter_dirs["acme/support"]
    (broken / "adapter_config.json").write_bytes((source / "adapter_config.json").read_bytes())
    weights = (source / "adapter_model.safetensors").read_bytes()
    (broken / "adapter_model.safetensors").write_bytes(weights[: len(weights) // 2])
    return broken


def adapter_flags(adapters: dict[str, Path]) -> list[str]:
    return [arg for name, path in adapters.items() for arg in ("--adapter", f"{name}={path}")]


@pytest.fixture(scope="session")
def vllm_server(demo_model, adapter_dirs, broken_adapter_dir, tmp_path_factory):
    adapters = {**adapter_dirs, BROKEN_ADAPTER: broken_adapter_dir}
    server = ServerProcess(
        ["--model", str(demo_model), *ENGINE_ARGS, *LORA_CACHE_ARGS, *adapter_flags(adapters)],
        tmp_path_factory.mktemp("logs") / "vllm-server.log",
        env={"LORALOOP_LIMITS__MAX_TOKENS": "1000"},
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def client(vllm_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{vllm_server.url}/v1", api_key="unused", max_retries=0)


def async_client(server: ServerProcess) -> openai.AsyncOpenAI:
    """A new async client: each asyncio.run() needs its own, bound to its own loop."""
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
