"""The recorder's spill files: what a stopping process could not store, kept on local disk.

When the database is down as a process stops (a deploy or a restart during an outage), the
recorder's buffer (every frame, turn and call row not stored yet, the calls' ends among them)
would go with the process. Instead :meth:`relay.storage.recorder.Recorder.stop` writes it to a
spill file, and the next process to start with the same data directory hands it back to its
recorder, which stores it once the database answers and then deletes the file.

Each database has its own directory (:func:`directory_for`): the records go back only into the
database they were written for. One file per stop, JSON lines (orjson), written to a temporary name, flushed to disk and
renamed, so a file is either whole or absent::

    {"relay_recorder_spill": 1, "pid": 812, "written_at": "2026-12-08T00:12:03+00:00", "records": 2, "postcall": ["CA…"]}
    {"table": "calls", "partial": true, "row": {"call_sid": "CA…", "ended_at": "…"}, "types": {"ended_at": "datetime"}}
    {"event": ["CA…", "ws-…", 14, 12.5, "2026-12-08T00:11:59.120000+00:00", "prompt"], "data": "{…}"}

A row's datetimes and dates are written as ISO text and named in ``types``, so they come back
as the same Python values. Several processes may start on one data directory at once (``relay
serve --workers N``): each file is claimed with an exclusive ``flock`` held until its records
are stored, so exactly one process restores it; a process that dies holding one releases the
lock with its last breath, and the next start claims the file again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.engine import make_url

from relay.storage.db import dumps_json

FORMAT = 1
PREFIX = "recorder-spill-"
SUFFIX = ".jsonl"


def directory_for(base: Path, database_url: str) -> Path:
    """The spill directory of one database under ``base``: ``<base>/<12 hex digits>``, a
    digest of the database's identity (kind, user, host, port, name or file; not its password
    nor its driver). Records are only ever restored into the database they were written for:
    ``relay eval`` and ``relay replay`` run the app on a scratch database with the same data
    directory, and must not take (and delete) the served database's spill files; nor must a
    start with another ``DATABASE_URL``."""
    url = make_url(database_url)
    database = url.database or ""
    if url.get_backend_name() == "sqlite" and database not in ("", ":memory:"):
        database = str(Path(database).resolve())
    identity = "|".join(
        [url.get_backend_name(), url.username or "", url.host or "", str(url.port or ""), database]
    )
    return base / hashlib.sha256(identity.encode()).hexdigest()[:12]


class SpillError(Exception):
    """A spill file that cannot be read back (it is left where it is, renamed ``.bad``)."""


@dataclass(frozen=True, slots=True)
class SpilledRow:
    table: str
    partial: bool
    row: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SpilledEvent:
    call_sid: str
    session_id: str
    seq: int
    t: float
    at: datetime
    kind: str
    data: str  # the event's data, JSON text as the recorder buffers it


@dataclass(slots=True)
class Claim:
    """A spill file this process holds (its ``flock``) until its records are stored."""

    path: Path
    fd: int
    rows: list[SpilledRow] = field(default_factory=list)
    events: list[SpilledEvent] = field(default_factory=list)
    postcall: list[str] = field(default_factory=list)  # calls whose post-call work is to do

    @property
    def records(self) -> int:
        return len(self.rows) + len(self.events)

    def done(self) -> None:
        """The records are stored: delete the file, then let go of the lock."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.release()

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def write(
    directory: Path,
    rows: list[SpilledRow],
    events: list[SpilledEvent],
    *,
    postcall: list[str] | None = None,
    database: str | None = None,
) -> Path:
    """Write one spill file (whole or not at all) and return its path. ``postcall``: the
    calls whose post-call work the stopping process could not do (in the header);
    ``database``: its URL, named in the directory's ``DATABASE`` file (without a password)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    if database is not None and not (directory / "DATABASE").exists():
        # for a person looking at the folder: whose records these are (no password)
        url = make_url(database).set(password=None)
        (directory / "DATABASE").write_text(url.render_as_string(hide_password=False) + "\n")
    name = f"{PREFIX}{now:%Y%m%dT%H%M%S}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
    path = directory / name
    temporary = directory / f".{name}.tmp"
    header = {
        "relay_recorder_spill": FORMAT,
        "pid": os.getpid(),
        "written_at": now.isoformat(),
        "records": len(rows) + len(events),
        "postcall": list(postcall or ()),
    }
    with open(temporary, "wb") as out:
        out.write(orjson.dumps(header) + b"\n")
        for row in rows:
            values, types = _plain(row.row)
            line = {"table": row.table, "partial": row.partial, "row": values, "types": types}
            out.write(dumps_json(line).encode() + b"\n")
        for e in events:
            head = [e.call_sid, e.session_id, e.seq, e.t, e.at.isoformat(), e.kind]
            out.write(dumps_json({"event": head, "data": e.data}).encode() + b"\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    _sync_directory(directory)
    return path


def claim(directory: Path) -> tuple[list[Claim], list[str]]:
    """Claim and read every spill file in ``directory`` that no other live process holds.
    Returns the claims and, for each file that could not be read, why: such a file is renamed
    ``<name>.bad`` and kept for a person."""
    claims: list[Claim] = []
    bad: list[str] = []
    if not directory.is_dir():
        return claims, bad
    for path in sorted(directory.glob(f"{PREFIX}*{SUFFIX}")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # restored and deleted by another process meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # another live process holds it
        held = Claim(path, fd)
        try:
            if os.fstat(fd).st_ino != path.stat().st_ino:
                raise FileNotFoundError(path)  # replaced after we opened it
            _read(held)
        except FileNotFoundError:
            held.release()  # deleted by the process that restored it, after we opened it
            continue
        except (SpillError, OSError, ValueError, KeyError, TypeError) as exc:
            held.release()
            with contextlib.suppress(OSError):
                path.rename(path.with_name(path.name + ".bad"))
            bad.append(f"{path.name}: {exc}")
            continue
        claims.append(held)
    return claims, bad


def _read(held: Claim) -> None:
    with os.fdopen(os.dup(held.fd), "rb") as source:
        lines = source.read().splitlines()
    if not lines:
        raise SpillError("empty file")
    header = orjson.loads(lines[0])
    if not isinstance(header, dict) or header.get("relay_recorder_spill") != FORMAT:
        raise SpillError(f"not a relay recorder spill file of format {FORMAT}")
    postcall = header.get("postcall") or []
    if not isinstance(postcall, list) or not all(isinstance(sid, str) for sid in postcall):
        raise SpillError("postcall is not a list of call SIDs")
    held.postcall = postcall
    for number, line in enumerate(lines[1:], start=2):
        item = orjson.loads(line)
        if "event" in item:
            call_sid, session_id, seq, t, at, kind = item["event"]
            held.events.append(
                SpilledEvent(
                    call_sid, session_id, int(seq), float(t), datetime.fromisoformat(at), kind,
                    item["data"],
                )
            )  # fmt: skip
        elif "table" in item:
            row = _typed(item["row"], item.get("types") or {})
            held.rows.append(SpilledRow(item["table"], bool(item["partial"]), row))
        else:
            raise SpillError(f"line {number}: neither a row nor an event")
    if header.get("records") != held.records:
        raise SpillError(f"{held.records} records, the header says {header.get('records')}")


def _plain(row: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = {}
    types: dict[str, str] = {}
    for column, value in row.items():
        if isinstance(value, datetime):
            values[column], types[column] = value.isoformat(), "datetime"
        elif isinstance(value, date):
            values[column], types[column] = value.isoformat(), "date"
        else:
            values[column] = value
    return values, types


def _typed(values: dict[str, Any], types: dict[str, str]) -> dict[str, Any]:
    row = dict(values)
    for column, kind in types.items():
        if kind == "datetime":
            row[column] = datetime.fromisoformat(row[column])
        elif kind == "date":
            row[column] = date.fromisoformat(row[column])
        else:
            raise SpillError(f"unknown type {kind!r} of column {column!r}")
    return row


def _sync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
