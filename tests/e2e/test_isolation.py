"""Isolation between requests: no adapter, however it is built, changes another request's
status or output. Adapters whose effect cannot stay finite in the base model's dtype are
refused at registration; those that pass, even at the edge of the bound, only ever change
their own requests' answers. And a non-finite number the model still computes fails only
the request it belongs to, never the JSON encoder.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from loraloop.adapters.base_model import BaseModelInfo
from loraloop.adapters.registry import open_registry
from loraloop.adapters.validation import CONFIG_FILE, WEIGHTS_FILE
from loraloop.serve.cli.client import AdminApiError, AdminClient
from loraloop.serve.engine.interface import GenerationDelta, TokenLogprob
from loraloop.serve.errors import NonFiniteOutput
from loraloop.serve.openai import responses
from loraloop.serve.openai.service import Generation
from loraloop.trainer.demo_model import build_random_adapter

from ..conftest import ADMIN_KEY, BASE_MODEL_NAME, provision

RUN = uuid.uuid4().hex[:8]  # the session server outlives this module: names must be fresh
VICTIM, ATTACKER = f"iso-victim-{RUN}", f"iso-attacker-{RUN}"
MAX_RANK = 64  # the session server's max_lora_rank
ALL_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
EDGE = 0.99  # poisoned adapters sit this close under the registration bound
ROUNDS = 2
CHAT = {"max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 2}
COMPLETION = {"max_tokens": 8, "temperature": 0, "logprobs": 1}


# --- Poisoned adapter files -------------------------------------------------------------------


def gains(tensors: dict[str, torch.Tensor], scale: float) -> dict[str, float]:
    """The largest spectral norm over modules of A, scale*B and scale*B@A, formed in full."""
    found = {"A": 0.0, "sB": 0.0, "sBA": 0.0}
    for key in (k for k in tensors if "lora_A" in k):
        a, b = tensors[key].double(), tensors[key.replace("lora_A", "lora_B")].double()
        for name, matrix in (("A", a), ("sB", scale * b), ("sBA", scale * b @ a)):
            found[name] = max(found[name], float(torch.linalg.matrix_norm(matrix, ord=2)))
    return found


def write_adapter(template: Path, target: Path, tensors: dict[str, torch.Tensor], **config) -> Path:
    """`template`'s PEFT config with `config` changed, and these factors."""
    target.mkdir(parents=True)
    settings = {**json.loads((template / CONFIG_FILE).read_text()), **config}
    (target / CONFIG_FILE).write_text(json.dumps(settings))
    save_file({k: v.contiguous() for k, v in tensors.items()}, target / WEIGHTS_FILE)
    return target


def factors(base: BaseModelInfo, rank: int, make_a, make_b) -> dict[str, torch.Tensor]:
    """A (rank, in) and B (out, rank) for every linear module of every layer."""
    tensors = {}
    for module, (out_features, in_features) in base.linear_shapes.items():
        prefix = f"base_model.model.{module}"
        tensors[f"{prefix}.lora_A.weight"] = make_a(rank, in_features)
        tensors[f"{prefix}.lora_B.weight"] = make_b(out_features, rank)
    return tensors


def to_edge(tensors, rank: int, bound: float) -> float:
    """The lora_alpha that puts the binding gain EDGE of the way to the bound."""
    found = gains(tensors, 1.0)
    assert found["A"] <= EDGE * bound
    return rank * EDGE * bound / max(found["sB"], found["sBA"])


def poisoned_adapters(demo_model: Path, root: Path) -> dict[str, Path]:
    base = BaseModelInfo.load(demo_model)
    bound, generator = base.max_gain, torch.Generator().manual_seed(13)
    template = build_random_adapter(demo_model, root / "template", seed=13)
    demo = load_file(template / WEIGHTS_FILE)

    def normal(*shape):
        return torch.randn(shape, generator=generator)

    def constant(value: float, gain: float):
        # A matrix of one value has a single singular value: value * sqrt(rows * cols).
        return lambda *shape: torch.full(shape, value * gain / math.sqrt(shape[0] * shape[1]))

    everywhere = {"target_modules": list(ALL_MODULES)}
    built = {"benign": build_random_adapter(demo_model, root / "benign", seed=15)}
    built["edge-alpha"] = write_adapter(
        template, root / "alpha", demo, lora_alpha=to_edge(demo, 8, bound)
    )
    huge = factors(base, 8, normal, normal)
    huge = {k: v * (to_edge(huge, 8, bound) / 8 if "lora_B" in k else 1) for k, v in huge.items()}
    built["edge-weights"] = write_adapter(
        template, root / "weights", huge, r=8, lora_alpha=8, **everywhere
    )
    ranked = factors(base, MAX_RANK, normal, normal)
    built["edge-rank"] = write_adapter(
        template,
        root / "rank",
        ranked,
        r=MAX_RANK,
        lora_alpha=to_edge(ranked, MAX_RANK, bound),
        **everywhere,
    )
    for name, a_gain, sign in [
        ("edge-positive", 1.0, 1),
        ("edge-negative", 1.0, -1),
        ("edge-big-a", 0.98 * bound, -1),
    ]:
        aligned = factors(base, 8, constant(1, a_gain), constant(sign, 1.0))
        built[name] = write_adapter(
            template, root / name, aligned, r=8, lora_alpha=to_edge(aligned, 8, bound), **everywhere
        )
    return built


