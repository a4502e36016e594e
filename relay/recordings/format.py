"""The recording format: one call, exported to a versioned JSON Lines file.

A recording is everything relay stored about one call (the ``calls`` row, its ``sessions``, every
``events`` row and every ``turns`` row), so a file is at once a transcript, latency data and a
replay cassette. ``relay sessions export`` writes it, ``relay sessions import`` reads it back and
``relay replay`` runs it against the current agent.

Format ``relay-recording``, version 1
-------------------------------------

UTF-8 JSON Lines; every line is one JSON object. Line 1 is the header::

    {"format": "relay-recording", "version": 1,
     "call": {...every column of the calls row...},
     "exported_at": "2026-03-10T09:30:00.000000+00:00",
     "redacted": false,
     "expect": {...},          # optional: what a replay must see (below)
     "ignore": ["regex", ...], # optional: text a replay masks before comparing
     "notes": "..."}           # optional: free text for people

Then, for each session in the order it started, one ``session`` line followed by that
session's ``event`` lines (in the order they happened) and its ``turn`` lines (in ``seq``
order). Events or turns of no known session come last. Each line carries ``"type"`` first and
then every column of its table except the database's own ``id``::

    {"type": "session", "session_id", "call_sid", "agent", "started_at", "ended_at",
     "close_code", "resumed", "frames_in", "frames_out"}
    {"type": "event", "call_sid", "session_id", "seq", "t", "at", "kind", "data"}
    {"type": "turn", "call_sid", "session_id", "seq", "role", "content", "lang", ...}

Values: datetimes are ISO 8601 in UTC with microseconds (``...T09:30:00.000000+00:00``);
``t`` and the ``*_at`` timings of turns are ``time.perf_counter()`` seconds of the process that
served the call (only differences between them mean anything). Event kinds and their ``data``
are those of :mod:`relay.call.session`: ``frame_in`` ``{"raw"}`` (the exact text Twilio sent),
``frame_in_invalid`` ``{"raw", "error"}``, ``frame_out`` ``{"raw"}`` (the exact frame sent),
``llm_request`` ``{"body"}``, ``llm_response`` ``{"pieces", "tool_calls", "finish_reason",
"attempts", "complete"}``, ``llm_error`` ``{"error"}``, ``tool_call`` ``{"id", "name",
"arguments"}``, ``tool_result`` ``{"id", "name", "content", "data", "elapsed_ms"}``,
``retrieval`` ``{"provenance", "elapsed_ms", "error"}`` and ``session_end`` ``{"close_code",
"outcome"}``. Readers ignore keys they do not know; a new version number means a reader
must not guess. (The database keeps a session's later ``llm_request`` bodies as deltas, see
:mod:`relay.storage.requests`; :func:`load_call` rebuilds them, so files always hold whole
bodies.)

Expectations (``expect``) are checked by ``relay replay`` against what the agent does now::

    {"tools": [{"name": "transfer_to_person", "arguments": {"reason": "(?i)person"}}],
     "handoff": true,            # an end frame with reasonCode live-agent-handoff (false: none)
     "end": "end-call",          # the reasonCode of the end frame
     "says": ["\\$\\d"],         # some reply matches each regex
     "avoids": ["(?i)guarantee"]}  # no reply matches any of these

Each argument pattern is a regex searched in the argument's value (JSON text for non-strings).
Sections ``"cassette": {...}`` and ``"live": {...}`` inside ``expect`` add expectations that
apply in that replay mode only (say, that the recorded LLM failure is apologised for).
A sidecar file ``NAME.expect.json`` next to ``NAME.jsonl`` may hold ``expect`` and ``ignore``
as well; its lists are added to the header's, its other values replace them.

Round trip: exporting a call, importing the file into an empty database and exporting again
gives the same bytes. Import keeps the header's own fields (``exported_at``, ``expect``...) in
an extra event of kind ``recording_imported`` that export leaves out. Importing a call that
is already stored is a no-op when the stored call is the same recording and is refused
otherwise.

Redaction (``export --redact``) masks, in every string of every line, including the raw
frames and the LLM request bodies, with the masker logs use (:mod:`relay.privacy`): phone
numbers in any format, found with libphonenumber in the business's region, become made-up
numbers of the same kind from the ranges kept for fiction, written the same way (an
Australian mobile ``0412 345 678`` one of the thirty ACMA drama numbers such as
``0491 570 158``, a landline ``(03) 9123 4567`` a ``(03) 5550 xxxx`` one, a North American
number a ``555-01xx`` one), the same fake for the same number however written, so that tools
given one in a replay still take it; numbers with no such range (other countries, invalid
ones) keep their country code and last two digits (``+353*******67``, ``***-***-**23``). The
business's own number, the one called on an inbound call, stays so that a replay still
reaches the same agent. Also masked: e-mail addresses, street addresses, and the caller's and
known customers' names in any case (from the setup frame, the "Known caller" context and tool
arguments and results). The rows' own timings (``t``, ``*_at``, ``*_ms``) are left as they
are. Masking is deterministic and idempotent, so a redacted recording still replays: the
masked caller ID in the setup frame gives the same masked ``Caller ID`` line in the LLM
requests.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import delete, insert, select

from relay.errors import RelayError
from relay.privacy import Redactor, region_of
from relay.privacy import mask_number as mask_number  # re-exported: the console and tests use it
from relay.storage.db import Database
from relay.storage.models import Call, Event, RelaySession, Turn
from relay.storage.requests import expand_requests

FORMAT = "relay-recording"
VERSION = 1
#: The event kind under which an import keeps the file's header.
IMPORT_MARKER = "recording_imported"
SIDECAR_SUFFIX = ".expect.json"

LINE_TYPES = ("session", "event", "turn")


class RecordingError(RelayError):
    """A recording cannot be read, written or imported."""


def _columns(model: type[Any]) -> tuple[str, ...]:
    return tuple(c.key for c in model.__table__.columns if c.key != "id")


CALL_COLUMNS = _columns(Call)
SESSION_COLUMNS = _columns(RelaySession)
EVENT_COLUMNS = _columns(Event)
TURN_COLUMNS = _columns(Turn)
_MODELS: dict[str, type[Any]] = {"session": RelaySession, "event": Event, "turn": Turn}
_COLUMNS = {"session": SESSION_COLUMNS, "event": EVENT_COLUMNS, "turn": TURN_COLUMNS}


@dataclass
class Recording:
    """One call as it is written to a file: a header and the rows of its tables."""

    header: dict[str, Any]
    sessions: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    turns: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""  # the file or call it came from (not written)

    @property
    def call(self) -> dict[str, Any]:
        call: dict[str, Any] = self.header["call"]
        return call

    @property
    def call_sid(self) -> str:
        return str(self.call["call_sid"])

    @property
    def started_at(self) -> datetime:
        return parse_datetime(self.call["started_at"])

    @property
    def expect(self) -> dict[str, Any]:
        value = self.header.get("expect") or {}
        return dict(value) if isinstance(value, Mapping) else {}

    @property
    def ignore(self) -> list[str]:
        value = self.header.get("ignore") or []
        return [str(v) for v in value] if isinstance(value, list) else []

    def session_events(self) -> list[tuple[dict[str, Any] | None, list[dict[str, Any]]]]:
        """Each session row with its events, in order (events of no session under None)."""
        known = {s["session_id"] for s in self.sessions}
        grouped: list[tuple[dict[str, Any] | None, list[dict[str, Any]]]] = [
            (s, [e for e in self.events if e["session_id"] == s["session_id"]])
            for s in self.sessions
        ]
        orphans = [e for e in self.events if e["session_id"] not in known]
        if orphans:
            grouped.append((None, orphans))
        return grouped

    # -- writing -----------------------------------------------------------------------

    def lines(self) -> list[bytes]:
        out = [_dumps(self.header)]
        known = {s["session_id"] for s in self.sessions}
        for session in self.sessions:
            sid = session["session_id"]
            out.append(_dumps({"type": "session", **session}))
            out.extend(
                _dumps({"type": "event", **e}) for e in self.events if e["session_id"] == sid
            )
            out.extend(_dumps({"type": "turn", **t}) for t in self.turns if t["session_id"] == sid)
        out.extend(
            _dumps({"type": "event", **e}) for e in self.events if e["session_id"] not in known
        )
        out.extend(
            _dumps({"type": "turn", **t}) for t in self.turns if t["session_id"] not in known
        )
        return out

    def dumps(self) -> bytes:
        return b"".join(line + b"\n" for line in self.lines())

    def write(self, path: Path) -> None:
        path.write_bytes(self.dumps())

    # -- reading -----------------------------------------------------------------------

    @classmethod
    def loads(cls, data: bytes | str, *, source: str = "") -> Recording:
        raw = data.encode() if isinstance(data, str) else data
        lines = [line for line in raw.splitlines() if line.strip()]
        where = source or "recording"
        if not lines:
            raise RecordingError(f"{where}: empty file")
        header = _loads(lines[0], where, 1)
        if header.get("format") != FORMAT:
            raise RecordingError(
                f'{where}: not a relay recording (line 1 has no "format": "{FORMAT}")'
            )
        if header.get("version") != VERSION:
            raise RecordingError(
                f"{where}: recording format version {header.get('version')!r}; this relay reads version {VERSION}"
            )
        call = header.get("call")
        if not isinstance(call, dict) or not call.get("call_sid") or not call.get("started_at"):
            raise RecordingError(
                f"{where}: the header has no call (call_sid and started_at are required)"
            )
        recording = cls(header=header, source=source)
        for number, line in enumerate(lines[1:], start=2):
            row = _loads(line, where, number)
            kind = row.pop("type", None)
            if kind not in LINE_TYPES:
                continue  # a line type from a newer writer: not ours to guess at
            missing = [
                c for c in ("call_sid", "session_id", "seq") if c in _COLUMNS[kind] and c not in row
            ]
            if missing:
                raise RecordingError(f"{where}:{number}: {kind} line without {', '.join(missing)}")
            {"session": recording.sessions, "event": recording.events, "turn": recording.turns}[
                kind
            ].append(row)
        return recording

    @classmethod
    def read(cls, path: Path) -> Recording:
        """Read a file, merging a ``NAME.expect.json`` sidecar into the header if there is one."""
        try:
            recording = cls.loads(path.read_bytes(), source=str(path))
        except OSError as exc:
            raise RecordingError(f"cannot read {path}: {exc.strerror or exc}") from exc
        sidecar = sidecar_path(path)
        if sidecar.exists():
            try:
                extra = orjson.loads(sidecar.read_bytes())
            except (OSError, orjson.JSONDecodeError) as exc:
                raise RecordingError(f"{sidecar}: not valid JSON: {exc}") from exc
            if not isinstance(extra, dict):
                raise RecordingError(
                    f"{sidecar}: must hold a JSON object with expect and/or ignore"
                )
            recording.header = merge_expectations(recording.header, extra)
        return recording


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".jsonl") + SIDECAR_SUFFIX)


def merge_expectations(header: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """The header with a sidecar's ``expect`` and ``ignore`` added (lists extend, values replace)."""
    merged = dict(header)
    if "ignore" in extra:
        merged["ignore"] = [*(header.get("ignore") or []), *extra["ignore"]]
    if "expect" in extra:
        expect = dict(header.get("expect") or {})
        for key, value in dict(extra["expect"]).items():
            if isinstance(value, list) and isinstance(expect.get(key), list):
                expect[key] = [*expect[key], *value]
            else:
                expect[key] = value
        merged["expect"] = expect
    return merged


