"""Row lookups the books share, and timestamps as rows hold them.

Each helper takes the session as a keyword and never commits; a missing row is NotFound with
a message that says what to do.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import InvalidArgument, NotFound
from .names import ADAPTER_ID_HELP, is_valid_adapter_id
from .schema import Adapter, AdapterVersion, Tenant


def utc(moment: datetime) -> datetime:
    # SQLite gives back naive datetimes; every time the registry writes is UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def tenant_row(name: str, *, session: Session) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise NotFound(f"There is no tenant '{name}'. Create it first: loraloop tenants create.")
    return tenant


def split_adapter_id(adapter_id: str) -> tuple[str, str]:
    if not is_valid_adapter_id(adapter_id):
        raise InvalidArgument(f"'{adapter_id[:140]}' is not an adapter id: {ADAPTER_ID_HELP}.")
    tenant, name = adapter_id.split("/", 1)
    return tenant, name


def adapter_row(adapter_id: str, *, session: Session) -> Adapter:
    tenant, name = split_adapter_id(adapter_id)
    row = session.scalar(
        select(Adapter).join(Tenant).where(Tenant.name == tenant, Adapter.name == name)
    )
    if row is None:
        raise NotFound(f"There is no adapter '{adapter_id}'. Create it first.")
    return row


def version_row(adapter: Adapter, adapter_id: str, number: int, *,
                session: Session) -> AdapterVersion:
    row = session.scalar(
        select(AdapterVersion).where(
            AdapterVersion.adapter_id == adapter.id, AdapterVersion.number == number
        )
    )
    if row is None:
        raise NotFound(f"The adapter '{adapter_id}' has no version {number}.")
    return row


def adapter_row_id_to_name(adapter_row_id: int, *, session: Session) -> str:
    tenant, name = session.execute(
        select(Tenant.name, Adapter.name).join(Adapter).where(Adapter.id == adapter_row_id)
    ).one()
    return f"{tenant}/{name}"
