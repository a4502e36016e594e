"""``relay sessions analyze`` and ``relay sessions costs``; the outcomes, usage and cost that
``sessions show`` (text and ``--json``) and ``sessions export`` add to a call.

``analyze --since DATE`` re-runs the outcomes, the cost and (with ``RELAY_ANALYSIS=true``) the
model pass over old calls, for example after an agent's ``[analysis]`` fields changed; it sends
no webhooks and no e-mails. ``costs`` sums what calls cost: per call, per outcome, per booking
and per agent, with tokens per model.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import httpx
import orjson

from relay.agents import AgentRegistry
from relay.cli.common import settings_from
from relay.config import Settings
from relay.recordings.format import Recording
from relay.services import costs
from relay.services.analysis import Analyser
from relay.services.postcall import PostCall, analyse_since, call_record, derive
from relay.storage.db import Database
from relay.storage.outcomes import analyses, get_analysis


def add_subcommands(sub: Any) -> None:
    analyze = sub.add_parser(
        "analyze", help="work out outcomes, cost and analysis fields again for past calls"
    )
    analyze.add_argument(
        "--since", type=_date, required=True, help="calls started at or after (YYYY-MM-DD, UTC)"
    )
    analyze.add_argument("--until", type=_date, help="calls started before this date")
    analyze.add_argument("--agent", help="only this agent's calls")
    analyze.add_argument(
        "--no-model", action="store_true",
        help="outcomes and cost only, even with RELAY_ANALYSIS=true (no model pass)",
    )  # fmt: skip
    analyze.set_defaults(handler=_analyze)

    report = sub.add_parser("costs", help="what calls cost: per call, per outcome, per booking")
    report.add_argument("--since", type=_date, help="calls that ended at or after this date")
    report.add_argument("--until", type=_date, help="calls that ended before this date")
    report.add_argument("--agent", help="only this agent's calls")
    report.add_argument("--json", action="store_true", help="print one JSON document")
    report.set_defaults(handler=_costs)

    hooks = sub.add_parser("webhooks", help="post-call webhook deliveries: pending, parked, retry")
    hooks.add_argument("--status", choices=["pending", "delivered", "parked"], help="only these")
    hooks.add_argument(
        "--retry", action="store_true", help="send the parked ones again (from attempt 1)"
    )
    hooks.set_defaults(handler=_webhooks)


def _date(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date like 2026-03-10 or 2026-03-10T09:30"
        ) from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def _open(
    args: argparse.Namespace, settings: Settings | None = None
) -> tuple[Settings, Database]:
    settings = settings or settings_from(args, RELAY_LOG_LEVEL="warning")
    db = Database(settings.database)
    await db.migrate()
    return settings, db


def prices_for(settings: Settings) -> costs.PriceTable:
    """The price table the settings point at: ``RELAY_PRICES`` (which must exist), else
    ``prices.toml`` in the data directory (none there: costs unknown)."""
    setting = "RELAY_PRICES" if settings.prices_path is not None else None
    return costs.load_prices(settings.prices, setting=setting)


def to_json(value: Any) -> bytes:
    return (
        orjson.dumps(value, default=str, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        + b"\n"
    )


# == analyze ===============================================================================


def _analyze(args: argparse.Namespace) -> int:
    result: int = asyncio.run(_analyze_async(args, sys.stdout))
    return result


async def _analyze_async(args: argparse.Namespace, out: TextIO) -> int:
    settings = settings_from(args, RELAY_LOG_LEVEL="warning")
    prices = prices_for(settings)  # a bad table stops the command before the database opens
    settings, db = await _open(args, settings)
    agents = AgentRegistry.load(settings.prompts_dir, default=settings.default_agent)
    async with httpx.AsyncClient() as http:
        analyser = None
        if settings.analysis_enabled and not args.no_model:
            analyser = Analyser(
                http, base_url=settings.llm_base_url, api_key=settings.llm_api_key(),
                default_model=settings.llm_model or "gpt-4o-mini",
            )  # fmt: skip
        postcall = PostCall(db, agents, prices, analyser=analyser)
        try:
            done = await analyse_since(
                postcall, since=args.since, until=args.until, agent=args.agent
            )
        finally:
            await db.close()
    kept = [row for row in done if row.get("kept")]
    failed = sum(1 for row in done if row.get("analysis_error") and not row.get("kept"))
    for row in done:
        out.write(_analysed_line(row) + "\n")
    out.write(
        f"Analysed {len(done) - len(kept)} call(s)"
        + (" with the model pass" if analyser is not None else " (outcomes and cost)")
        + (f"; the model pass failed for {failed}" if failed else "")
        + (f"; kept {len(kept)} whose recording was purged" if kept else "")
        + ".\n"
    )
    return 1 if failed else 0


def _analysed_line(row: dict[str, Any]) -> str:
    """One call of ``analyze``: its outcomes and cost, and why they were kept as stored."""
    cost = row["cost"] or {}
    line = f"{row['call_sid']}  {','.join(row['outcomes'])}  " + (
        "cost unknown (no price table)"
        if cost.get("no_price_table")
        else f"{cost.get('total', 0.0):.4f} {cost.get('currency', '')}"
    )
    if row.get("kept"):
        computed = row.get("computed_at")
        when = f" on {computed:%Y-%m-%d %H:%M} UTC" if isinstance(computed, datetime) else ""
        return f"{line}  kept: its recording was purged; outcomes and cost as worked out{when}"
    fields = ", ".join(f"{k}={v}" for k, v in (row.get("fields") or {}).items() if k != "summary")
    return (
        line
        + (f"  {fields}" if fields else "")
        + (f"  (analysis failed: {row['analysis_error']})" if row.get("analysis_error") else "")
    )


# == costs =================================================================================


def _costs(args: argparse.Namespace) -> int:
    result: int = asyncio.run(_costs_async(args, sys.stdout))
    return result


async def _costs_async(args: argparse.Namespace, out: TextIO) -> int:
    _, db = await _open(args)
    try:
        rows = await analyses(db, agent=args.agent, since=args.since, until=args.until)
    finally:
        await db.close()
    report = costs.summarise(
        {"agent": r.agent, "outcomes": r.outcomes, "cost": r.cost, "usage": r.usage} for r in rows
    )
    if args.json:
        out.write(to_json(report).decode())
        return 0
    if not report["calls"]:
        out.write("No analysed calls (run `relay sessions analyze --since ...`).\n")
        return 0
    cur = report["currency"]
    out.write(f"{report['calls']} call(s), {report['total']:.4f} {cur} in all, ")
    out.write(f"{report['per_call']:.4f} {cur} a call")
    if report["per_booking"] is not None:
        out.write(f", {report['per_booking']:.4f} {cur} per booking ({report['bookings']})")
    out.write(".\n")
    if report["unpriced_calls"]:
        out.write(
            f"{report['unpriced_calls']} call(s) with a model the price table does not price, "
            "or with no price table: their cost is understated (sessions show names them).\n"
        )
    out.write("\nPer outcome (average cost of the calls with it):\n")
    for name, entry in report["per_outcome"].items():
        out.write(f"  {name:<14}{entry['calls']:>6} call(s)  {entry['per_call']:.4f} {cur}\n")
    out.write("\nPer agent:\n")
    for name, entry in report["agents"].items():
        out.write(f"  {name}: {entry['calls']} call(s), {entry['cost']:.4f} {cur}\n")
        for model, tokens in (entry["usage"].get("models") or {}).items():
            out.write(
                f"    {model}: {tokens.get('prompt_tokens', 0)} prompt "
                f"({tokens.get('cached_tokens', 0)} cached), "
                f"{tokens.get('completion_tokens', 0)} completion tokens\n"
            )
    return 0


# == webhooks ==============================================================================


def _webhooks(args: argparse.Namespace) -> int:
    result: int = asyncio.run(_webhooks_async(args, sys.stdout))
    return result


async def _webhooks_async(args: argparse.Namespace, out: TextIO) -> int:
    from sqlalchemy import select, update

    from relay.storage.outcomes import WebhookDelivery

    _, db = await _open(args)
    try:
        if args.retry:
            async with db.session() as session, session.begin():
                result = await session.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.status == "parked")
                    .values(status="pending", attempts=0, next_attempt_at=datetime.now(UTC))
                )
            out.write(
                f"{getattr(result, 'rowcount', 0)} parked delivery(ies) queued again; a running "
                "relay serve sends them within seconds.\n"
            )
            return 0
        query = select(WebhookDelivery).order_by(WebhookDelivery.id)
        if args.status:
            query = query.where(WebhookDelivery.status == args.status)
        async with db.session() as session:
            rows = (await session.scalars(query)).all()
    finally:
        await db.close()
    if not rows:
        out.write("No webhook deliveries.\n")
    for row in rows:
        out.write(
            f"{row.call_sid}  {row.status:<9} attempts {row.attempts}  {row.url}"
            + (f"  last error: {row.last_error}" if row.last_error else "")
            + "\n"
        )
    return 0


# == show and export =======================================================================


async def analysis_header(
    db: Database, call_sid: str, settings: Settings, *, redact: bool = False
) -> dict[str, Any] | None:
    """What ``show`` and ``export`` add to a recording's header: the stored analysis, or none
    when the call was never analysed. Redacted: without the free-text fields."""
    stored = await get_analysis(db, call_sid)
    if stored is None:
        return None
    header: dict[str, Any] = {
        "outcomes": stored.outcomes, "ending": stored.ending,
        "fields": {} if redact else stored.fields,
        "summary": None if redact else stored.summary,
        "usage": stored.usage, "cost": stored.cost,
    }  # fmt: skip
    return header


def analysis_of(recording: Recording, prices: costs.PriceTable) -> dict[str, Any]:
    """Outcomes, usage and cost worked out from a recording file (no database)."""
    stored = {
        "call": recording.call,
        "events": recording.events,
        "sessions": recording.sessions,
        "ledger": [],
        "sms_bodies": [],
    }
    return {**derive(stored, prices), "fields": {}, "summary": None}


def render_analysis(recording: Recording) -> list[str]:
    """The ``sessions show`` lines for a recording's header ``analysis``."""
    analysis = recording.header.get("analysis")
    if not isinstance(analysis, dict):
        return []
    lines = [f"Outcomes: {', '.join(analysis.get('outcomes') or []) or '-'}"]
    if analysis.get("summary"):
        lines.append(f"Summary: {analysis['summary']}")
    for name, value in (analysis.get("fields") or {}).items():
        if name != "summary":
            lines.append(f"  {name}: {value if value is not None else '-'}")
    usage = analysis.get("usage") or {}
    for model, entry in (usage.get("models") or {}).items():
        estimated = " (estimated)" if entry.get("estimated_requests") else ""
        lines.append(
            f"Usage {model}: {entry.get('requests', 0)} request(s), "
            f"{entry.get('prompt_tokens', 0)} prompt ({entry.get('cached_tokens', 0)} cached), "
            f"{entry.get('completion_tokens', 0)} completion tokens{estimated}"
        )
    cost = analysis.get("cost") or {}
    if cost:
        lines.append(_cost_line(cost))
    return lines


