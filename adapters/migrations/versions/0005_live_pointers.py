"""live and canary pointers per adapter and base model

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

POINTERS = ("live_version", "canary_version", "canary_percent")


def upgrade() -> None:
    op.create_table(
        "live_pointers",
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("base_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("live_version", sa.Integer(), nullable=True),
        sa.Column("canary_version", sa.Integer(), nullable=True),
        sa.Column("canary_percent", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["adapter_id"], ["adapters.id"]),
        sa.PrimaryKeyConstraint("adapter_id", "base_fingerprint"),
    )
    # Every adapter's pointers so far were for the one base its versions were made for: the
    # base of its live version (else of its canary).
    op.execute("""
        INSERT INTO live_pointers
            (adapter_id, base_fingerprint, live_version, canary_version, canary_percent)
        SELECT a.id, v.base_fingerprint, a.live_version, a.canary_version, a.canary_percent
        FROM adapters a JOIN adapter_versions v
          ON v.adapter_id = a.id AND v.number = COALESCE(a.live_version, a.canary_version)
    """)
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35 and later): a batch copy of `adapters`
    # would drop the table every other table's foreign keys point at.
    for column in POINTERS:
        op.drop_column("adapters", column)


def downgrade() -> None:
    for column in POINTERS:
        op.add_column("adapters", sa.Column(column, sa.Integer(), nullable=True))
    op.execute("""
        UPDATE adapters SET
            live_version = (SELECT MAX(p.live_version) FROM live_pointers p
                            WHERE p.adapter_id = adapters.id),
            canary_version = (SELECT MAX(p.canary_version) FROM live_pointers p
                              WHERE p.adapter_id = adapters.id),
            canary_percent = (SELECT MAX(p.canary_percent) FROM live_pointers p
                              WHERE p.adapter_id = adapters.id)
    """)
    op.drop_table("live_pointers")
