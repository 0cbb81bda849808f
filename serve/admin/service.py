"""The logic behind the admin API: registry calls off the event loop, then a routing refresh.

Registry calls are blocking (SQLAlchemy, hashing, fsync) and run in worker threads. After a
write the routing snapshot is refreshed before the response goes out, so once an operator's
promote returns, every request that starts on this server uses the new version.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from fastapi import UploadFile

from loraloop.adapters.errors import AdapterInvalid
from loraloop.adapters.sources import files_in_allowed_dir
from loraloop.adapters.versions import NewVersion, VersionRecord

from ..state import ServerState
from .protocol import VersionCreate

T = TypeVar("T")
_CHUNK = 1 << 20
MAX_UPLOAD_FILES = 8


async def write(state: ServerState, change: Callable[..., T], *args, **kwargs) -> T:
    result = await asyncio.to_thread(change, *args, **kwargs)
    await state.watcher.refresh()
    return result


async def offload(call: Callable[..., T], *args, **kwargs) -> T:
    """A blocking registry call that changes nothing servers route by."""
    return await asyncio.to_thread(call, *args, **kwargs)


async def _stage(uploads: list[UploadFile], staging: Path, max_bytes: int) -> dict[str, Path]:
    """Uploaded files saved as staging/0, staging/1, ...: a client's file name is only ever
    compared with the expected names, never used as a path."""
    if len(uploads) > MAX_UPLOAD_FILES:
        raise AdapterInvalid([f"send at most {MAX_UPLOAD_FILES} files"])
    files, total = {}, 0
    for index, upload in enumerate(uploads):
        name = upload.filename or f"unnamed file {index + 1}"
        if name in files:
            raise AdapterInvalid([f"{name[:100]} was sent twice"])
        files[name] = staging / str(index)
        with open(files[name], "wb") as out:
            while chunk := await upload.read(_CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise AdapterInvalid([f"the upload is larger than the {max_bytes}-byte limit"])
                out.write(chunk)
    return files


async def register_version(
    state: ServerState, adapter_id: str, form: VersionCreate, uploads: list[UploadFile], actor: str
) -> tuple[VersionRecord, bool]:
    if bool(uploads) == (form.path is not None):
        raise AdapterInvalid(
            [
                "send the adapter files as multipart 'file' parts, or name a "
                "server directory in 'path', not both"
            ]
        )
    new = NewVersion(
        source=form.source or ("path" if form.path else "upload"),
        parent_version=form.parent_version,
        metrics=form.metrics,
        tags=form.tags,
        base_override_reason=form.base_model_override_reason,
        reason=form.reason,
    )
    registry = state.registry.adapters
    if form.path is not None:
        roots = state.settings.allowed_adapter_roots
        files = await offload(files_in_allowed_dir, form.path, roots)
        registered = await write(state, registry.register, adapter_id, files, new, actor=actor)
    else:
        with state.registry.store.staged() as staging:
            files = await _stage(uploads, staging, state.settings.max_adapter_bytes)
            registered = await write(state, registry.register, adapter_id, files, new, actor=actor)
    record, created = registered
    if created:  # an uploaded version earns its traffic as a trained one does
        await write(
            state,
            state.registry.rollouts.start_planned,
            adapter_id,
            record.number,
            actor=actor,
            reason="uploaded; the policy plans a rollout",
        )
    return registered
