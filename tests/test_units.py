"""Small pieces on their own: names, routing, settings, text streaming, stream merging."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from loraloop.adapters.names import ModelRef, parse_model_ref
from loraloop.adapters.routing_state import RoutingState
from loraloop.adapters.versions import AdapterRecord, VersionRecord
from loraloop.serve.engine.reference import IncrementalText
from loraloop.serve.errors import AdapterNotFound
from loraloop.serve.openai.service import CacheSalts
from loraloop.serve.routing import RoutingSnapshot
from loraloop.serve.settings import ServeSettings
from loraloop.serve.streams import merge_indexed
from loraloop.serve.token_budget import TokenBudget

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize("text, expected", [
    ("acme/support", ModelRef("acme/support", None)),
    ("acme/support@12", ModelRef("acme/support", 12)),
    ("a.b_c-d/e9", ModelRef("a.b_c-d/e9", None)),
])
def test_model_refs(text, expected):
    assert parse_model_ref(text) == expected


@pytest.mark.parametrize("text", [
    "acme", "Acme/support", "acme/support@0", "acme/support@x", "../acme/x", "/abs/path",
    "acme/sup port", "acme/-x", "acme//x", "acme/x/y", "a" * 64 + "/x", "acme/x@01",
])
def test_invalid_model_refs(text):
    assert parse_model_ref(text) is None


def _routing_state(**pointers) -> RoutingState:
    """a/one: v1 live (v2 canary when asked); b/two: v1 live; lora ids 1, 2, 3."""
    versions = [("a/one", 1), ("a/one", 2), ("b/two", 1)]
    servable = tuple(
        VersionRecord(adapter_id, number, "live", lora_id, "0" * 64, f"sha256/{lora_id}", "f",
                      None, 8, 8.0, ("q_proj",), 1, "upload", None, {}, {}, NOW, "t")
        for lora_id, (adapter_id, number) in enumerate(versions, start=1)
    )
    adapters = (
        AdapterRecord("a/one", None, NOW, "t", 1, pointers.get("canary"),
                      pointers.get("percent"), 2),
        AdapterRecord("b/two", None, NOW, "t", 1, None, None, 1),
    )
    return RoutingState(7, adapters, servable, {})


def test_routing_resolves_base_live_and_pinned(tmp_path):
    snapshot = RoutingSnapshot.from_state("base", _routing_state(), lambda key: tmp_path / key)
    assert snapshot.revision == 7
    assert snapshot.resolve("base") is None
    one = snapshot.resolve("a/one")
    assert (one.adapter_id, one.version, one.served_name) == ("a/one", 1, "a/one@1")
    assert one.path == tmp_path / "sha256/1"
    assert snapshot.resolve("a/one@2").lora_int_id == 2
    assert snapshot.resolve("b/two").lora_int_id == 3
    for unknown in ("a/one@3", "c/three", "not a name"):
        with pytest.raises(AdapterNotFound):
            snapshot.resolve(unknown)


def test_routing_confines_a_tenant_to_its_own_adapters(tmp_path):
    snapshot = RoutingSnapshot.from_state("base", _routing_state(), lambda key: tmp_path / key)
    assert snapshot.resolve("a/one", tenant="a").version == 1
    assert snapshot.resolve("base", tenant="a") is None
    for foreign in ("b/two", "b/two@1"):
        with pytest.raises(AdapterNotFound):
            snapshot.resolve(foreign, tenant="a")
    assert [r.adapter_id for r in snapshot.live_adapters("a")] == ["a/one"]


def test_routing_sends_the_canary_its_share(tmp_path):
    state = _routing_state(canary=2, percent=25)
    snapshot = RoutingSnapshot.from_state("base", state, lambda key: tmp_path / key)
    assert snapshot.resolve("a/one", draw=lambda: 0.2499).version == 2
    assert snapshot.resolve("a/one", draw=lambda: 0.25).version == 1
    assert snapshot.resolve("a/one@1", draw=lambda: 0.0).version == 1  # pinned: never diverted
    assert [r.served_name for r in snapshot.routed_adapters()] == ["a/one@1", "b/two@1",
                                                                    "a/one@2"]


def test_settings_refuse_unsafe_credentials():
    with pytest.raises(ValidationError, match="auth is off but the server would listen on"):
        ServeSettings(model="m", host="0.0.0.0", auth=False)
    with pytest.raises(ValidationError, match="LORALOOP_ADMIN_KEY"):
        ServeSettings(model="m")
    with pytest.raises(ValidationError, match="at least 16 characters"):
        ServeSettings(model="m", admin_key="short")
    assert ServeSettings(model="m", auth=False).host == "127.0.0.1"
    assert ServeSettings(model="m", host="0.0.0.0", admin_key="k" * 16).auth


def test_settings_refuse_inconsistent_values():
    with pytest.raises(ValidationError, match="max_cpu_loras"):
        ServeSettings(model="m", auth=False, max_loras=8, max_cpu_loras=4)
    with pytest.raises(ValidationError, match="max_lora_rank"):
        ServeSettings(model="m", auth=False, max_lora_rank=7)
    with pytest.raises(ValidationError, match="default_max_tokens"):
        ServeSettings(model="m", auth=False, limits={"max_tokens": 10, "default_max_tokens": 20})


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("LORALOOP_MODEL", "/models/x")
    monkeypatch.setenv("LORALOOP_LIMITS__MAX_N", "3")
    monkeypatch.setenv("LORALOOP_ADMIN_KEY", "an-admin-key-of-16+")
    settings = ServeSettings(port=9000)
    assert (settings.model, settings.port, settings.limits.max_n) == ("/models/x", 9000, 3)
    assert settings.base_model_name == "x"
    assert settings.admin_key.get_secret_value() == "an-admin-key-of-16+"
    assert "an-admin-key" not in repr(settings)  # the secret stays out of logs


class CharTokenizer:
    """Token i is chr(i); 0xFFFD stands for half a character."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(map(chr, ids))


