"""events indexed by call and id: a call's newest events are read without reading all of them

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 12:00:00

Every read of one call's events orders them by ``id``: replay and export, a reconnecting
socket's look-up, the console's live list (each call's newest frame, for its state) and a live
transcript (the events after the last one shown). The index was ``(call_sid, session_id,
seq)``, so finding a call's newest events, or those after a given one, meant reading all of
its events: the live list, refreshed every second by each owner watching it, read all the
events of up to 200 calls. On ``(call_sid, id)`` a call's newest matching event is a step or
two back from the end of its range, and a transcript's next events a range scan. The index
replaces the old one, so a recorded event still updates one index.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_call")
        batch_op.create_index("ix_events_call_id", ["call_sid", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_call_id")
        batch_op.create_index("ix_events_call", ["call_sid", "session_id", "seq"], unique=False)
