"""parked records: rows the recorder could not write, kept with their error

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 11:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "parked_records",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("table_name", sa.String(length=32), nullable=False),
        sa.Column("call_sid", sa.String(length=64), nullable=True),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("parked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("parked_records", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_parked_records_call_sid"), ["call_sid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("parked_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_parked_records_call_sid"))
    op.drop_table("parked_records")
