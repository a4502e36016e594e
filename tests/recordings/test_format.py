"""The recording format: export, import, the byte-for-byte round trip, redaction, and the
``relay sessions`` commands over a real database."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.cli.main import main
from relay.recordings.format import (
    IMPORT_MARKER,
    Recording,
    RecordingError,
    Redactor,
    export_call,
    import_recording,
    load_call,
    mask_number,
    redact_recording,
)
from relay.storage.db import Database
from relay.testing import ScriptedLLM, Text, ToolCall, ToolCalls
from tests.conftest import CALL_CONTROL_TOOLS, agent_toml, write_profile

SESSIONS = Path(__file__).resolve().parents[1] / "sessions"
RECORDINGS = sorted(SESSIONS.glob("*.jsonl"))


def _read(path: Path) -> bytes:
    return path.read_bytes()


async def _database(path: Path) -> Database:
    db = Database(f"sqlite+aiosqlite:///{path}")
    await db.migrate()
    return db


# == the format ==========================================================================


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.stem)
async def test_a_committed_recording_imports_and_exports_to_the_same_bytes(
    path: Path, tmp_path: Path
) -> None:
    original = _read(path)
    db = await _database(tmp_path / "empty.db")
    try:
        assert await import_recording(db, Recording.loads(original, source=str(path))) is True
        again = await load_call(db, Recording.loads(original).call_sid)
    finally:
        await db.close()
    assert again.dumps() == original


async def test_export_import_export_of_a_real_call_is_byte_identical(
    start_relay: Callable[..., AbstractAsyncContextManager[Any]], tmp_path: Path
) -> None:
    llm = ScriptedLLM([
        ToolCalls([ToolCall("switch_language", {"language": "es-ES"}, id="call_1")], text="Claro."),
        Text("Perfecto, seguimos en español. ¿Qué piano tiene?"),
        Text("Un piano de cola, entendido."),
    ])  # fmt: skip
    async with start_relay(llm) as relay:
        call = relay.call()
        await call.connect()
        await call.say("¿Podemos hablar en español?")
        await call.say("Tengo un piano de cola — «Steinway».")
        await call.close()
        await relay.session_closed()
        first = await export_call(relay.runtime.deps.db, call.call_sid)
    assert {e["kind"] for e in first.events} >= {
        "frame_in",
        "frame_out",
        "llm_request",
        "llm_response",
        "tool_call",
        "tool_result",
        "session_end",
    }
    db = await _database(tmp_path / "second.db")
    try:
        assert await import_recording(db, Recording.loads(first.dumps())) is True
        second = await load_call(db, call.call_sid)
    finally:
        await db.close()
    assert second.dumps() == first.dumps()
    lines = first.dumps().splitlines()
    header = orjson.loads(lines[0])
    assert list(header)[:4] == ["format", "version", "call", "exported_at"]
    assert header["format"] == "relay-recording" and header["version"] == 1
    assert [orjson.loads(line)["type"] for line in lines[1:3]] == ["session", "event"]
    assert orjson.loads(lines[-1])["type"] == "turn"


async def test_reimporting_the_same_recording_is_a_no_op_and_a_different_one_is_refused(
    tmp_path: Path,
) -> None:
    data = (SESSIONS / "handoff.jsonl").read_bytes()
    db = await _database(tmp_path / "db.db")
    try:
        assert await import_recording(db, Recording.loads(data)) is True
        assert await import_recording(db, Recording.loads(data)) is False
        changed = Recording.loads(data)
        changed.turns[-1]["content"] = "Something else entirely."
        with pytest.raises(RecordingError, match="already stored with different content"):
            await import_recording(db, changed)
        stored = await load_call(db, changed.call_sid)
        assert stored.dumps() == data
        assert all(e["kind"] != IMPORT_MARKER for e in stored.events)
    finally:
        await db.close()


def test_reading_refuses_other_formats_and_versions() -> None:
    good = (SESSIONS / "keypad.jsonl").read_bytes()
    header, rest = good.split(b"\n", 1)
    newer = orjson.dumps({**orjson.loads(header), "version": 2}) + b"\n" + rest
    with pytest.raises(RecordingError, match="version 2"):
        Recording.loads(newer)
    with pytest.raises(RecordingError, match="not a relay recording"):
        Recording.loads(b'{"format": "something"}\n')
    with pytest.raises(RecordingError, match="empty"):
        Recording.loads(b"")


def test_a_sidecar_adds_expectations(tmp_path: Path) -> None:
    path = tmp_path / "handoff.jsonl"
    path.write_bytes((SESSIONS / "handoff.jsonl").read_bytes())
    (tmp_path / "handoff.expect.json").write_bytes(
        orjson.dumps({"expect": {"says": ["(?i)office"], "handoff": True}, "ignore": [r"Q\d+"]})
    )
    recording = Recording.read(path)
    assert recording.expect["says"] == ["(?i)office"]
    assert recording.expect["tools"][0]["name"] == "transfer_to_person"  # kept from the header
    assert recording.ignore == [r"Q\d+"]


# == redaction ===========================================================================


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+61412345678", "+61*******78"),
        ("+14155552671", "+1********71"),
        ("+353861234567", "+353*******67"),
        ("+447700900123", "+44********23"),
        ("0412 345 678", "**** *** *78"),
    ],
)
def test_phone_numbers_keep_the_country_code_and_the_last_two_digits(
    number: str, masked: str
) -> None:
    assert mask_number(number) == masked


def test_the_redactor_masks_numbers_names_and_addresses_but_keeps_the_business_line() -> None:
    redactor = Redactor(["Jane Citizen"], keep_numbers=["+61390001234"])
    text = (
        "Jane Citizen (jane.citizen@example.com) called +61 412 345 678 and +61390001234; "
        "call her back on (03) 9123 4567 or 0412-345-678. Jane said CA0123456789abcdef is her call, "
        "on 2026-03-10T22:30:00.000000+00:00, quote Q482913."
    )
    out = redactor.text(text)
    for secret in (
        "Jane",
        "Citizen",
        "jane.citizen@example.com",
        "412 345 678",
        "9123 4567",
        "0412-345-678",
    ):
        assert secret not in out
    assert "+61390001234" in out
    assert "+61*******78" in out
    assert "[name] ([email])" in out
    assert (
        "CA0123456789abcdef" in out
        and "2026-03-10T22:30:00.000000+00:00" in out
        and "Q482913" in out
    )


@pytest.mark.parametrize(
    ("direction", "caller", "line"),
    [
        ("inbound", "from_number", "to_number"),
        ("", "from_number", "to_number"),  # not recorded: inbound, as retention's masking has it
        ("outbound-api", "to_number", "from_number"),
    ],
)
def test_redaction_keeps_the_business_line_whatever_the_direction(
    direction: str, caller: str, line: str
) -> None:
    call = {"call_sid": "CA1", "direction": direction, caller: "+61412345678", line: "+61390001234"}
    redacted = redact_recording(Recording({"call": call})).call

    # The caller's number becomes one of ACMA's drama mobiles: still a number tools take.
    assert (redacted[caller], redacted[line]) == ("+61491570158", "+61390001234")


async def test_a_redacted_recording_keeps_its_timestamps_and_imports(tmp_path: Path) -> None:
    recording = Recording.loads((SESSIONS / "handoff.jsonl").read_bytes())
    stamp = "2026-12-07T20:10:38.130663+00:00"  # 130663 reads as an Australian 13 number
    recording.call["started_at"] = stamp
    recording.sessions[0]["started_at"] = stamp
    for row in [*recording.events, *recording.turns]:
        row["at" if "at" in row else "created_at"] = stamp
    recording.events[0]["t"] = 54273.131450
    recording.turns[1]["content"] = "Since 2026-12-07T20:10:38.131450, t=54273.131450, 0412345678."

    redacted = Recording.loads(redact_recording(recording).dumps())

    assert redacted.call["started_at"] == redacted.sessions[0]["started_at"] == stamp
    assert {r.get("at", r.get("created_at")) for r in [*redacted.events, *redacted.turns]} == {
        stamp
    }
    assert redacted.events[0]["t"] == 54273.131450
    assert redacted.turns[1]["content"] == (
        "Since 2026-12-07T20:10:38.131450, t=54273.131450, 0491570158."
    )
    db = await _database(tmp_path / "imported.db")
    try:
        assert await import_recording(db, redacted) is True
        again = await load_call(db, redacted.call_sid)
    finally:
        await db.close()
    assert again.call["started_at"] == stamp


async def test_a_redacted_export_holds_no_phone_number_or_name_and_still_replays(
    start_relay: Callable[..., AbstractAsyncContextManager[Any]], tmp_path: Path, prompts_dir: Path
) -> None:
    write_profile(prompts_dir, agent_toml([*CALL_CONTROL_TOOLS, "take_message"]))
    message = {"name": "Jane Citizen", "phone": "0412 345 678", "reason": "Call back."}
    llm = ScriptedLLM([
        Text("Thanks Jane. I'll text 0412 345 678 and email jane@example.com."),
        # A fake number in the redacted arguments must still be one the tool takes.
        ToolCalls([ToolCall("take_message", message, id="call_1")]),
        Text("No worries, Jane Citizen, talk soon."),
    ])  # fmt: skip
    async with start_relay(llm) as relay:
        call = relay.call(from_="+61412345678")
        await call.connect(setup=False)
        await call.send_setup(callerName="Jane Citizen")
        await call.say(
            "Hi, it's Jane. My mobile is 0412 345 678, or +61 412 345 678, email jane@example.com."
        )
        await call.say("Thanks, bye.")
        await call.close()
        await relay.session_closed()
        plain = await export_call(relay.runtime.deps.db, call.call_sid)
        redacted = await export_call(relay.runtime.deps.db, call.call_sid, redact=True)
        settings = relay.settings
    data = redacted.dumps()
    assert (
        b"+61412345678" in plain.dumps() and b"Jane" in plain.dumps()
    )  # there was something to hide
    assert b"Message taken" in data and b"0491 570 158" in data
    digits_only = re.sub(rb"[^0-9]", b"", data)
    assert b"61412345678" not in digits_only.replace(b"61390001234", b"")
    for secret in (
        b"412345678",
        b"0412 345 678",
        b"+61 412 345 678",
        b"Jane",
        b"Citizen",
        b"jane@example.com",
    ):
        assert secret not in data, secret
    assert b"+61491570158" in data  # a drama number (ACMA's), the same fake everywhere
    assert orjson.loads(data.splitlines()[0])["redacted"] is True
    assert redacted.call["from_number"] == "+61491570158"
    assert redacted.call["to_number"] == plain.call["to_number"]  # the business's own line stays
    assert redact_recording(redacted).dumps() == data  # masking is stable

    from relay.replay.runner import Options, run_replays

    path = tmp_path / "redacted.jsonl"
    path.write_bytes(data)
    [report] = await run_replays([Recording.read(path)], settings, Options(fast=True))
    assert not report.failed, report.regressions


# == the commands ========================================================================


@pytest.fixture
def cli_db(clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty database for ``relay sessions`` (and no .env from the working directory)."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "cli.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    monkeypatch.setenv("RELAY_LOG_LEVEL", "warning")
    return path


def test_sessions_commands(cli_db: Path, tmp_path: Path) -> None:
    for path in RECORDINGS:
        assert main(["sessions", "import", str(path)]) == 0
    assert "already stored" in _run(["sessions", "import", str(SESSIONS / "quote.jsonl")])
    sids = {p.stem: Recording.read(p).call_sid for p in RECORDINGS}

    listing = _run(["sessions", "list"])
    assert all(sid in listing for sid in sids.values())
    transferred = _run(["sessions", "list", "--outcome", "transferred"])
    assert (
        sids["handoff"] in transferred
        and sids["keypad"] in transferred
        and sids["quote"] not in transferred
    )
    assert _run(["sessions", "list", "--agent", "nobody"]).strip() == "No calls."
    assert _run(["sessions", "list", "--since", "2030-01-01"]).strip() == "No calls."
    assert (
        len(_run(["sessions", "list", "--until", "2027-01-01", "--limit", "2"]).splitlines()) == 3
    )

    shown = _run(["sessions", "show", sids["interruption"]])
    assert 'interrupted: the caller heard "We cover all of Melbourne"' in shown
    assert re.search(r"first text frame +\d+\.\d ms \|#+", shown)
    assert "last token" in shown
    handoff = _run(["sessions", "show", sids["handoff"]])
    assert "tool call transfer_to_person(" in handoff
    assert 'transfer_to_person → "Transferring the call now."' in handoff
    assert "Handoff to a person (transferred)" in handoff
    assert "hit a snag" in _run(["sessions", "show", str(SESSIONS / "llm-failure.jsonl")])

    out = tmp_path / "quote.jsonl"
    assert main(["sessions", "export", sids["quote"], "-o", str(out)]) == 0
    assert out.read_bytes() == (SESSIONS / "quote.jsonl").read_bytes()
    redacted = tmp_path / "quote-redacted.jsonl"
    assert main(["sessions", "export", sids["quote"], "--redact", "-o", str(redacted)]) == 0
    assert b"+61412345678" not in redacted.read_bytes()
    assert main(["sessions", "export", "CAnothere"]) == 1


def _run(argv: list[str]) -> str:
    """The command's standard output.

    Not through capsys: the command configures structlog, whose module loggers keep the
    ``sys.stderr`` of that moment, and capsys closes its stand-in after the test.
    """
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue()


def test_known_customers_and_names_given_to_tools_are_masked_too() -> None:
    recording = Recording.loads((SESSIONS / "handoff.jsonl").read_bytes())
    request = next(e for e in recording.events if e["kind"] == "llm_request")
    system = request["data"]["body"]["messages"][0]
    system["content"] += ' Known caller: {"id":7,"name":"Sarah Kelly","phone":"+61412345678"}'
    call = next(e for e in recording.events if e["kind"] == "tool_call")
    call["data"]["arguments"] = orjson.dumps({"name": "Tom Nguyen", "reason": "Call Tom."}).decode()
    recording.turns[1]["content"] = "Hi, Sarah here, calling for Tom. SARAH KELLY, tom nguyen."
    data = redact_recording(recording).dumps()
    for secret in (b"Sarah", b"SARAH", b"Kelly", b"Tom", b"Nguyen", b"+61412345678"):
        assert secret not in data, secret
    assert b"Hi, [name] here, calling for [name]. [name], [name]." in data
