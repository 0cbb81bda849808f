"""The registry as a process opens it: the database, the weight store and the books on them.

The server and the trainer open it alike, from their settings; the schema is migrated to the
newest version first (safe from many processes at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .base_adoption import adopt_shape_only_rows
from .base_model import BaseModelInfo, local_model_dir
from .console_sessions import ConsoleSessionBook
from .db import Database, sqlite_url
from .feedback import FeedbackBook
from .rollouts.book import RolloutBook
from .store import WeightStore
from .tenants import TenantBook
from .training import TrainingBook
from .transfers import TransferBook
from .versions import AdapterBook, RegistrationPolicy


@dataclass(frozen=True)
class Registry:
    db: Database
    store: WeightStore
    adapters: AdapterBook  # adapters, their versions and pointers, history
    tenants: TenantBook  # tenants and their API keys
    feedback: FeedbackBook  # feedback and recorded completions
    training: TrainingBook  # training runs and their leases
    rollouts: RolloutBook  # rollouts, their evidence and their drivers' leases
    transfers: TransferBook  # versions carried to another base model, and their leases
    sessions: ConsoleSessionBook  # console sign-ins


def open_registry(
    *,
    model: str,
    aliases: list[str],
    data_dir: Path,
    database_url: str | None,
    max_rank: int,
    max_bytes: int,
    dtype: str | None = None,
) -> Registry:
    """`dtype`: what the server computes in, which bounds adapters' gains; None or "auto":
    the checkpoint's."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    db = Database(database_url or sqlite_url(data_dir))
    db.upgrade()
    base = BaseModelInfo.load(
        local_model_dir(model),
        aliases=[model, *aliases],
        dtype=dtype,
        digest_cache=base_digest_cache(data_dir),
    )
    adopt_shape_only_rows(db, base)
    store = WeightStore(Path(data_dir) / "weights")
    return registry_on(db, store, RegistrationPolicy(base, max_rank, max_bytes))


def base_digest_cache(data_dir: Path) -> Path:
    """Where a process remembers its base models' weight digests (hashing a 7B base's files
    takes tens of seconds; a restart reads them from here)."""
    return Path(data_dir) / "base-digests.json"


def registry_on(db: Database, store: WeightStore, policy: RegistrationPolicy) -> Registry:
    """The books on an open database and store, for processes of `policy`'s base model."""
    base = policy.base.fingerprint
    return Registry(
        db,
        store,
        AdapterBook(db, store, policy),
        TenantBook(db),
        FeedbackBook(db),
        TrainingBook(db, base),
        RolloutBook(db, base),
        TransferBook(db, base),
        ConsoleSessionBook(db),
    )