def refused_adapters(demo_model: Path, root: Path) -> dict[str, Path]:
    template = build_random_adapter(demo_model, root / "refused-template", seed=14)
    tensors = load_file(template / WEIGHTS_FILE)
    huge_b = {k: torch.full_like(v, 1e30) if "lora_B" in k else v for k, v in tensors.items()}
    return {
        "alpha-1e30": write_adapter(template, root / "alpha-1e30", tensors, lora_alpha=1e30),
        "alpha-1e308": write_adapter(template, root / "alpha-1e308", tensors, lora_alpha=1e308),
        "b-1e30": write_adapter(template, root / "b-1e30", huge_b),
    }


# --- The server: two tenants ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tenants(vllm_server, demo_model, tmp_path_factory) -> dict[str, str]:
    """Each tenant's key; the victim owns one ordinary adapter, the attacker every poisoned
    one, all registered and live."""
    root = tmp_path_factory.mktemp("isolation")
    owned = {f"{VICTIM}/own": build_random_adapter(demo_model, root / "own", seed=12)}
    owned |= {f"{ATTACKER}/{n}": d for n, d in poisoned_adapters(demo_model, root).items()}
    return provision(vllm_server, owned)


def victim_jobs() -> list[tuple[str, dict]]:
    question = [{"role": "user", "content": "what is the price of order seven"}]
    return [
        ("/v1/chat/completions", {"model": BASE_MODEL_NAME, "messages": question, **CHAT}),
        ("/v1/completions", {"model": BASE_MODEL_NAME, "prompt": "the refund", **COMPLETION}),
        ("/v1/chat/completions", {"model": f"{VICTIM}/own", "messages": question, **CHAT}),
    ]


def attacker_jobs(adapter: str) -> list[tuple[str, dict]]:
    return [
        (
            "/v1/chat/completions",
            {
                "model": f"{ATTACKER}/{adapter}",
                **CHAT,
                "messages": [{"role": "user", "content": "hello world"}],
            },
        ),
        ("/v1/completions", {"model": f"{ATTACKER}/{adapter}", "prompt": "one two", **COMPLETION}),
    ]


async def _send(http: httpx.AsyncClient, key: str, job: tuple[str, dict]) -> tuple[int, str]:
    """(status, the choices as canonical JSON): text and logprobs, float for float."""
    path, body = job
    response = await http.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
    payload = response.json()  # strict JSON: NaN or Infinity would not parse
    if response.status_code != 200:
        return response.status_code, json.dumps(payload, sort_keys=True)
    return 200, json.dumps(payload["choices"], sort_keys=True)


def _logprobs(choices: str) -> list[float]:
    values = []

    def walk(node):
        if isinstance(node, dict):
            for value in node.values():
                if isinstance(value, float):
                    values.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(choices))
    return values


def assert_same(got: list[tuple[int, str]], alone: list[tuple[int, str]], where: str) -> None:
    for job, ((status, body), (_, expected)) in enumerate(zip(got, alone, strict=True)):
        if (status, body) == (200, expected):
            continue
        drift = max(
            (abs(x - y) for x, y in zip(_logprobs(body), _logprobs(expected), strict=False)),
            default=None,
        )
        raise AssertionError(
            f"{where}: victim job {job} got status {status}, largest logprob "
            f"change {drift}:\n{body[:600]}\nalone:\n{expected[:600]}"
        )


async def _victim(http, keys) -> list[tuple[int, str]]:
    return list(await asyncio.gather(*(_send(http, keys[VICTIM], j) for j in victim_jobs())))


async def _attacker(http, keys, adapter: str) -> list[tuple[int, str]]:
    return list(
        await asyncio.gather(*(_send(http, keys[ATTACKER], j) for j in attacker_jobs(adapter)))
    )


# --- Tests ------------------------------------------------------------------------------------


POISONED = (
    "benign",
    "edge-alpha",
    "edge-weights",
    "edge-rank",
    "edge-positive",
    "edge-negative",
    "edge-big-a",
)


