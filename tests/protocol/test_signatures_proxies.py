"""Signatures behind a chain of proxies: each proxy appends its own value to
``X-Forwarded-Proto`` and ``X-Forwarded-Host``, so the first one is what Twilio called (the
outermost proxy's, as the console's ``auth.secure()`` reads it)."""

from __future__ import annotations

from typing import Any

from starlette.datastructures import URL, Headers

from relay.protocol.signatures import SignatureChecker
from relay.testing.simcall import sign

TOKEN = "secret-token"
FORM = {"CallSid": "CA123", "From": "+61412345678", "To": "+61390001234", "CallStatus": "ringing"}


def test_the_first_forwarded_proto_and_host_are_the_public_ones() -> None:
    checker = SignatureChecker(TOKEN, public_url=None)
    url = URL("http://10.0.0.5:8080/twiml")
    chain = Headers(
        {
            "x-forwarded-proto": "https, http",
            "x-forwarded-host": " voice.example.com ,relay.internal:8080",
            "host": "10.0.0.5:8080",
            "x-twilio-signature": sign(TOKEN, "https://voice.example.com/twiml", FORM),
        }
    )

    assert checker.public_http_url(url, chain) == "https://voice.example.com/twiml"
    assert checker.public_ws_url("/ws", chain) == "wss://voice.example.com/ws"
    assert checker.check_http(url, chain, FORM)


async def test_a_webhook_through_a_chain_of_proxies_is_accepted(start_relay: Any) -> None:
    async with start_relay() as relay:
        form = {**FORM, "CallStatus": "ringing"}
        signature = sign(relay.settings.twilio_auth_token, "https://voice.example.com/twiml", form)
        response = await relay.http.post(
            relay.base_url + "/twiml",
            data=form,
            headers={
                "X-Twilio-Signature": signature,
                "X-Forwarded-Proto": "https, http",
                "X-Forwarded-Host": "voice.example.com",
            },
        )

    assert response.status_code == 200, response.text
    assert 'url="wss://voice.example.com/ws' in response.text
    assert 'action="https://voice.example.com/handoff"' in response.text
