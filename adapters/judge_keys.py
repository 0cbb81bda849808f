"""Which environment variables a judge policy may name as its key (`judge.api_key_env`).

The trainer sends that variable's value as a bearer token to the policy's URL, so a policy
that could name any variable could send the trainer's own credentials anywhere. The operator
allows names (or prefixes ending in `*`) in `LORALOOP_JUDGE_KEY_VARIABLES`, read by the
server (which refuses a policy when it is set) and by the trainer (which refuses again when it
builds the judge). Some names are refused whatever the allow-list says: the product's own
settings and the database and cloud credentials a server or trainer may hold.

This module reads no environment: the settings objects hand it the allow-list.
"""

from __future__ import annotations

import re

SETTING = "LORALOOP_JUDGE_KEY_VARIABLES"
DEFAULT_KEY_VARIABLES = ("JUDGE_*",)
# The product's settings (the admin key, the database URL) and what its libraries read for
# credentials: PostgreSQL, the clouds' SDKs (object stores), the model hub, vLLM's API key.
ALWAYS_REFUSED = (
    "LORALOOP_*",
    "DATABASE_URL",
    "PG*",
    "AWS_*",
    "GOOGLE_*",
    "GCLOUD_*",
    "AZURE_*",
    "HF_*",
    "HUGGING_FACE_*",
    "VLLM_*",
)
_ENTRY = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}\*?$")


def _matches(name: str, entry: str) -> bool:
    return name.startswith(entry[:-1]) if entry.endswith("*") else name == entry


def parse_key_variables(value: object) -> object:
    """The setting as the environment gives it: names and prefixes separated by commas."""
    if isinstance(value, str):
        return tuple(entry.strip() for entry in value.split(",") if entry.strip())
    return value


def check_key_variables(entries: tuple[str, ...]) -> tuple[str, ...]:
    """The allow-list, refused at start-up when an entry is not a name or a prefix, or could
    only ever match refused names."""
    bad = [entry for entry in entries if not _ENTRY.match(entry)]
    if bad:
        raise ValueError(
            f"{SETTING}: {', '.join(map(repr, bad))} is not an upper-case variable "
            "name or a prefix ending in * (e.g. JUDGE_*)"
        )
    refused = [
        entry
        for entry in entries
        if any(_matches(entry.rstrip("*"), never) for never in ALWAYS_REFUSED)
    ]
    if refused:
        raise ValueError(
            f"{SETTING}: {', '.join(refused)} would allow only names that are "
            f"never sent to a judge ({', '.join(ALWAYS_REFUSED)}); allow "
            "variables of their own, e.g. JUDGE_*"
        )
    return entries


def key_refusal(name: str, allowed: tuple[str, ...]) -> str | None:
    """Why a judge may not send the variable `name` as its key, or None when it may."""
    if any(_matches(name, never) for never in ALWAYS_REFUSED):
        return (
            f"{name} is never sent to a judge: the server's and trainer's own settings "
            f"and credentials ({', '.join(ALWAYS_REFUSED)}) stay with them. Put the "
            f"judge's key in a variable of its own, allowed by {SETTING}"
        )
    if not any(_matches(name, entry) for entry in allowed):
        return (
            f"{name} is not a variable judges may use (the operator allows "
            f"{', '.join(allowed) or 'none'}). Name one of those, or have the operator add "
            f"it to {SETTING} on the server and the trainer"
        )
    return None