def stream_text(text: str, stop: tuple[str, ...]) -> tuple[list[str], bool]:
    incremental, ids, deltas = IncrementalText(CharTokenizer(), stop), [], []
    for i, ch in enumerate(text):
        ids.append(ord(ch))
        delta, stopped = incremental.step(ids, final=i == len(text) - 1)
        deltas.append(delta)
        if stopped:
            return deltas, True
    return deltas, False


def test_incremental_text_holds_back_possible_stop_strings():
    deltas, stopped = stream_text("hello world", stop=("wor",))
    assert stopped and "".join(deltas) == "hello "
    assert all("w" not in d for d in deltas)


def test_incremental_text_without_stop_emits_everything():
    deltas, stopped = stream_text("hello", stop=())
    assert not stopped and deltas == list("hello")


def test_incremental_text_withholds_a_trailing_half_character():
    deltas, _ = stream_text("ab\ufffd", stop=())
    assert "".join(deltas) == "ab"


def test_merge_indexed_interleaves_and_tags():
    async def numbers(prefix: str, count: int):
        for i in range(count):
            await asyncio.sleep(0)
            yield f"{prefix}{i}"

    async def run():
        return [item async for item in merge_indexed([numbers("a", 3), numbers("b", 2)])]

    merged = asyncio.run(run())
    assert sorted(merged) == [(0, "a0"), (0, "a1"), (0, "a2"), (1, "b0"), (1, "b1")]
    assert [v for i, v in merged if i == 0] == ["a0", "a1", "a2"]


def test_merge_indexed_closes_every_stream_when_left_early():
    closed = []

    async def endless(name: str):
        try:
            while True:
                await asyncio.sleep(0)
                yield name
        finally:
            closed.append(name)

    async def run():
        merged = merge_indexed([endless("x"), endless("y")])
        await anext(merged)
        await merged.aclose()

    asyncio.run(run())
    assert sorted(closed) == ["x", "y"]


def test_merge_indexed_raises_a_stream_error():
    async def failing():
        yield 1
        raise RuntimeError("engine fell over")

    async def ok():
        yield 2

    async def run():
        return [item async for item in merge_indexed([failing(), ok()])]

    with pytest.raises(RuntimeError, match="engine fell over"):
        asyncio.run(run())


def test_cli_help_lists_the_commands():
    from typer.testing import CliRunner

    from loraloop.serve.cli import app

    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "demo-model", "demo-adapter"):
        assert command in result.output


def test_prefix_cache_salts_separate_tenants():
    salts = CacheSalts()
    acme, globex, operators = salts.of("acme"), salts.of("globex"), salts.of(None)
    assert len({acme, globex, operators}) == 3
    assert salts.of("acme") == acme  # stable, so a tenant still reuses its own cache
    assert CacheSalts().of("acme") != acme  # keyed per process: not computable by clients


def test_token_budget_refills_and_refuses_when_spent():
    now = [0.0]
    budget = TokenBudget(tokens_per_minute=600, clock=lambda: now[0])  # 10 tokens a second
    assert budget.wait_s("acme") == 0
    budget.spend("acme", 700)  # one long answer overdraws the bucket
    assert budget.wait_s("acme") == 11  # -100 tokens: 10 s back to zero, then one more
    assert budget.wait_s("globex") == 0  # other tenants keep their own budget
    now[0] = 11.0
    assert budget.wait_s("acme") == 0
    now[0] = 1000.0
    budget.spend("acme", 0)
    assert budget._level("acme") == 600  # never above one minute's worth
