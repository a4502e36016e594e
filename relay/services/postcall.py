"""After a call ends: its outcomes, usage and cost; the optional analysis; the webhook; the
owner's e-mail. Runs off the call's hot path, after the session has closed and flushed.

:meth:`PostCall.call_ended` is what the app calls when a session's socket handler returns;
the work runs in a background task and never raises into the caller. :meth:`PostCall.process`
does the work for one call and is also what ``relay sessions analyze`` re-runs over old calls.
:func:`call_record` is the call's whole record as one JSON document (``sessions show --json``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import select

from relay.agents import AgentProfile, AgentRegistry
from relay.services import costs, outcomes
from relay.services.analysis import Analyser, AnalysisError
from relay.services.email import EmailError, SmtpSettings, send_email
from relay.services.webhooks import WebhookOutbox
from relay.storage import repository
from relay.storage.db import Database
from relay.storage.models import Call, Event, Message, SideEffect, Turn
from relay.storage.outcomes import CallAnalysis, Email, save_analysis
from relay.storage.recorder import database_trouble

log = structlog.get_logger("relay.services.postcall")

#: Outcomes the owner is e-mailed about (when the agent names an ``owner_email``).
NOTIFY_ON = frozenset({"booked", "rescheduled", "cancelled", "message-taken", "transferred"})


#: After the database failed a call's post-call work, it is tried again this many seconds
#: later, doubling up to :data:`RETRY_MAX`, while the process runs.
RETRY_FIRST = 1.0
RETRY_MAX = 30.0


def _columns(row: Any) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in row.__table__.columns}


async def _gather(
    db: Database, call_sid: str, *, turns: bool = True, every_event: bool = True
) -> dict[str, Any] | None:
    """Everything stored about a call, as plain data (its turns only when ``turns``; of its
    events only those outcomes and usage are derived from unless ``every_event``), with its
    stored analysis (``analysis``, None before the first post-call pass) and whether retention
    purged its recording since (``purged``: an analysis, and no event or turn left)."""
    async with db.session() as session:
        # One unit of work (each costs the event loop about 1 ms on SQLite). Outcomes and
        # usage need few of a long call's events, read as plain data, never as ORM objects:
        # the post-call pass of a 4-turn call took 10 ms of the event loop's CPU, now ~7 ms
        # (README, "Outcomes, usage and cost").
        call = await session.get(Call, call_sid)
        if call is None:
            return None
        if every_event:
            events = [_columns(e) for e in await repository.call_events_in(session, call_sid)]
        else:
            events = await repository.call_events_of(
                session, call_sid, outcomes.EVENT_KINDS | costs.EVENT_KINDS, keep=outcomes.reads
            )
        sessions = await repository.call_sessions_in(session, call_sid)
        rows = await repository.call_turns_in(session, call_sid) if turns else []
        ledger = (
            await session.scalars(select(SideEffect).where(SideEffect.call_sid == call_sid))
        ).all()
        texts = (
            await session.scalars(
                select(Message.body).where(Message.call_sid == call_sid, Message.status != "failed")
            )
        ).all()
        analysis = await session.get(CallAnalysis, call_sid)
        # Retention (relay.services.retention.purge) deletes a call's events and turns and
        # keeps its analysis; nothing else marks the call, so look (only when what was read
        # is empty and an analysis exists: never on a first pass).
        purged = (
            analysis is not None
            and not events
            and not rows
            and await session.scalar(select(Event.id).where(Event.call_sid == call_sid).limit(1))
            is None
            and await session.scalar(select(Turn.id).where(Turn.call_sid == call_sid).limit(1))
            is None
        )
    return {
        "call": _columns(call),
        "events": events,
        "sessions": [_columns(s) for s in sessions],
        "turns": [_columns(t) for t in rows],
        "ledger": [_columns(row) for row in ledger],
        "sms_bodies": list(texts),
        "analysis": _columns(analysis) if analysis is not None else None,
        "purged": purged,
    }


def derive(stored: Mapping[str, Any], prices: costs.PriceTable) -> dict[str, Any]:
    """Outcomes, usage and cost of a call from what :func:`_gather` returned."""
    found = outcomes.derive(stored["call"], stored["events"], stored["ledger"])
    usage = costs.usage_of(stored["events"])
    cost = costs.cost_of(
        prices,
        usage,
        minutes=costs.session_minutes(stored["sessions"]),
        sms_bodies=stored["sms_bodies"],
    )
    return {"outcomes": found, "usage": usage, "cost": cost}


@dataclass
class PostCall:
    """The post-call work of one process."""

    db: Database
    agents: AgentRegistry
    prices: costs.PriceTable
    outbox: WebhookOutbox | None = None
    analyser: Analyser | None = None
    smtp: SmtpSettings | None = None
    now: Callable[[], datetime] = lambda: datetime.now(UTC)  # aware, any zone
    processed: int = 0
    failures: int = 0
    #: Calls processed at once. A thousand calls ending together must not each start their
    #: database reads at the same moment on the event loop the live calls use; the others
    #: wait their turn (an analysis pass is a model request, so more than one at a time).
    concurrency: int = 4
    #: Waits until the recorder has stored what it was handed (False on timeout): a call's
    #: work tried again after the database failed reads its record only once it is complete
    #: (its last status, not the one written before the trouble). ``Recorder.flush``.
    flushed: Callable[[], Awaitable[bool]] | None = None
    retry_first: float = RETRY_FIRST
    retry_max: float = RETRY_MAX
    _tasks: dict[asyncio.Task[Any], str] = field(default_factory=dict)
    _waiting: set[asyncio.Task[Any]] = field(default_factory=set)  # for the database to answer
    _slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(max(1, self.concurrency))

    def _utcnow(self) -> datetime:
        return self.now().astimezone(UTC)

    def call_ended(self, call_sid: str) -> None:
        """A session of ``call_sid`` closed (its recording flushed): process it in the background."""
        if not call_sid or call_sid.startswith("unknown-"):
            return
        task = asyncio.create_task(self._safely(call_sid), name=f"relay-postcall-{call_sid}")
        self._tasks[task] = call_sid
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(task, None)

    async def _safely(self, call_sid: str) -> None:
        """``process(call_sid)``, never raising into the app. While the database is in trouble
        the work is tried again, with backoff, until it is done or the process stops: the
        outcomes, the webhook and the owner's e-mail of a call that ended during an outage go
        out once it is over (each once: the webhook outbox and the side-effect ledger)."""
        delay, attempts = self.retry_first, 0
        while True:
            try:
                # The call's last records first (the session's own flush may have timed out
                # while the database was down): a call not stored yet would read as unknown,
                # or still in progress, and its work be dropped without a word.
                if self.flushed is not None and not await self.flushed():
                    raise TimeoutError("the recorder has not stored the call yet")
                async with self._slots:
                    await self.process(call_sid)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never into the app: the call is over
                if not attempts:
                    self.failures += 1  # counted once a call, as logged
                if not database_trouble(exc):
                    log.error("postcall_failed", call_sid=call_sid, error=repr(exc)[:300])
                    return
                attempts += 1
                if attempts == 1:
                    log.warning(
                        "postcall_delayed", call_sid=call_sid, error=repr(exc)[:300],
                        retry_in=delay, message="the database failed: retrying until it answers",
                    )  # fmt: skip
                task = asyncio.current_task()
                assert task is not None
                self._waiting.add(task)  # for the database: a stop need not wait for it
                try:
                    await asyncio.sleep(delay)
                finally:
                    self._waiting.discard(task)
                delay = min(delay * 2, self.retry_max)
                continue
            if attempts:
                log.info("postcall_recovered", call_sid=call_sid, attempts=attempts + 1)
            return

    @property
    def pending(self) -> int:
        """Calls whose post-call work has not finished, those waiting for the database to
        answer again included (``/metrics.json``, ``relay bench``)."""
        return len(self._tasks)

    async def idle(self) -> None:
        """Wait for the post-call work already started (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self, timeout: float = 10.0, *, log_lost: bool = True) -> list[str]:
        """Wait up to ``timeout`` s for the work started, then stop it, and return the calls
        whose work was not done (outcomes, webhook, e-mail). Work waiting for the database to
        answer again is not waited for: once only such work is left, it stops at once. With
        ``log_lost`` those calls are logged as lost (``postcall_lost``); the app instead hands
        them to the recorder's spill file, for the next start (relay.storage.spill)."""
        if not self._tasks:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pending = set(self._tasks)
        while pending and not pending <= self._waiting:
            left = deadline - loop.time()
            if left <= 0:
                break
            # Woken by a task that ends, and every 50 ms to see whether the rest now wait for
            # the database.
            _, pending = await asyncio.wait(
                pending, timeout=min(left, 0.05), return_when=asyncio.FIRST_COMPLETED
            )
        if not pending:
            return []
        lost = sorted(self._tasks[task] for task in pending if task in self._tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if log_lost:
            log.error(
                "postcall_lost", calls=len(lost), call_sids=lost,
                message="stopped before their outcomes, webhook and e-mail were done; "
                "`relay sessions analyze` recomputes the outcomes (no webhook, no e-mail)",
            )  # fmt: skip
        return lost

    async def process(
        self, call_sid: str, *, analyse: bool = True, deliver: bool = True
    ) -> dict[str, Any] | None:
        """Compute and store a call's outcomes, usage and cost; run the analysis pass (when an
        analyser is set and ``analyse``); queue the webhook and e-mail the owner (``deliver``).
        Returns the stored analysis as plain data, or None for an unknown call. A call whose
        recording retention purged keeps the analysis it has: that is returned, unchanged,
        with ``kept="purged"``."""
        analysing = analyse and self.analyser is not None
        stored = await _gather(self.db, call_sid, turns=analysing, every_event=False)
        if stored is None:
            return None
        call = stored["call"]
        if deliver and call.get("status") in ("reconnecting", "in-progress"):
            # The socket closed but the call goes on (application reconnect, or a newer socket
            # already serves it): its outcome is worked out when its last session closes, so
            # the webhook and the owner's e-mail never go out with half a call.
            log.info("postcall_deferred", call_sid=call_sid, status=call.get("status"))
            return None
        if stored["purged"]:
            # Its events and turns are gone (retention): deriving again from nothing would
            # replace the outcomes, usage and cost retention promises to keep.
            log.info("postcall_kept", call_sid=call_sid, reason="recording purged")
            return {**stored["analysis"], "kept": "purged"}
        derived = derive(stored, self.prices)
        agent = self.agents.agents.get(call["agent"])
        previous = stored["analysis"] or {}
        values: dict[str, Any] = {
            "call_sid": call_sid,
            "agent": call["agent"],
            "ending": call.get("outcome"),
            "outcomes": derived["outcomes"],
            "fields": previous.get("fields") or {},
            "summary": previous.get("summary"),
            "usage": derived["usage"],
            "cost": derived["cost"],
            "cost_total": derived["cost"]["total"],
            "currency": derived["cost"]["currency"],
            "ended_at": call.get("ended_at"),
            "computed_at": self._utcnow(),
            "analysed_at": previous.get("analysed_at"),
            "analysis_error": previous.get("analysis_error"),
        }
        if analysing and self.analyser is not None and agent is not None:
            try:
                result = await self.analyser.analyse(agent, stored["turns"], derived["outcomes"])
            except AnalysisError as exc:
                values["analysis_error"] = str(exc)[:500]
                log.warning("analysis_failed", call_sid=call_sid, error=str(exc)[:300])
            else:
                summary = result.fields.get("summary")
                values.update(
                    fields=result.fields,
                    summary=summary if isinstance(summary, str) else None,
                    analysed_at=self._utcnow(),
                    analysis_error=None,
                )
                spent = costs.usage_of(
                    [
                        {
                            "kind": "llm_response",
                            "data": {"model": result.model, "usage": result.usage},
                        }
                    ]
                )
                values["usage"]["analysis"] = spent if result.usage else None
        if previous and "analysis" not in values["usage"]:
            values["usage"]["analysis"] = (previous.get("usage") or {}).get("analysis")
        self._add_analysis_cost(values)
        await save_analysis(self.db, values)
        self.processed += 1
        log.info(
            "call_outcomes", call_sid=call_sid, outcomes=derived["outcomes"],
            cost=derived["cost"]["total"], tokens=derived["usage"]["prompt_tokens"]
            + derived["usage"]["completion_tokens"],
        )  # fmt: skip
        if deliver and agent is not None:
            await self._deliver(agent, call, values)
        return values

    def _add_analysis_cost(self, values: dict[str, Any]) -> None:
        """The analysis request's own tokens, priced and added to the call's total."""
        spent = values["usage"].get("analysis")
        if not spent:
            values["usage"].pop("analysis", None)
            return
        extra = costs.cost_of(self.prices, spent)["llm"]
        values["cost"]["analysis"] = extra
        values["cost"]["total"] = round(values["cost"]["total"] + extra, 8)
        values["cost_total"] = values["cost"]["total"]

    async def _deliver(
        self, agent: AgentProfile, call: Mapping[str, Any], values: Mapping[str, Any]
    ) -> None:
        if self.outbox is not None and agent.webhook_url:
            await self.outbox.enqueue(
                call_sid=values["call_sid"], agent=agent.name, url=agent.webhook_url,
                document=webhook_document(call, values),
            )  # fmt: skip
        if self.smtp is not None and agent.owner_email and NOTIFY_ON & set(values["outcomes"]):
            await self._notify_owner(agent, call, values)

    async def _notify_owner(
        self, agent: AgentProfile, call: Mapping[str, Any], values: Mapping[str, Any]
    ) -> None:
        """E-mail the owner about the call, at most once per call (the side-effect ledger)."""
        assert self.smtp is not None and agent.owner_email
        key = f"notify_owner:{values['call_sid']}"
        claim = await repository.claim_side_effect(self.db, key, "notify_owner", values["call_sid"])
        if claim.state != "claimed":
            return
        subject = f"{agent.business_name}: call {', '.join(values['outcomes'])}"
        body = notification_text(call, values)
        status, error = "sent", None
        try:
            await send_email(self.smtp, to=agent.owner_email, subject=subject, body=body)
        except EmailError as exc:
            status, error = "failed", str(exc)
            log.warning("owner_email_failed", call_sid=values["call_sid"], error=str(exc)[:300])
        async with self.db.session() as session, session.begin():
            session.add(
                Email(
                    agent=agent.name, call_sid=values["call_sid"], kind="notification",
                    to_address=agent.owner_email, subject=subject, status=status, error=error,
                    created_at=self._utcnow(),
                )
            )  # fmt: skip
        await repository.settle_side_effect(
            self.db, key, status="done" if status == "sent" else "failed", result=subject
        )


def webhook_document(call: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """What the post-call webhook sends."""
    return {
        "event": "call.ended",
        "call_sid": values["call_sid"],
        "agent": values["agent"],
        "ending": values.get("ending"),
        "started_at": _iso(call.get("started_at")),
        "ended_at": _iso(call.get("ended_at")),
        "outcomes": list(values["outcomes"]),
        "fields": dict(values.get("fields") or {}),
        "summary": values.get("summary"),
        "usage": values["usage"],
        "cost": values["cost"],
    }


def notification_text(call: Mapping[str, Any], values: Mapping[str, Any]) -> str:
    lines = [
        f"Call {values['call_sid']} to {values['agent']}",
        f"From: {call.get('from_number') or 'withheld'}"
        + (f" ({call['caller_name']})" if call.get("caller_name") else ""),
        f"Started: {_iso(call.get('started_at'))}",
        f"Outcomes: {', '.join(values['outcomes'])}",
    ]
    if values.get("summary"):
        lines.append(f"Summary: {values['summary']}")
    for name, value in (values.get("fields") or {}).items():
        if name != "summary" and value is not None:
            lines.append(f"{name}: {value}")
    return "\n".join(lines) + "\n"


def _iso(value: Any) -> str | None:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return None if value is None else str(value)


async def call_record(
    db: Database, call_sid: str, prices: costs.PriceTable
) -> dict[str, Any] | None:
    """A call's whole record as one JSON-ready document: the call, its sessions, turns and
    events, and its ``outcomes``, ``fields``, ``summary``, ``usage`` and ``cost`` (the stored
    analysis, or computed now when the call was never analysed)."""
    stored = await _gather(db, call_sid)
    if stored is None:
        return None
    analysis = stored["analysis"]
    if analysis is not None:
        extra = {
            "outcomes": analysis["outcomes"], "fields": analysis["fields"],
            "summary": analysis["summary"], "usage": analysis["usage"], "cost": analysis["cost"],
            "analysed_at": _iso(analysis["analysed_at"]),
        }  # fmt: skip
    else:
        extra = {**derive(stored, prices), "fields": {}, "summary": None, "analysed_at": None}
    return {
        "call": stored["call"],
        **extra,
        "sessions": stored["sessions"],
        "turns": stored["turns"],
        "events": stored["events"],
        "side_effects": stored["ledger"],
    }


async def analyse_since(
    postcall: PostCall,
    *,
    since: datetime,
    until: datetime | None = None,
    agent: str | None = None,
    limit: int = 100_000,
) -> list[dict[str, Any]]:
    """Re-run outcomes, cost and (when set up) the analysis over calls started since ``since``.
    No webhook and no e-mail: those belong to the moment a call ends."""
    calls = await repository.list_calls(
        postcall.db, agent=agent, since=since, until=until, limit=limit
    )
    done = []
    for call in reversed(calls):  # oldest first
        values = await postcall.process(call.call_sid, deliver=False)
        if values is not None:
            done.append(values)
    return done


def total_usage(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for row in rows:
        costs.add_usage(total, row.get("usage") or {})
    return total