def test_poisoned_adapters_never_change_another_tenants_answers(vllm_server, tenants):
    async def run() -> None:
        async with httpx.AsyncClient(base_url=vllm_server.url, timeout=120) as http:
            alone = await _victim(http, tenants)
            assert [status for status, _ in alone] == [200] * len(alone), alone
            for _ in range(ROUNDS):
                for adapter in POISONED:
                    # Side by side: the attacker's requests share the victim's batches.
                    both = await asyncio.gather(
                        _victim(http, tenants), _attacker(http, tenants, adapter)
                    )
                    assert_same(both[0], alone, f"{adapter}, concurrent")
                    assert all(status == 200 for status, _ in both[1]), both[1]
                    # In turn: whatever the attacker left behind (cache blocks, buffers).
                    assert all(
                        status == 200 for status, _ in await _attacker(http, tenants, adapter)
                    ), adapter
                    assert_same(await _victim(http, tenants), alone, f"{adapter}, after")

    asyncio.run(run())


@pytest.mark.parametrize("refused", ["alpha-1e30", "alpha-1e308", "b-1e30"])
def test_overflowing_adapters_are_refused_and_change_nothing(
    vllm_server, tenants, demo_model, tmp_path, refused
):
    async def victim() -> list[tuple[int, str]]:
        async with httpx.AsyncClient(base_url=vllm_server.url, timeout=120) as http:
            return await _victim(http, tenants)

    before = asyncio.run(victim())
    name = f"{ATTACKER}/{refused}"
    with AdminClient(vllm_server.url, ADMIN_KEY, actor="test-isolation") as admin:
        admin.create_adapter(name)
        with pytest.raises(AdminApiError) as error:
            admin.register(name, refused_adapters(demo_model, tmp_path)[refused])
        assert error.value.status == 400
        assert any(
            "has a gain (spectral norm) of" in p and "lower lora_alpha" in p
            for p in error.value.problems
        ), error.value.problems
        assert admin.list_versions(name) == []
    assert asyncio.run(victim()) == before


@pytest.mark.parametrize(
    ("dtype", "computes_in"), [("float16", torch.float16), ("auto", torch.float32)]
)
def test_the_gain_bound_follows_the_served_dtype(demo_model, tmp_path, dtype, computes_in):
    """The demo checkpoint is float32: served as float16, adapters must stay finite in that."""
    registry = open_registry(
        model=str(demo_model),
        aliases=[],
        data_dir=tmp_path,
        database_url=None,
        max_rank=MAX_RANK,
        max_bytes=1 << 30,
        dtype=dtype,
    )
    try:
        assert registry.adapters.registration_policy.base.compute_dtype == computes_in
    finally:
        registry.db.dispose()


# --- The response guard, on a hand-made generation --------------------------------------------


def generation(*logprobs: float) -> Generation:
    async def events():
        for i, value in enumerate(logprobs):
            top = ((" a", value), (" b", -1.0))
            yield (
                0,
                GenerationDelta(
                    f" t{i}",
                    (i,),
                    (TokenLogprob(f" t{i}", value, top),),
                    "stop" if i == len(logprobs) - 1 else None,
                ),
            )

    return Generation(
        id="cmpl-test",
        created=0,
        model="acme/x@1",
        adapter=None,
        prompt_tokens=1,
        choices=1,
        events=events(),
    )


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_logprob_fails_only_its_request(value):
    with pytest.raises(NonFiniteOutput) as error:
        asyncio.run(responses.chat_completion(generation(-0.5, value), with_logprobs=True))
    assert error.value.status_code == 500 and error.value.code == "non_finite_output"
    assert "'acme/x@1'" in error.value.message

    async def streamed() -> list[str]:
        return [e async for e in responses.completion_events(generation(-0.5, value), False)]

    events = asyncio.run(streamed())
    assert events[-1] == "data: [DONE]\n\n"
    error_event = json.loads(events[-2].removeprefix("data: "))
    assert error_event["error"]["code"] == "non_finite_output"
    assert json.loads(events[0].removeprefix("data: "))["choices"][0]["text"] == " t0"


def test_minus_infinity_logprob_is_reported_at_the_floor():
    whole = asyncio.run(responses.completion(generation(-math.inf, -0.25), with_logprobs=True))
    encoded = json.loads(json.dumps(whole.model_dump(mode="json"), allow_nan=False))
    assert encoded["choices"][0]["logprobs"]["token_logprobs"] == [responses.LOGPROB_FLOOR, -0.25]
    assert encoded["choices"][0]["logprobs"]["top_logprobs"][0][" a"] == responses.LOGPROB_FLOOR
