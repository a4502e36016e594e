"""Supervisor commands for calls in progress: whisper, take over, end.

The operator console writes a row to ``call_commands`` (any worker); each worker runs one
:class:`Supervisor` that, every ``interval`` seconds, reads the pending commands of the calls
its own sessions serve (one query for all of them) and applies them:

- ``whisper``: a system note the model sees from its next request on (kept in the history, so
  it is recorded and survives a reconnect);
- ``takeover``: the agent says its transfer line and ends the session with a
  ``live-agent-handoff`` whose ``takeoverNumber`` the ``/handoff`` webhook dials;
- ``end``: the agent says its goodbye line and ends the session.

Each applied command is also recorded as a ``supervisor`` event, so the console shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import structlog

from relay.storage.console import PendingCommand, take_pending
from relay.storage.db import Database

if TYPE_CHECKING:
    from relay.call.session import CallSession

log = structlog.get_logger("relay.call.supervisor")

WHISPER_PREFIX = "Note from your supervisor (the caller cannot hear this): "


class Supervisor:
    """Delivers console commands to this worker's sessions."""

    def __init__(self, db: Database, *, interval: float = 0.5) -> None:
        self.db = db
        self.interval = interval
        self.sessions: set[CallSession] = set()
        self.applied = 0

    def watch(self, session: CallSession) -> None:
        self.sessions.add(session)

    def forget(self, session: CallSession) -> None:
        self.sessions.discard(session)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is down: calls go on unsupervised
                log.warning("supervisor_poll_failed", error=repr(exc)[:300])

    async def poll(self) -> int:
        """Apply every pending command of this worker's active calls; how many were applied."""
        from relay.call.session import Phase

        live = {s.call_sid: s for s in self.sessions if s.call_sid and s.phase is Phase.ACTIVE}
        pending = await take_pending(self.db, list(live))
        for call_sid, command in pending:
            apply(live[call_sid], command)
        self.applied += len(pending)
        return len(pending)


def apply(session: CallSession, command: PendingCommand) -> None:
    """Act on one command in ``session`` (called on the session's event loop)."""
    session.event(
        "supervisor",
        {"kind": command.kind, "argument": command.argument, "by": command.created_by},
    )
    log.info("supervisor_command", kind=command.kind, by=command.created_by)
    if command.kind == "whisper":
        session._append("system", WHISPER_PREFIX + command.argument)
    elif command.kind == "takeover":
        data = {
            "reasonCode": "live-agent-handoff",
            "reason": "a supervisor took over the call",
            "summary": f"Taken over from the console by {command.created_by}.",
            "callSid": session.call_sid,
            "agent": session.agent.name,
        }
        if command.argument:
            data["takeoverNumber"] = command.argument
        session.end_call(session.agent.transfer_line, data, outcome="transferred")
    elif command.kind == "end":
        session.end_call(
            session.agent.goodbye_line,
            {"reasonCode": "end-call", "reason": "ended from the console"},
            outcome="ended-by-supervisor",
        )


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