def _cost_line(cost: dict[str, Any]) -> str:
    """``Cost: …``; unknown without a price table, and naming the models it has no price for."""
    unpriced = cost.get("unpriced_models") or []
    named = f"; unpriced: {', '.join(unpriced)}" if unpriced else ""
    minutes, segments = cost.get("minutes", 0), cost.get("sms_segments", 0)
    if cost.get("no_price_table"):
        return (
            f"Cost: unknown, no price table (ConversationRelay {minutes} min, "
            f"SMS {segments} segment(s){named})"
        )
    return (
        f"Cost: {cost.get('total', 0):.4f} {cost.get('currency', '')} "
        f"(model {cost.get('llm', 0):.4f}, "
        f"ConversationRelay {minutes} min {cost.get('conversation_relay', 0):.4f}, "
        f"SMS {segments} segment(s) {cost.get('sms', 0):.4f}"
        + (f", analysis {cost['analysis']:.4f}" if cost.get("analysis") else "")
        + f"{named})"
    )


async def show_json(args: argparse.Namespace, out: TextIO) -> int:
    """``sessions show CALL --json``: the call's whole record as one JSON document."""
    settings, db = await _open(args)
    try:
        record = await call_record(db, args.call, prices_for(settings))
    finally:
        await db.close()
    if record is None:
        print(f"relay: no call {args.call!r}", file=sys.stderr)
        return 1
    out.write(to_json(record).decode())
    return 0


def record_of_file(recording: Recording, prices: costs.PriceTable) -> dict[str, Any]:
    """``show FILE --json``: a recording file as the same document."""
    analysis = recording.header.get("analysis")
    extra = analysis if isinstance(analysis, dict) else analysis_of(recording, prices)
    return {
        "call": recording.call,
        **{k: extra.get(k) for k in ("outcomes", "fields", "summary", "usage", "cost")},
        "sessions": recording.sessions,
        "turns": recording.turns,
        "events": recording.events,
    }
