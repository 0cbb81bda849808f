"""Server settings: validated at start-up, refusing unsafe values."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from loraloop.serve.settings import ServeSettings


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


def test_tool_call_parser_must_be_one_of_vllms():
    with pytest.raises(ValidationError, match=r"not one of vLLM's: .*hermes"):
        ServeSettings(model="m", auth=False, tool_call_parser="nope")
    assert ServeSettings(model="m", auth=False, tool_call_parser="hermes").tool_call_parser


def test_shadow_settings_are_bounded(monkeypatch):
    monkeypatch.setenv("LORALOOP_SHADOW__QUEUE_SIZE", "5")
    shadow = ServeSettings(model="m", auth=False).shadow
    assert (shadow.queue_size, shadow.max_active_requests, shadow.concurrency) == (5, 8, 1)
    for refused in (
        {"queue_size": 0},
        {"concurrency": 9},
        {"max_active_requests": -1},
        {"queue_sise": 5},
    ):
        with pytest.raises(ValidationError, match="shadow"):
            ServeSettings(model="m", auth=False, shadow=refused)
