"""The trainer's settings, from flags over LORALOOP_* variables: the registry it shares with
the servers (same variable names, so one ConfigMap serves both) and its own loop timing."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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
        60.0, ge=2, description="a run's claim on its feedback lapses this long after the "
        "trainer last renewed it (a killed trainer's work is picked up after this)"
    )
    server_url: str | None = Field(
        None, description="a server of the registry's, for on-policy sampling (policies with "
        "`sampling`): in Kubernetes the server container beside, http://127.0.0.1:8000"
    )
    admin_key: SecretStr | None = Field(
        None, description="the operators' credential, to sample any tenant's adapter"
    )
    trainer_worker: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}"[:128],
        description="this trainer's name in runs and the audit trail",
    )

    @property
    def base_model_name(self) -> str:
        return self.served_model_name or self.model.rstrip("/").rsplit("/", 1)[-1]
