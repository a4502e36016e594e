"""What an application reconnect (issue 10 item 1) reads back from storage.

A ConversationRelay socket dropped with ``applicationReconnect="true"`` may come back on any
process: everything the new socket needs to carry on is read from the shared database here (the
call row, the inbound frames recorded for the call, the reconnect marks, the last event number of
each session).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from relay.storage.db import Database
from relay.storage.models import Call, Event

#: The event kinds a reconnect reads: the frames received, and its own marks.
KINDS = ("frame_in", "reply_cut_off", "reply_repeated", "reconnected")


@dataclass
class StoredCall:
    """A call as a reconnecting socket finds it."""

    call: Call | None
    #: (session_id, kind, data) of the call's frame_in and reconnect events, oldest first.
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    #: The highest event ``seq`` stored for each session id.
    last_seq: dict[str, int] = field(default_factory=dict)


async def stored_call(db: Database, call_sid: str) -> StoredCall:
    async with db.session() as session:
        call = await session.get(Call, call_sid)
        if call is None:
            return StoredCall(None)
        rows = await session.execute(
            select(Event.session_id, Event.kind, Event.data)
            .where(Event.call_sid == call_sid, Event.kind.in_(KINDS))
            .order_by(Event.id)
        )
        events = [(str(s), str(k), d if isinstance(d, dict) else {}) for s, k, d in rows.all()]
        seqs = await session.execute(
            select(Event.session_id, func.max(Event.seq))
            .where(Event.call_sid == call_sid)
            .group_by(Event.session_id)
        )
        last_seq = {str(s): int(n or 0) for s, n in seqs.all()}
    return StoredCall(call, events, last_seq)


async def awaiting_reconnect(db: Database, since: datetime) -> Sequence[str]:
    """The calls whose socket dropped (status ``reconnecting``) since ``since``, newest first."""
    async with db.session() as session:
        rows = await session.scalars(
            select(Call.call_sid)
            .where(Call.status == "reconnecting", Call.ended_at >= since)
            .order_by(Call.ended_at.desc())
            .limit(2)
        )
        return list(rows.all())
