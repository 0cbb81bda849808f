"""The trainer's settings, from flags over LORALOOP_* variables: the registry it shares with
the servers (same variable names, so one ConfigMap serves both) and its own loop timing."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from loraloop.adapters.judge_keys import (
    DEFAULT_KEY_VARIABLES,
    check_key_variables,
    parse_key_variables,
)
from loraloop.adapters.names import BASE_NAME_HELP, is_valid_base_name


class TrainerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORALOOP_", extra="ignore")

    model: str = Field(description="the base model the servers serve: a directory or hub id")
    served_model_name: str | None = None
    data_dir: Path = Path(".loraloop")
    database_url: str | None = None
    max_lora_rank: int = 64
    max_adapter_bytes: int = Field(1 << 30, ge=1 << 10)
    trainer_poll_s: float = Field(2.0, gt=0, description="how often to look for due work")
    trainer_lease_s: float = Field(
        60.0,
        ge=2,
        description="a run's claim on its feedback lapses this long after the "
        "trainer last renewed it (a killed trainer's work is picked up after this)",
    )
    trainer_device: Literal["auto", "cuda", "cpu"] = Field(
        "auto",
        description="where the trainer loads the base model and trains: auto is the "
        "first CUDA device when there is one, else the CPU",
    )
    trainer_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="the base model's weights in training and scoring (LoRA weights "
        "stay float32): auto is bfloat16 on a GPU that supports it, float16 with loss "
        "scaling on one that does not, float32 on the CPU",
    )
    trainer_memory_limit_bytes: int | None = Field(
        None,
        ge=1 << 20,
        description="memory a run may use on the trainer's device, weights "
        "included (default: what is free there); a run whose plan needs more is refused "
        "before training",
    )
    rollout_poll_s: float = Field(
        2.0,
        gt=0,
        le=300,
        description="how often the rollout driver judges new shadow pairs and decides",
    )
    rollout_lease_s: float = Field(
        30.0,
        ge=2,
        le=3600,
        description="a rollout's driver lapses this long after it last "
        "looked (another trainer then drives it)",
    )
    server_url: str | None = Field(
        None,
        description="a server of the registry's, for on-policy sampling (policies with "
        "`sampling`): in Kubernetes the server container beside, http://127.0.0.1:8000",
    )
    admin_key: SecretStr | None = Field(
        None, description="the operators' credential, to sample any tenant's adapter"
    )
    transfer_targets: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="the base models adapters may be carried to, by "
        "name: NAME=MODEL pairs separated by commas (MODEL a directory or hub id), e.g. "
        "successor=/models/next; transfer jobs name the target, never a path",
    )
    transfer_lease_s: float = Field(
        60.0,
        ge=2,
        le=3600,
        description="a transfer job's lease lapses this long after the "
        "trainer last renewed it (another trainer then starts it again)",
    )
    judge_key_variables: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULT_KEY_VARIABLES,
        description="environment variables an LLM judge may send as its "
        "key (names, or prefixes ending in *, separated by commas); the same as the servers'",
    )
    trainer_worker: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}"[:128],
        description="this trainer's name in runs and the audit trail",
    )

    _judge_keys_listed = field_validator("judge_key_variables", mode="before")(parse_key_variables)
    _judge_keys_allowed = field_validator("judge_key_variables")(check_key_variables)

    @field_validator("transfer_targets", mode="before")
    @classmethod
    def _targets(cls, value: object) -> object:
        """NAME=MODEL pairs from the environment or repeated flags; a JSON object too."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                return json.loads(text)
            value = [pair for pair in text.split(",") if pair.strip()]
        if isinstance(value, list):
            pairs = {}
            for pair in value:
                name, sep, model = str(pair).partition("=")
                if not sep or not model.strip():
                    raise ValueError(f"'{pair}' is not NAME=MODEL, e.g. successor=/models/next")
                pairs[name.strip()] = model.strip()
            return pairs
        return value

    @field_validator("transfer_targets")
    @classmethod
    def _target_names(cls, targets: dict[str, str]) -> dict[str, str]:
        bad = [name for name in targets if not is_valid_base_name(name)]
        if bad:
            raise ValueError(f"{', '.join(map(repr, bad))}: {BASE_NAME_HELP}")
        return targets

    @property
    def base_model_name(self) -> str:
        return self.served_model_name or self.model.rstrip("/").rsplit("/", 1)[-1]
