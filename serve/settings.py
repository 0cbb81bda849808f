"""The server's settings: one object per process, from CLI flags over LORALOOP_* variables.

Validated once at start-up; every refusal says which setting to change and how.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from loraloop.adapters.judge_keys import (
    DEFAULT_KEY_VARIABLES,
    check_key_variables,
    parse_key_variables,
)

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
GiB = 1 << 30

# The ranks vLLM's LoRA kernels are built for.
SUPPORTED_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


class RequestLimits(BaseModel):
    """Upper bounds on what one API request may ask for."""

    max_tokens: int = Field(1024, ge=1, description="largest max_tokens a request may set")
    default_max_tokens: int = Field(256, ge=1, description="used when a request sets none")
    max_n: int = Field(8, ge=1, le=128)
    max_prompts: int = Field(16, ge=1, le=1024, description="prompts in one /v1/completions")
    max_stop: int = Field(4, ge=0, le=64, description="stop sequences per request")
    max_stop_chars: int = Field(64, ge=1)
    max_top_logprobs: int = Field(20, ge=0, le=100)
    max_messages: int = Field(256, ge=1)
    max_prompt_chars: int = Field(200_000, ge=1, description="characters over all prompt text")
    max_tools: int = Field(64, ge=0, le=1024, description="tool definitions per request")
    max_schema_bytes: int = Field(
        64 << 10, ge=64, description="largest JSON Schema (response_format, a tool's parameters)"
    )
    max_schema_depth: int = Field(32, ge=2, le=256, description="deepest nesting in a schema")
    # What a grammar costs to compile grows faster than the schema: 500 optional properties
    # compiled in 0.14 s, 1,000 in 5.7 s, 2,000 in 44 s (xgrammar, demo tokenizer, 1 core).
    max_schema_properties: int = Field(
        256, ge=1, le=10_000, description="properties over all objects of one schema"
    )
    max_schema_compile_s: float = Field(
        5.0,
        gt=0,
        le=600,
        description="time a new schema's grammar may take to compile; "
        "beyond it the request is refused",
    )
    max_schema_repeats: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="product of nested counted repeats in a "
        "schema's patterns (and string lengths), e.g. (a{1,50}){1,50} is 2,500",
    )
    max_logit_bias: int = Field(300, ge=0, le=100_000, description="logit_bias entries")

    @model_validator(mode="after")
    def _default_within_bound(self) -> RequestLimits:
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(
                f"limits.default_max_tokens ({self.default_max_tokens}) exceeds "
                f"limits.max_tokens ({self.max_tokens}); lower the default or raise the bound"
            )
        return self


class ShadowSettings(BaseModel):
    """What shadow answers may cost. During a rollout the other version answers a sample of
    finished requests again, out of band, for the judge; these never wait for a place."""

    model_config = ConfigDict(extra="forbid")

    queue_size: int = Field(
        64,
        ge=1,
        le=10_000,
        description="finished requests waiting for their shadow answer; "
        "beyond it new ones are dropped",
    )
    max_active_requests: int = Field(
        8,
        ge=0,
        le=10_000,
        description="a shadow starts only while the engine generates at "
        "most this many sequences; otherwise it is dropped",
    )
    concurrency: int = Field(1, ge=1, le=8, description="shadow answers generated at once")
    retention_s: float = Field(
        7 * 24 * 3600,
        gt=0,
        le=366 * 24 * 3600,
        description="seconds a shadow comparison "
        "keeps the user's prompt and both answers, whatever the adapter's policy (once "
        "judged they are kept only where the policy has record_completions); the verdict stays",
    )


class MetricsSettings(BaseModel):
    """Who may read /metrics and what its labels reveal."""

    model_config = ConfigDict(extra="forbid")

    token: SecretStr | None = Field(
        None,
        description="when set, /metrics answers only requests that send it as a bearer "
        "token (Prometheus: authorization credentials); otherwise anyone who reaches the port",
    )
    adapter_names: bool = Field(
        False,
        description="label series with adapter ids (tenant/name); otherwise with "
        "'a-' and the first 12 hex digits of the id's SHA-256, which names no tenant",
    )

    @field_validator("token")
    @classmethod
    def _long_enough(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value()) < 16:
            raise ValueError("LORALOOP_METRICS__TOKEN must be at least 16 characters long")
        return token


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LORALOOP_", env_nested_delimiter="__", extra="forbid"
    )

    model: str = Field(description="base model: a local directory or a hub id")
    served_model_name: str | None = Field(None, description="defaults to the model's name")
    engine: Literal["vllm", "reference"] = "vllm"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    data_dir: Path = Field(Path(".loraloop"), description="registry database and adapter weights")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the registry; default: SQLite in data_dir"
    )
    registry_poll_s: float = Field(
        0.5, gt=0, le=10, description="how often to look for registry writes by other processes"
    )
    allowed_adapter_roots: list[Path] = Field(
        default_factory=list, description="server directories versions may be registered from"
    )
    max_adapter_bytes: int = Field(GiB, ge=1 << 10, description="largest adapter accepted")

    log_format: Literal["text", "json"] = Field(
        "text", description="json: one object per line, for log pipelines"
    )
    auth: bool = Field(True, description="require API keys; off only on a loopback address")
    admin_key: SecretStr | None = Field(None, description="the operators' credential")
    console_idle_minutes: int = Field(
        30, ge=1, le=24 * 60, description="a console session ends after this long unused"
    )
    judge_key_variables: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULT_KEY_VARIABLES,
        description="environment variables an LLM judge policy may name "
        "as its key (names, or prefixes ending in *, separated by commas); the same as the "
        "trainer's",
    )

    max_model_len: int = Field(2048, ge=32)
    max_loras: int = Field(8, ge=1, description="adapters resident in the engine at once")
    max_cpu_loras: int = Field(64, ge=1, description="adapters cached in host memory")
    max_lora_rank: int = 64
    exit_on_engine_loss: bool = Field(
        False,
        description="exit with status 4 once the engine is lost, so that systemd or a "
        "container runtime restarts the process (Kubernetes restarts it through /health)",
    )
    tool_call_parser: str | None = Field(
        None,
        description="the base model's tool-call format, by vLLM's parser name (hermes, "
        "llama3_json, mistral...); without one, requests with tools are refused",
    )
    dtype: str = "auto"
    enforce_eager: bool = False
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    kv_cache_gib: float | None = Field(None, gt=0, description="KV cache size; CPU engines")
    max_pending_requests: int = Field(
        64, ge=1, description="requests admitted at once; beyond it clients get 503"
    )
    max_tenant_requests: int = Field(
        32, ge=1, description="one tenant's requests admitted at once; beyond it it gets 429"
    )
    tenant_tokens_per_minute: int | None = Field(
        None, ge=1, description="tokens one tenant may generate per minute (429 beyond)"
    )
    max_request_bytes: int = Field(
        16 << 20, ge=1 << 10, description="largest request body (uploads: max_adapter_bytes)"
    )
    limits: RequestLimits = Field(default_factory=RequestLimits)
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @property
    def base_model_name(self) -> str:
        return self.served_model_name or self.model.rstrip("/").rsplit("/", 1)[-1]

    _judge_keys_listed = field_validator("judge_key_variables", mode="before")(parse_key_variables)
    _judge_keys_allowed = field_validator("judge_key_variables")(check_key_variables)

    @field_validator("max_lora_rank")
    @classmethod
    def _rank_supported(cls, rank: int) -> int:
        if rank not in SUPPORTED_LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {SUPPORTED_LORA_RANKS}")
        return rank

    @field_validator("tool_call_parser")
    @classmethod
    def _parser_known(cls, name: str | None) -> str | None:
        if name is None:
            return None
        from vllm.tool_parsers import ToolParserManager  # vLLM: only when a format is named

        known = sorted({*ToolParserManager.tool_parsers, *ToolParserManager.lazy_parsers})
        if name not in known:
            raise ValueError(f"tool_call_parser '{name}' is not one of vLLM's: {', '.join(known)}")
        return name

    @model_validator(mode="after")
    def _cache_holds_the_slots(self) -> ServeSettings:
        if self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be at least "
                f"max_loras ({self.max_loras})"
            )
        return self

    @model_validator(mode="after")
    def _credentials_safe(self) -> ServeSettings:
        if not self.auth and self.host not in LOOPBACK_HOSTS:
            raise ValueError(
                f"auth is off but the server would listen on {self.host}: anyone who reaches "
                "it could use and change every adapter. Bind to 127.0.0.1, or keep auth on "
                "and set LORALOOP_ADMIN_KEY"
            )
        if self.auth and self.admin_key is None:
            raise ValueError(
                "auth is on but no admin credential is set: set LORALOOP_ADMIN_KEY (at least "
                "16 characters), or pass --no-auth for a demo on 127.0.0.1"
            )
        if self.admin_key is not None and len(self.admin_key.get_secret_value()) < 16:
            raise ValueError("LORALOOP_ADMIN_KEY must be at least 16 characters long")
        return self
