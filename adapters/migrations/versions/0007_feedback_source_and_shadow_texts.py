"""feedback says where a score came from; shadow comparisons may outlive their texts

Revision ID: 0007
Revises: 0006
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TEXTS: dict[str, sa.types.TypeEngine[Any]] = {
    "prompt": sa.JSON(),
    "candidate_answer": sa.Text(),
    "baseline_answer": sa.Text(),
}


def upgrade() -> None:
    op.add_column(
        "feedback",
        sa.Column("source", sa.String(length=16), nullable=False, server_default="application"),
    )
    # The trainer stored its judge's scores of sampled answers under the judge's name, which
    # begins with its kind, with neither a completion id nor an Idempotency-Key.
    op.execute("""
        UPDATE feedback SET source = 'trainer'
        WHERE kind = 'score' AND completion_id IS NULL AND idempotency_key IS NULL
          AND (judge LIKE 'llm:%' OR judge LIKE 'rules:%' OR judge LIKE 'python:%')
    """)
    # A copy of the table on SQLite; nothing points at shadow_comparisons.
    with op.batch_alter_table("shadow_comparisons") as batch:
        for column, kind in TEXTS.items():
            batch.alter_column(column, existing_type=kind, nullable=True)
    op.create_index("ix_shadow_comparisons_created_at", "shadow_comparisons", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_shadow_comparisons_created_at", table_name="shadow_comparisons")
    op.execute(
        "DELETE FROM shadow_comparisons WHERE prompt IS NULL OR candidate_answer IS NULL"
        " OR baseline_answer IS NULL"
    )
    with op.batch_alter_table("shadow_comparisons") as batch:
        for column, kind in TEXTS.items():
            batch.alter_column(column, existing_type=kind, nullable=False)
    op.drop_column("feedback", "source")
