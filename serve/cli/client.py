"""A typed client for the admin API, used by the `loraloop adapters` and `tenants` commands.

It returns the API's JSON as dicts and raises AdminApiError with the server's message (and,
for refused adapters, every problem) on any error response.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from loraloop.adapters.names import ADAPTER_FILES

from ..headers import ACTOR_HEADER

UPLOAD_TIMEOUT_S = 600
MAX_IDS_PER_CALL = 500  # the server's bound on ids in one GET /transfers


class AdminApiError(Exception):
    def __init__(self, status: int, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.problems = status, message, problems or []


def _raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        raise AdminApiError(response.status_code, error["message"], error.get("problems"))
    except (ValueError, KeyError, TypeError):
        raise AdminApiError(response.status_code, response.text[:500]) from None


class AdminClient:
    def __init__(
        self, url: str, admin_key: str | None, *, actor: str | None = None, timeout_s: float = 30
    ) -> None:
        headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
        if actor:
            headers[ACTOR_HEADER] = actor
        self._http = httpx.Client(
            base_url=url.rstrip("/") + "/admin/v1", headers=headers, timeout=timeout_s
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs) -> Any:
        response = self._http.request(method, path, **kwargs)
        _raise_for_error(response)
        return response.json()

    # -- tenants and keys ----------------------------------------------------------------

    def create_tenant(self, name: str) -> dict:
        return self._call("POST", "/tenants", json={"name": name})

    def list_tenants(self) -> list[dict]:
        return self._call("GET", "/tenants")

    def issue_key(self, tenant: str, label: str | None = None) -> dict:
        return self._call("POST", f"/tenants/{tenant}/keys", json={"label": label})

    def list_keys(self, tenant: str) -> list[dict]:
        return self._call("GET", f"/tenants/{tenant}/keys")

    def revoke_key(self, tenant: str, prefix: str, reason: str | None = None) -> dict:
        return self._call(
            "POST", f"/tenants/{tenant}/keys/{prefix}/revoke", json={"reason": reason}
        )

    # -- adapters ------------------------------------------------------------------------

    def create_adapter(self, adapter_id: str, description: str | None = None) -> dict:
        return self._call("POST", "/adapters", json={"id": adapter_id, "description": description})

    def list_adapters(self, tenant: str | None = None) -> list[dict]:
        return self._call("GET", "/adapters", params={"tenant": tenant} if tenant else None)

    def show_adapter(self, adapter_id: str) -> dict:
        return self._call("GET", f"/adapters/{adapter_id}")

    def register(
        self,
        adapter_id: str,
        directory: Path | None = None,
        *,
        server_path: str | None = None,
        **fields: Any,
    ) -> tuple[dict, bool]:
        """Upload the adapter files in `directory` (or name `server_path` on the server).
        Returns the version and whether it is new."""
        form = _form_fields(fields, server_path)
        files = (
            []
            if directory is None
            else [
                ("file", (name, open(Path(directory) / name, "rb")))  # noqa: SIM115 - closed below
                for name in ADAPTER_FILES
            ]
        )
        try:
            response = self._http.post(
                f"/adapters/{adapter_id}/versions",
                data=form,
                files=files or None,
                timeout=UPLOAD_TIMEOUT_S,
            )
        finally:
            for _, (_, handle) in files:
                handle.close()
        _raise_for_error(response)
        return response.json(), response.status_code == 201

    def list_versions(self, adapter_id: str) -> list[dict]:
        return self._call("GET", f"/adapters/{adapter_id}/versions")

    def show_version(self, adapter_id: str, version: int) -> dict:
        return self._call("GET", f"/adapters/{adapter_id}/versions/{version}")

    def promote(
        self,
        adapter_id: str,
        version: int,
        *,
        expected_live: int | None = None,
        reason: str | None = None,
    ) -> dict:
        body = {"version": version, "expected_live": expected_live, "reason": reason}
        return self._call("POST", f"/adapters/{adapter_id}/promote", json=body)

    def rollback(
        self, adapter_id: str, *, to_version: int | None = None, reason: str | None = None
    ) -> dict:
        body = {"to_version": to_version, "reason": reason}
        return self._call("POST", f"/adapters/{adapter_id}/rollback", json=body)

    def set_canary(
        self, adapter_id: str, version: int, percent: int, reason: str | None = None
    ) -> dict:
        body = {"version": version, "percent": percent, "reason": reason}
        return self._call("PUT", f"/adapters/{adapter_id}/canary", json=body)

    def clear_canary(self, adapter_id: str, reason: str | None = None) -> dict:
        params = {"reason": reason} if reason else None
        return self._call("DELETE", f"/adapters/{adapter_id}/canary", params=params)

    def reject(self, adapter_id: str, version: int, reason: str | None = None) -> dict:
        return self._call(
            "POST", f"/adapters/{adapter_id}/versions/{version}/reject", json={"reason": reason}
        )

    def retire(self, adapter_id: str, version: int, reason: str | None = None) -> dict:
        return self._call(
            "POST", f"/adapters/{adapter_id}/versions/{version}/retire", json={"reason": reason}
        )

    def history(self, adapter_id: str, limit: int = 100) -> list[dict]:
        return self._call("GET", f"/adapters/{adapter_id}/history", params={"limit": limit})

    # -- rollouts ------------------------------------------------------------------------

    def rollout(self, adapter_id: str) -> dict:
        return self._call("GET", f"/adapters/{adapter_id}/rollout")

    def start_rollout(self, adapter_id: str, version: int, reason: str | None = None) -> dict:
        return self._call(
            "POST", f"/adapters/{adapter_id}/rollout", json={"version": version, "reason": reason}
        )

    def change_rollout(self, adapter_id: str, action: str, reason: str | None = None) -> dict:
        """`action`: pause, resume or abort."""
        return self._call(
            "POST", f"/adapters/{adapter_id}/rollout/{action}", json={"reason": reason}
        )

    # -- training ------------------------------------------------------------------------

    def policy(self, adapter_id: str) -> dict:
        return self._call("GET", f"/adapters/{adapter_id}/policy")

    def set_policy(self, adapter_id: str, policy: dict) -> dict:
        return self._call("PUT", f"/adapters/{adapter_id}/policy", json=policy)

    def queue_run(self, adapter_id: str) -> dict:
        return self._call("POST", f"/adapters/{adapter_id}/training-runs")

    def runs(self, adapter_id: str, limit: int = 50) -> list[dict]:
        return self._call("GET", f"/adapters/{adapter_id}/training-runs", params={"limit": limit})

    def run(self, adapter_id: str, run_id: int) -> dict:
        return self._call("GET", f"/adapters/{adapter_id}/training-runs/{run_id}")

    # -- transfers to another base model -------------------------------------------------

    def queue_transfer(
        self,
        adapter_id: str,
        to_base: str,
        *,
        version: int | None = None,
        reason: str | None = None,
    ) -> tuple[dict, bool]:
        """The job, and whether this call queued it (False: it was standing already)."""
        response = self._http.post(
            f"/adapters/{adapter_id}/transfers",
            json={"to_base": to_base, "version": version, "reason": reason},
        )
        _raise_for_error(response)
        return response.json(), response.status_code == 201

    def transfers(self, adapter_id: str, limit: int = 50) -> list[dict]:
        return self._call("GET", f"/adapters/{adapter_id}/transfers", params={"limit": limit})

    def transfer(self, adapter_id: str, job_id: int) -> dict:
        return self._call("GET", f"/adapters/{adapter_id}/transfers/{job_id}")

    def migrate(self, to_base: str, reason: str | None = None) -> dict:
        return self._call("POST", "/base-migrations", json={"to_base": to_base, "reason": reason})

    def find_transfers(self, ids: list[int]) -> list[dict]:
        """The jobs of these ids, newest first (any number: asked for in pages)."""
        found = []
        for start in range(0, len(ids), MAX_IDS_PER_CALL):
            page = ids[start : start + MAX_IDS_PER_CALL]
            found += self._call("GET", "/transfers", params={"id": page, "limit": len(page)})
        return sorted(found, key=lambda job: -job["id"])

    def find_transfers_to(self, to_base: str) -> list[dict]:
        """The newest jobs of every adapter to this base, newest first."""
        return self._call("GET", "/transfers", params={"to_base": to_base})


def _form_fields(fields: Mapping[str, Any], server_path: str | None) -> dict[str, str]:
    form = {
        name: json.dumps(value) if isinstance(value, dict) else str(value)
        for name, value in fields.items()
        if value is not None
    }
    if server_path is not None:
        form["path"] = server_path
    return form
