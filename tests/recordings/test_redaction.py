"""``relay sessions export --redact``: a grep of the exported call finds no number, address or e-mail.

A real call through the app: the caller's number (+61 412 345 678) said in five formats, a
second number in the two formats the old masker missed, a street address and an e-mail; the
model reads some of it back (streamed in pieces). The export is then grepped for every digit
sequence, with any separators between the digits.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from relay.cli.main import main
from relay.recordings.format import Recording
from relay.testing import ScriptedLLM, Text

SAID = "0412 345 678, 0412-345-678, 0412345678, +61 412 345 678 or (04) 1234 5678"


def _anywhere(digits: str) -> re.Pattern[bytes]:
    """The digits with anything but a digit (up to 3 characters) between them."""
    return re.compile(rb"\D{0,3}".join(d.encode() for d in digits))


async def test_an_exported_call_keeps_no_number_address_or_email(
    start_relay: Callable[..., AbstractAsyncContextManager[Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    llm = ScriptedLLM([
        Text("Thanks. I have 0412 345 678 and 555-555-0123, at 12 Smith Street, jane@example.com."),
        Text("Talk soon."),
    ])  # fmt: skip
    async with start_relay(llm) as relay:
        call = relay.call(from_="+61412345678")
        await call.connect()
        await call.say(f"My mobile is {SAID}.")
        await call.say(
            "At work it's 555-555-0123, or 5555550123. I'm at 12 Smith Street, Brunswick, "
            "email jane@example.com."
        )
        await call.close()
        await relay.session_closed()
        database = relay.settings.database
    monkeypatch.setenv("DATABASE_URL", database)
    monkeypatch.setenv("RELAY_LOG_LEVEL", "warning")
    plain, redacted = tmp_path / "plain.jsonl", tmp_path / "redacted.jsonl"
    # The command runs its own event loop: in a thread, as from a shell.
    assert (
        await asyncio.to_thread(main, ["sessions", "export", call.call_sid, "-o", str(plain)]) == 0
    )
    argv = ["sessions", "export", call.call_sid, "--redact", "-o", str(redacted)]
    assert await asyncio.to_thread(main, argv) == 0

    before, after = plain.read_bytes(), redacted.read_bytes()
    secrets = [
        _anywhere("412345678"),
        _anywhere("41234567"),  # (04) 1234 5678 and the like
        _anywhere("5555550123"),
        re.compile(rb"Smith Street"),
        re.compile(rb"jane@example\.com"),
    ]
    for secret in secrets:
        assert len(secret.findall(before)) >= 2, secret.pattern  # there was something to hide
        assert secret.findall(after) == [], secret.pattern
    assert b"+61491570158" in after and b"[address]" in after and b"[email]" in after
    recording = Recording.read(redacted)
    assert recording.header["redacted"] is True
    assert recording.call["to_number"] == Recording.read(plain).call["to_number"]  # own line
