"""Requests that fail the signature check, by source: forged WebSocket upgrades share the
per-source limit of forged webhooks, and each refusal's log line names the source as uvicorn
resolved it (the test servers believe ``X-Forwarded-For`` from 127.0.0.1, uvicorn's default)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import websockets

from relay import logging as relay_logging

FORM = {"CallSid": "CA" + "1" * 32, "From": "+61412345678", "To": "+61390001234"}


def log_lines(err: str, event: str) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


async def upgrade_status(relay: Any, **headers: str) -> int:
    """The status a WebSocket upgrade to /ws is answered with (101 when accepted)."""
    try:
        socket = await websockets.connect(relay.ws_url, additional_headers=headers)
    except websockets.InvalidStatus as refused:
        return refused.response.status_code
    await socket.close()
    return 101


async def test_forged_upgrades_are_rate_limited_by_source_and_logged_until_throttled(
    start_relay: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    relay_logging.configure("info", "json")
    async with start_relay(RELAY_RATE_LIMIT_BURST="3", RELAY_RATE_LIMIT_PER_SECOND="0.01") as relay:
        capsys.readouterr()
        forged = [await upgrade_status(relay, **{"X-Twilio-Signature": "bad"}) for _ in range(4)]
        webhook = await relay.post("/twiml", FORM, signature="bad")  # the same source's bucket
        other = await upgrade_status(
            relay, **{"X-Twilio-Signature": "bad", "X-Forwarded-For": "203.0.113.9"}
        )
        call = relay.call()  # signed upgrades are never limited
        await call.connect()
        await call.close()
        await relay.session_closed(6)
    err = capsys.readouterr().err

    assert forged == [403, 403, 403, 429]
    assert webhook.status_code == 429
    assert other == 403  # another source, its own bucket
    assert [(line["path"], line["client"]) for line in log_lines(err, "signature_rejected")] == [
        ("/ws", "127.0.0.1"),
        ("/ws", "127.0.0.1"),
        ("/ws", "127.0.0.1"),
        ("/ws", "203.0.113.9"),
    ]
    assert relay.sessions_started == 1


async def test_a_forged_webhook_is_logged_with_its_source(
    start_relay: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    relay_logging.configure("info", "json")
    async with start_relay() as relay:
        capsys.readouterr()
        response = await relay.http.post(
            relay.base_url + "/twiml",
            data=FORM,
            headers={"X-Twilio-Signature": "bad", "X-Forwarded-For": "198.51.100.4"},
        )
    err = capsys.readouterr().err

    assert response.status_code == 403
    [line] = log_lines(err, "signature_rejected")
    assert (line["path"], line["client"], line["level"]) == ("/twiml", "198.51.100.4", "warning")
