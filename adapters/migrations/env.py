"""Alembic environment: migrations run on the connection `Database.upgrade` hands over."""

from alembic import context

from loraloop.adapters.schema import Base

connection = context.config.attributes["connection"]
# Batch mode lets later migrations alter tables on SQLite, which lacks most ALTER TABLE forms.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
