"""Names: adapters as clients write them (`tenant/name`, optionally pinned as `tenant/name@7`),
and the files an adapter consists of."""

from __future__ import annotations

import re
from dataclasses import dataclass

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE)
MAX_TAG_CHARS = 256  # the longest value of a version tag

_PART = r"[a-z0-9][a-z0-9._-]{0,62}"
NAME_HELP = "1 to 63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
ADAPTER_ID_HELP = f"write tenant/name, each part {NAME_HELP}"
_ADAPTER_ID = re.compile(rf"(?P<tenant>{_PART})/(?P<name>{_PART})")
_MODEL_REF = re.compile(rf"(?P<adapter>{_PART}/{_PART})(?:@(?P<version>[1-9][0-9]{{0,8}}))?")


@dataclass(frozen=True)
class ModelRef:
    adapter_id: str
    version: int | None  # None: whatever version is live

    @property
    def tenant(self) -> str:
        return self.adapter_id.split("/", 1)[0]


def is_valid_name(name: str) -> bool:
    """One part of an adapter id: a tenant name or an adapter name."""
    return re.fullmatch(_PART, name) is not None


BASE_NAME_HELP = (
    f"a base name is {NAME_HELP}, as the trainers' transfer_targets name the "
    "base models adapters may be carried to"
)


def is_valid_base_name(name: str) -> bool:
    """The name of a base model adapters are carried to: a name, never a path."""
    return is_valid_name(name)


def is_valid_adapter_id(adapter_id: str) -> bool:
    return _ADAPTER_ID.fullmatch(adapter_id) is not None


def parse_model_ref(model: str) -> ModelRef | None:
    """`acme/support` or `acme/support@3`; None when the text is not an adapter reference."""
    match = _MODEL_REF.fullmatch(model)
    if match is None:
        return None
    version = match.group("version")
    return ModelRef(match.group("adapter"), int(version) if version else None)


def served_name(adapter_id: str, version: int) -> str:
    return f"{adapter_id}@{version}"
