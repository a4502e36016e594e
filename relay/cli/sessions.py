"""``relay sessions``: list, read, export and import recorded calls.

``show`` prints a call as a readable transcript: every turn with its role and text, what an
interrupted caller actually heard, superseded answers, tool calls with their arguments and
results, the passages retrieval handed the model, the handoff or end, and for each caller turn
a latency waterfall from the prompt to the last token. ``export`` and ``import`` move a call
to and from the file format described in :mod:`relay.recordings.format`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import orjson

from relay.cli import outcomes as outcomes_cli
from relay.cli import retention
from relay.cli.common import settings_from
from relay.recordings.format import (
    Recording,
    RecordingError,
    export_call,
    import_recording,
    load_call,
    parse_datetime,
)
from relay.storage import repository
from relay.storage.db import Database

BAR_WIDTH = 40


def add_parser(commands: Any) -> None:
    sessions = commands.add_parser("sessions", help="list, show, export and import recorded calls")
    sub = sessions.add_subparsers(title="sessions commands", metavar="COMMAND")

    listing = sub.add_parser("list", help="recent calls, newest first")
    listing.add_argument("--agent", help="only this agent's calls")
    listing.add_argument(
        "--since",
        type=_date,
        help="calls started at or after this date (YYYY-MM-DD or ISO time, UTC)",
    )
    listing.add_argument("--until", type=_date, help="calls started before this date")
    listing.add_argument(
        "--outcome",
        help="only calls with this outcome (transferred, completed-by-agent, hung-up...)",
    )
    listing.add_argument(
        "--limit", type=int, default=50, help="at most this many calls (default 50)"
    )
    listing.set_defaults(handler=_list)

    show = sub.add_parser("show", help="a call as a transcript with per-turn latency")
    show.add_argument("call", metavar="CALL", help="a CallSid, or a recording file")
    show.add_argument(
        "--json", action="store_true",
        help="the call's whole record as one JSON document (with outcomes, fields, usage, cost)",
    )  # fmt: skip
    show.set_defaults(handler=_show)

    export = sub.add_parser("export", help="write a call to a relay-recording JSONL file")
    export.add_argument("call", metavar="CALL", help="the CallSid")
    export.add_argument(
        "--redact", action="store_true", help="mask phone numbers, e-mail addresses and names"
    )
    export.add_argument(
        "-o", "--output", type=Path, help="the file to write (default: standard output)"
    )
    export.set_defaults(handler=_export)

    imp = sub.add_parser("import", help="store a recording file in the database")
    imp.add_argument("file", type=Path, metavar="FILE")
    imp.set_defaults(handler=_import)
    retention.add_subcommands(sub)  # purge, delete: relay.cli.retention
    outcomes_cli.add_subcommands(sub)  # analyze, costs: relay.cli.outcomes

    sessions.set_defaults(handler=lambda args: (sessions.print_help(), 2)[1])


def _date(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date like 2026-03-10 or 2026-03-10T09:30"
        ) from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def _database(args: argparse.Namespace) -> Database:

    settings = settings_from(args, RELAY_LOG_LEVEL="warning")
    db = Database(settings.database)
    await db.migrate()
    return db


def _run(coro: Any) -> int:
    result: int = asyncio.run(coro)
    return result


# == list ================================================================================


def _list(args: argparse.Namespace) -> int:
    return _run(_list_async(args, sys.stdout))


async def _list_async(args: argparse.Namespace, out: TextIO) -> int:
    db = await _database(args)
    try:
        calls = await repository.list_calls(
            db,
            agent=args.agent,
            since=args.since,
            until=args.until,
            outcome=args.outcome,
            limit=args.limit,
        )
    finally:
        await db.close()
    if not calls:
        out.write("No calls.\n")
        return 0
    rows = [("started (UTC)", "call", "agent", "from", "outcome", "turns", "length")]
    for call in calls:
        started = parse_datetime(_iso(call.started_at))
        length = ""
        if call.ended_at is not None:
            length = _duration(parse_datetime(_iso(call.ended_at)) - started)
        rows.append((
            started.strftime("%Y-%m-%d %H:%M:%S"), call.call_sid, call.agent, call.from_number,
            call.outcome or call.status, str(call.turns), length,
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            + "\n"
        )
    return 0


def _iso(value: datetime) -> str:
    return (value.replace(tzinfo=UTC) if value.tzinfo is None else value).isoformat()


def _duration(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    return f"{seconds // 60}m {seconds % 60:02d}s"


# == show ================================================================================


def _show(args: argparse.Namespace) -> int:
    path = Path(args.call)
    is_file = path.suffix == ".jsonl" or path.exists()
    if getattr(args, "json", False) and not is_file:
        return _run(outcomes_cli.show_json(args, sys.stdout))
    if is_file:
        recording = Recording.read(path)
        if "analysis" not in recording.header:  # outcomes, usage, cost from the file itself
            prices = outcomes_cli.prices_for(settings_from(args))
            recording.header["analysis"] = outcomes_cli.analysis_of(recording, prices)
    else:
        recording = asyncio.run(_load(args))
    if getattr(args, "json", False):
        prices = outcomes_cli.prices_for(settings_from(args))
        record = outcomes_cli.record_of_file(recording, prices)
        sys.stdout.write(outcomes_cli.to_json(record).decode())
        return 0
    sys.stdout.write(render_transcript(recording))
    return 0


async def _load(args: argparse.Namespace) -> Recording:
    db = await _database(args)
    try:
        recording = await load_call(db, args.call)
        settings = settings_from(args, RELAY_LOG_LEVEL="warning")
        analysis = await outcomes_cli.analysis_header(db, args.call, settings)
        if analysis is None:
            prices = outcomes_cli.prices_for(settings)
            analysis = outcomes_cli.analysis_of(recording, prices)
        recording.header["analysis"] = analysis
        return recording
    finally:
        await db.close()


def render_transcript(recording: Recording) -> str:
    """A recording as text for people: turns, tools, retrieval, interruptions, latency."""
    call = recording.call
    lines: list[str] = []
    started = parse_datetime(call["started_at"])
    head = f"Call {call['call_sid']} · agent {call['agent']} · {call.get('direction') or 'call'} "
    head += f"from {call.get('from_number') or '?'} to {call.get('to_number') or '?'}"
    if call.get("caller_name"):
        head += f" ({call['caller_name']})"
    lines.append(head)
    when = f"Started {started.strftime('%Y-%m-%d %H:%M:%S')} UTC"
    if call.get("ended_at"):
        when += f", lasted {_duration(parse_datetime(call['ended_at']) - started)}"
    when += f" · status {call.get('status')} · outcome {call.get('outcome') or '-'}"
    when += f" · {len(recording.turns)} turns · {len(recording.sessions)} session(s)"
    lines.append(when)
    if recording.header.get("redacted"):
        lines.append("(redacted recording)")
    lines.append("")
    turns = recording.turns
    sessions = {s["session_id"]: s for s in recording.sessions}
    current_session = None
    for index, turn in enumerate(turns):
        if turn["session_id"] != current_session and len(sessions) > 1:
            current_session = turn["session_id"]
            session = sessions.get(current_session, {})
            resumed = " (resumed after a dropped connection)" if session.get("resumed") else ""
            lines.append(f"-- session {current_session}{resumed}")
        lines.extend(_render_turn(turn))
        if turn["role"] == "user":
            lines.extend(_waterfall(turn, turns[index + 1 :]))
    lines.append("")
    lines.extend(_keypad_presses(recording))
    lines.extend(_config_updates(recording))  # provider failover and config changes (h4)
    lines.extend(outcomes_cli.render_analysis(recording))  # outcomes, usage, cost (h8)
    lines.extend(_render_end(recording))
    return "\n".join(lines) + "\n"


def _keypad_presses(recording: Recording) -> list[str]:
    """One line per key the caller pressed: when (from the session's start) and what the agent
    said next."""
    lines = []
    for _session, events in recording.session_events():
        start = float(events[0].get("t") or 0.0) if events else 0.0
        for index, event in enumerate(events):
            frame = _frame_of(event) if event["kind"] == "frame_in" else {}
            if frame.get("type") != "dtmf":
                continue
            said: list[str] = []
            for later in events[index + 1 :]:
                reply = _frame_of(later) if later["kind"] == "frame_out" else {}
                if reply.get("type") == "text":
                    said.append(str(reply.get("token") or ""))
                    if reply.get("last"):
                        break
                elif later["kind"] == "frame_in" and _frame_of(later).get("type") != "info":
                    break  # the caller did something else first
            at = float(event.get("t") or 0.0) - start
            line = f"Keypad: the caller pressed {frame.get('digit')} at +{at:.1f} s"
            answer = "".join(said).strip()
            lines.append(line + (f" → {_quote(_shorten(answer, 160))}" if answer else ""))
    return lines


def _frame_of(event: dict[str, Any]) -> dict[str, Any]:
    raw = (event.get("data") or {}).get("raw")
    try:
        frame = orjson.loads(raw) if isinstance(raw, str) else None
    except orjson.JSONDecodeError:
        return {}
    return frame if isinstance(frame, dict) else {}


def _config_updates(recording: Recording) -> list[str]:
    """One line per ``configUpdated`` Twilio sent (a provider failover, or a ``config`` taking
    effect), read from the recorded inbound frames: either reading of its shape."""
    from relay.errors import ProtocolError
    from relay.protocol import frames as protocol

    lines = []
    for event in recording.events:
        if event["kind"] != "frame_in":
            continue
        raw = (event.get("data") or {}).get("raw", "")
        if "configUpdated" not in raw:
            continue
        try:
            frame = protocol.parse_inbound(raw)
        except ProtocolError:
            continue
        if isinstance(frame, protocol.ConfigUpdated):
            found = ", ".join(f"{k}={v}" for k, v in frame.details.items())
            detail = found or _shorten(orjson.dumps(frame.payload).decode(), 200)
            lines.append(f"Configuration updated by Twilio ({frame.via}): {detail}")
    return lines


def _quote(text: str | None) -> str:
    return '"' + (text or "").replace("\n", " ") + '"'


def _render_turn(turn: dict[str, Any]) -> list[str]:
    role, seq = turn["role"], turn["seq"]
    label = f"#{seq:<3} {role:<9}"
    pad = " " * len(label)
    lines: list[str] = []
    if role == "tool":
        lines.append(
            f"{label} {turn.get('tool_name') or 'tool'} → {_quote(_shorten(turn.get('content'), 300))}"
        )
        return lines
    lang = f" [{turn['lang']}]" if turn.get("lang") else ""
    text = (
        turn.get("spoken_text")
        if role == "assistant" and turn.get("interrupted")
        else turn.get("content")
    )
    if text or not turn.get("tool_calls"):
        lines.append(f"{label}{lang} {_quote(text)}")
    else:
        lines.append(f"{label} (no words; calls a tool)")
    if turn.get("interrupted"):
        lines.append(f"{pad} interrupted: the caller heard {_quote(turn.get('heard_text'))}")
    if turn.get("superseded"):
        lines.append(f"{pad} superseded: the caller spoke again before this finished")
    if turn.get("error"):
        lines.append(f"{pad} error: {_shorten(turn['error'], 200)}")
    for call in turn.get("tool_calls") or []:
        function = call.get("function") or {}
        lines.append(f"{pad} tool call {function.get('name')}({function.get('arguments')})")
    for passage in turn.get("retrieval") or []:
        lines.append(f"{pad} retrieved {_passage(passage)}")
    return lines


def _passage(passage: Any) -> str:
    if not isinstance(passage, dict):
        return _shorten(str(passage), 160)
    where = [
        str(passage[k])
        for k in ("source", "title", "document", "path", "section", "page", "chunk", "id")
        if passage.get(k) not in (None, "")
    ]
    score = next(
        (
            passage[k]
            for k in ("score", "similarity", "distance")
            if isinstance(passage.get(k), (int, float))
        ),
        None,
    )
    text = next(
        (
            passage[k]
            for k in ("text", "snippet", "excerpt", "content")
            if isinstance(passage.get(k), str)
        ),
        None,
    )
    parts = [" · ".join(where) or "passage"]
    if score is not None:
        parts.append(f"({score:.3f})")
    if text:
        parts.append(_quote(_shorten(text, 100)))
    if not where and score is None and text is None:
        parts = [_shorten(orjson.dumps(passage).decode(), 160)]
    return " ".join(parts)


def _shorten(text: str | None, limit: int) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


_STAGES = (
    ("retrieval_done_at", "retrieval"),
    ("llm_request_at", "LLM request"),
    ("first_token_at", "first token"),
    ("first_frame_at", "first text frame"),
    ("last_token_at", "last token"),
)


def _waterfall(user: dict[str, Any], rest: Sequence[dict[str, Any]]) -> list[str]:
    """Milliseconds from the prompt to each stage of the answer, with bars to scale."""
    received = user.get("prompt_received_at")
    if received is None:
        return []
    timed = None
    for turn in rest:
        if turn["role"] == "user":
            break
        if turn.get("llm_request_at") is not None:
            timed = turn
            break
    if timed is None:
        return []
    stages = [("prompt received", 0.0)]
    for key, name in _STAGES:
        if timed.get(key) is not None:
            stages.append((name, (timed[key] - received) * 1000))
    longest = max(ms for _, ms in stages) or 1.0
    lines = ["       latency"]
    for name, ms in stages:
        bar = "#" * max(1 if ms > 0 else 0, round(ms / longest * BAR_WIDTH))
        lines.append(f"         {name:<17}{ms:>9.1f} ms |{bar}")
    return lines


def _render_end(recording: Recording) -> list[str]:
    call = recording.call
    lines = []
    end_frames = []
    for event in recording.events:
        if event["kind"] == "frame_out":
            raw = (event.get("data") or {}).get("raw", "")
            if '"type":"end"' in raw.replace(" ", ""):
                end_frames.append(raw)
    outcome = call.get("outcome") or "hung-up"
    if call.get("handoff_data"):
        try:
            data = orjson.loads(call["handoff_data"])
        except orjson.JSONDecodeError:
            data = {"raw": call["handoff_data"]}
        kind = (
            "Handoff to a person"
            if data.get("reasonCode") == "live-agent-handoff"
            else "Ended by the agent"
        )
        lines.append(f"{kind} ({outcome}): {call['handoff_data']}")
    elif end_frames:
        lines.append(f"Ended ({outcome}): {end_frames[-1]}")
    else:
        lines.append(f"End: {outcome} (status {call.get('status')})")
    return lines


# == export / import =====================================================================


def _export(args: argparse.Namespace) -> int:
    return _run(_export_async(args))


async def _export_async(args: argparse.Namespace) -> int:
    db = await _database(args)
    try:
        settings = settings_from(args, RELAY_LOG_LEVEL="warning")
        analysis = await outcomes_cli.analysis_header(db, args.call, settings, redact=args.redact)
        extra = {"analysis": analysis} if analysis is not None else None
        recording = await export_call(db, args.call, redact=args.redact, extra=extra)
    finally:
        await db.close()
    data = recording.dumps()
    if args.output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        args.output.write_bytes(data)
        print(
            f"Wrote {args.output}: call {recording.call_sid}, {len(recording.turns)} turns, "
            f"{len(recording.events)} events{' (redacted)' if args.redact else ''}.",
            file=sys.stderr,
        )
    return 0


def _import(args: argparse.Namespace) -> int:
    return _run(_import_async(args))


async def _import_async(args: argparse.Namespace) -> int:
    recording = Recording.loads(_read(args.file), source=str(args.file))
    db = await _database(args)
    try:
        imported = await import_recording(db, recording)
    finally:
        await db.close()
    if imported:
        print(
            f"Imported call {recording.call_sid}: {len(recording.turns)} turns, {len(recording.events)} events."
        )
    else:
        print(f"Call {recording.call_sid} is already stored as this recording; nothing to do.")
    return 0


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise RecordingError(f"cannot read {path}: {exc.strerror or exc}") from exc
