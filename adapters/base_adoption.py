"""Versions stored before a base's fingerprint covered its weights, adopted by their base.

Registries used to identify a base by its shapes alone (BaseModelInfo.shape_fingerprint).
Only a process that holds the weights can compute the new fingerprint, so the rows are
moved when the first process of a base with those shapes opens the registry: every row that
names the shape-only fingerprint is rewritten to its full one, in one transaction. Once moved,
no row names the old fingerprint any more, so a later base of the same shapes and other
weights adopts nothing: it serves none of them, and can be their transfer target.
The first opener decides, so upgrade loraloop on the base the versions were made for, then
change the base.
"""

from __future__ import annotations

import logging

from sqlalchemy import exists, or_, select, update

from .base_model import BaseModelInfo
from .db import Database, rows_changed
from .schema import AdapterVersion, LivePointer, Rollout, TransferJob

logger = logging.getLogger(__name__)


def adopt_shape_only_rows(db: Database, base: BaseModelInfo) -> int:
    """Move the rows that name `base`'s shape-only fingerprint to its full fingerprint;
    the number of versions adopted (0 when there were none, as after the first time)."""
    old, new = base.shape_fingerprint, base.fingerprint
    if not _names(db, old):
        return 0  # the usual case: no write, so no server reloads its routes for nothing
    with db.transaction() as session:
        versions = rows_changed(
            session,
            update(AdapterVersion)
            .where(AdapterVersion.base_fingerprint == old)
            .values(base_fingerprint=new),
        )
        session.execute(
            update(LivePointer)
            .where(LivePointer.base_fingerprint == old)
            .values(base_fingerprint=new)
        )
        session.execute(
            update(Rollout).where(Rollout.base_fingerprint == old).values(base_fingerprint=new)
        )
        session.execute(
            update(TransferJob)
            .where(TransferJob.to_base_fingerprint == old)
            .values(to_base_fingerprint=new)
        )
    if versions:
        logger.warning(
            "adopted %d adapter versions stored for base shapes %s... as versions "
            "of this base %s... (weights and tokenizer); a base of the same shapes "
            "and other weights will not serve them",
            versions,
            old[:12],
            new[:12],
        )
    return versions


def _names(db: Database, fingerprint: str) -> bool:
    with db.reading() as session:
        return bool(
            session.scalar(
                select(
                    or_(
                        exists().where(AdapterVersion.base_fingerprint == fingerprint),
                        exists().where(LivePointer.base_fingerprint == fingerprint),
                        exists().where(Rollout.base_fingerprint == fingerprint),
                        exists().where(TransferJob.to_base_fingerprint == fingerprint),
                    )
                )
            )
        )