def _dumps(value: Mapping[str, Any]) -> bytes:
    return orjson.dumps(value, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} to a recording")


def _loads(line: bytes, where: str, number: int) -> dict[str, Any]:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise RecordingError(f"{where}:{number}: not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise RecordingError(f"{where}:{number}: not a JSON object")
    return value


def format_datetime(value: datetime) -> str:
    """ISO 8601 in UTC with microseconds; naive values are taken as UTC (SQLite stores them so)."""
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.isoformat(timespec="microseconds")


def parse_datetime(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


# == from and to the database ============================================================


def _row(obj: Any, columns: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column in columns:
        value = getattr(obj, column)
        out[column] = format_datetime(value) if isinstance(value, datetime) else value
    return out


async def load_call(db: Database, call_sid: str) -> Recording:
    """The stored call as a :class:`Recording` (header ``exported_at`` set to now, or kept from
    the file it was imported from)."""
    async with db.session() as session:
        call = await session.get(Call, call_sid)
        if call is None:
            raise RecordingError(f"no call {call_sid!r} in the database")
        found = (
            await session.scalars(
                select(RelaySession)
                .where(RelaySession.call_sid == call_sid)
                .order_by(RelaySession.started_at, RelaySession.session_id)
            )
        ).all()
        events = (
            await session.scalars(
                select(Event).where(Event.call_sid == call_sid).order_by(Event.id)
            )
        ).all()
        turns = (
            await session.scalars(select(Turn).where(Turn.call_sid == call_sid).order_by(Turn.seq))
        ).all()
    expand_requests(events)  # the database keeps later LLM requests as deltas; files never do
    # Sessions in the order they happened: by their first event (start times can tie, as
    # under a pinned clock), then by start time for a session that recorded nothing.
    first: dict[str, int] = {}
    for index, event in enumerate(events):
        first.setdefault(event.session_id, index)
    sessions = sorted(found, key=lambda s: first.get(s.session_id, len(events)))
    kept: dict[str, Any] = {}
    for event in events:
        if event.kind == IMPORT_MARKER and isinstance(event.data.get("header"), dict):
            kept = dict(event.data["header"])
    header: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "call": _row(call, CALL_COLUMNS),
    }
    if kept:
        header.update(kept)
    else:
        header.update(exported_at=format_datetime(utcnow()), redacted=False)
    return Recording(
        header=header,
        sessions=[_row(s, SESSION_COLUMNS) for s in sessions],
        events=[_row(e, EVENT_COLUMNS) for e in events if e.kind != IMPORT_MARKER],
        turns=[_row(t, TURN_COLUMNS) for t in turns],
        source=call_sid,
    )


async def export_call(
    db: Database,
    call_sid: str,
    *,
    redact: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Recording:
    """The call ready to write: optionally redacted, with ``extra`` header fields (expect...)."""
    recording = await load_call(db, call_sid)
    if extra:
        recording.header.update(extra)
    if redact:
        recording = redact_recording(recording)
    return recording


def _db_value(model: type[Any], column: str, value: Any) -> Any:
    if value is None or not isinstance(value, str):
        return value
    python_type = _python_type(model, column)
    if python_type is datetime:
        # SQLite keeps no time zone: store UTC, as the recorder does.
        return parse_datetime(value)
    return value


def _python_type(model: type[Any], column: str) -> type[Any] | None:
    try:
        result: type[Any] = model.__table__.columns[column].type.python_type
    except NotImplementedError:
        return None
    return result


def _db_row(model: type[Any], columns: tuple[str, ...], row: Mapping[str, Any]) -> dict[str, Any]:
    return {c: _db_value(model, c, row[c]) for c in columns if c in row}


async def import_recording(db: Database, recording: Recording) -> bool:
    """Store a recording. True if imported, False if that very recording was already stored.

    Raises :class:`RecordingError` when a different call is stored under the same CallSid.
    """
    sid = recording.call_sid
    for session_row in recording.sessions:
        if session_row.get("call_sid") != sid:
            raise RecordingError(f"session {session_row.get('session_id')} belongs to another call")
    async with db.session() as session:
        existing = await session.get(Call, sid)
    if existing is not None:
        stored = await load_call(db, sid)
        if stored.lines()[1:] == recording.lines()[1:] and stored.call == recording.call:
            return False
        raise RecordingError(
            f"call {sid} is already stored with different content; not imported "
            "(delete it first, or import into another database)"
        )
    kept = {k: v for k, v in recording.header.items() if k not in ("format", "version", "call")}
    async with db.session() as session, session.begin():
        session.add(Call(**_db_row(Call, CALL_COLUMNS, recording.call)))
        await session.flush()
        for kind, rows in (("session", recording.sessions), ("turn", recording.turns)):
            if rows:
                model = _MODELS[kind]
                await session.execute(
                    insert(model), [_db_row(model, _COLUMNS[kind], r) for r in rows]
                )
        events = [_db_row(Event, EVENT_COLUMNS, e) for e in recording.events]
        events.append(
            {"call_sid": sid, "session_id": "", "seq": 0, "t": 0.0, "at": utcnow(), "kind": IMPORT_MARKER,
             "data": {"header": kept, "imported_at": format_datetime(utcnow())}}
        )  # fmt: skip
        # One statement per row keeps the ids, and so the order, exactly as in the file.
        for event in events:
            await session.execute(insert(Event).values(**event))
    return True


async def delete_call(db: Database, call_sid: str) -> None:
    """Remove a call and everything recorded about it."""
    async with db.session() as session, session.begin():
        for model in (Event, Turn, RelaySession):
            await session.execute(delete(model).where(model.call_sid == call_sid))
        await session.execute(delete(Call).where(Call.call_sid == call_sid))


# == redaction ===========================================================================

_NAME_KEYS = frozenset(
    {"name", "caller_name", "customer_name", "full_name", "first_name", "last_name", "contact_name"}
)
_KNOWN_CALLER = re.compile(r"Known caller: (\{.*?\})(?=\s|$)", re.S)


def names_in(recording: Recording) -> set[str]:
    """The people named in a recording: the caller, known customers, names given to tools."""
    names: set[str] = set()
    if recording.call.get("caller_name"):
        names.add(str(recording.call["caller_name"]))

    def collect(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in _NAME_KEYS and isinstance(item, str) and item.strip():
                    names.add(item.strip())
                else:
                    collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    for event in recording.events:
        data, kind = event.get("data") or {}, event.get("kind")
        if kind in ("frame_in", "frame_in_invalid"):
            frame = _json_or_none(data.get("raw"))
            if isinstance(frame, dict) and frame.get("type") == "setup" and frame.get("callerName"):
                names.add(str(frame["callerName"]))
        elif kind == "tool_call":
            collect(_json_or_none(data.get("arguments")))
        elif kind == "tool_result":
            collect(data.get("data"))
        elif kind == "llm_request":
            for message in (data.get("body") or {}).get("messages") or []:
                if message.get("role") == "system" and isinstance(message.get("content"), str):
                    for match in _KNOWN_CALLER.finditer(message["content"]):
                        collect(_json_or_none(match.group(1)))
    return names


def _json_or_none(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def redact_recording(recording: Recording) -> Recording:
    """A copy with phone numbers, e-mail addresses and people's names masked everywhere.

    Streamed text is masked as a stream: the pieces of each LLM answer, and the tokens of the
    text frames of each talk cycle, so that a value cut across pieces is masked as a whole and
    the pieces still join to the masked whole (what the turns and later requests hold).
    """
    call = recording.call
    # The business's line: the ``to`` of an inbound call (or one whose direction was not
    # recorded, as retention's masking has it), the ``from`` of an outbound one.
    outbound = str(call.get("direction") or "").startswith("outbound")
    own = call.get("from_number") if outbound else call.get("to_number")
    redactor = Redactor(
        names_in(recording),
        keep_numbers=[own] if own else [],
        region=region_of(own),
        fake_numbers=True,
    )

    def scrub(row: Mapping[str, Any]) -> dict[str, Any]:
        # A row's own timings are no one's data, and must stay readable as they are.
        return {k: v if _is_timing(k) else redactor.value(v) for k, v in row.items()}

    header = {k: (scrub(v) if k == "call" else v) for k, v in recording.header.items()}
    header["redacted"] = True
    events = [scrub(e) for e in recording.events]
    for original, event in zip(recording.events, events, strict=True):
        if original["kind"] == "llm_response" and isinstance(original["data"].get("pieces"), list):
            event["data"]["pieces"] = redactor.pieces([str(p) for p in original["data"]["pieces"]])
    for cycle in _talk_cycles(recording.events):
        frames = [_json_or_none(recording.events[i]["data"].get("raw")) for i in cycle]
        tokens = redactor.pieces([str(f.get("token") or "") for f in frames])
        for i, frame, token in zip(cycle, frames, tokens, strict=True):
            events[i]["data"] = {
                **events[i]["data"],
                "raw": orjson.dumps({**frame, "token": token}).decode(),
            }
    return Recording(
        header=header,
        sessions=[scrub(s) for s in recording.sessions],
        events=events,
        turns=[scrub(t) for t in recording.turns],
        source=recording.source,
    )


def _is_timing(column: str) -> bool:
    """A row's timestamp or timing column (``started_at``, ``t``, ``first_token_ms``...)."""
    return column == "t" or column.endswith(("_at", "_ms"))


def _talk_cycles(events: Sequence[Mapping[str, Any]]) -> list[list[int]]:
    """The indexes of the text frames of each talk cycle (up to a ``last: true``), per session."""
    cycles: list[list[int]] = []
    open_cycles: dict[str, list[int]] = {}
    for index, event in enumerate(events):
        if event["kind"] != "frame_out":
            continue
        frame = _json_or_none((event.get("data") or {}).get("raw"))
        if not isinstance(frame, dict) or frame.get("type") != "text":
            continue
        cycle = open_cycles.setdefault(event["session_id"], [])
        cycle.append(index)
        if frame.get("last"):
            cycles.append(open_cycles.pop(event["session_id"]))
    cycles.extend(open_cycles.values())
    return cycles
