"""X-Twilio-Signature on the webhooks and on the WebSocket upgrade.

Requests are signed exactly as Twilio signs them (twilio's RequestValidator, through
relay.testing.simcall.sign): HTTP webhooks over the public https URL plus the sorted form fields, the
upgrade over the wss:// URL as written in TwiML with no parameters.
"""

from __future__ import annotations

from typing import Any

import pytest
import websockets
from starlette.datastructures import URL, FormData, Headers

from relay.protocol.signatures import SignatureChecker
from relay.testing.simcall import sign

TOKEN = "secret-token"
#: Tests on the shared relay fixture run in the module's event loop.
shared_loop = pytest.mark.asyncio(loop_scope="module")
FORM = {"CallSid": "CA123", "From": "+61412345678", "To": "+61390001234", "CallStatus": "ringing"}


# -- the checker --------------------------------------------------------------------------------


def headers(**values: str) -> Headers:
    return Headers({k.replace("_", "-"): v for k, v in values.items()})


def test_http_signature_over_the_public_url() -> None:
    checker = SignatureChecker(TOKEN, public_url="https://voice.example.com")
    url = URL("http://10.0.0.5:8080/twiml")
    good = sign(TOKEN, "https://voice.example.com/twiml", FORM)

    assert checker.check_http(url, headers(x_twilio_signature=good, host="10.0.0.5:8080"), FORM)
    assert checker.check_http(url, headers(x_twilio_signature=good), FormData(list(FORM.items())))
    # Signed over the internal URL, a changed field, or another token: refused.
    assert not checker.check_http(
        url, headers(x_twilio_signature=sign(TOKEN, "http://10.0.0.5:8080/twiml", FORM)), FORM
    )
    assert not checker.check_http(
        url, headers(x_twilio_signature=good), {**FORM, "To": "+61390009999"}
    )
    assert not checker.check_http(
        url,
        headers(x_twilio_signature=sign("other", "https://voice.example.com/twiml", FORM)),
        FORM,
    )
    assert not checker.check_http(url, headers(), FORM)


def test_http_signature_covers_the_query_string() -> None:
    checker = SignatureChecker(TOKEN, public_url="https://voice.example.com")
    url = URL("http://internal/twiml?agent=piano")
    good = sign(TOKEN, "https://voice.example.com/twiml?agent=piano", FORM)

    assert checker.check_http(url, headers(x_twilio_signature=good), FORM)
    assert not checker.check_http(
        URL("http://internal/twiml?agent=other"), headers(x_twilio_signature=good), FORM
    )


def test_http_signature_from_forwarded_headers_without_a_public_url() -> None:
    checker = SignatureChecker(TOKEN, public_url=None)
    url = URL("http://127.0.0.1:8080/handoff")
    good = sign(TOKEN, "https://abc.ngrok.app/handoff", FORM)

    assert checker.check_http(
        url,
        headers(
            x_twilio_signature=good, x_forwarded_proto="https", x_forwarded_host="abc.ngrok.app"
        ),
        FORM,
    )
    assert not checker.check_http(
        url, headers(x_twilio_signature=good, host="127.0.0.1:8080"), FORM
    )


def test_ws_signature_is_over_the_wss_url_with_no_parameters() -> None:
    checker = SignatureChecker(TOKEN, public_url="https://voice.example.com")
    url = URL("ws://10.0.0.5:8080/ws")

    assert checker.check_ws(
        url, headers(x_twilio_signature=sign(TOKEN, "wss://voice.example.com/ws"))
    )
    # The scheme is part of what is signed: an https signature does not open the socket.
    assert not checker.check_ws(
        url, headers(x_twilio_signature=sign(TOKEN, "https://voice.example.com/ws"))
    )
    assert not checker.check_ws(
        url, headers(x_twilio_signature=sign(TOKEN, "wss://voice.example.com/other"))
    )
    assert not checker.check_ws(url, headers(x_twilio_signature="bm90IGEgc2lnbmF0dXJl"))
    assert not checker.check_ws(url, headers())


def test_ws_signature_with_a_query_string_is_accepted_either_way() -> None:
    checker = SignatureChecker(TOKEN, public_url="https://voice.example.com")
    url = URL("ws://10.0.0.5:8080/ws?agent=piano")

    as_params = sign(TOKEN, "wss://voice.example.com/ws", {"agent": "piano"})
    in_url = sign(TOKEN, "wss://voice.example.com/ws?agent=piano")
    assert checker.check_ws(url, headers(x_twilio_signature=as_params))
    assert checker.check_ws(url, headers(x_twilio_signature=in_url))
    assert not checker.check_ws(
        URL("ws://10.0.0.5:8080/ws?agent=other"), headers(x_twilio_signature=in_url)
    )


def test_without_a_token_everything_passes() -> None:
    checker = SignatureChecker(None, public_url=None)

    assert not checker.enabled
    assert checker.check_http(URL("http://h/twiml"), headers(), FORM)
    assert checker.check_ws(URL("ws://h/ws"), headers())


# -- through the app -----------------------------------------------------------------------------


@shared_loop
@pytest.mark.parametrize("path", ["/twiml", "/handoff"])
async def test_webhooks_accept_a_valid_signature(relay: Any, path: str) -> None:
    response = await relay.post(
        path, {**FORM, "SessionStatus": "completed", "CallStatus": "completed"}
    )

    assert response.status_code == 200
    assert response.text.startswith("<?xml")


@shared_loop
@pytest.mark.parametrize("path", ["/twiml", "/handoff"])
async def test_webhooks_refuse_a_missing_or_wrong_signature(relay: Any, path: str) -> None:
    missing = await relay.http.post(relay.base_url + path, data=FORM)
    wrong = await relay.post(
        path, FORM, signature=sign("not-the-token", relay.base_url + path, FORM)
    )
    tampered = await relay.http.post(
        relay.base_url + path,
        data={**FORM, "To": "+61390009999"},
        headers={
            "X-Twilio-Signature": sign(
                relay.settings.twilio_auth_token, relay.base_url + path, FORM
            )
        },
    )
    other_path = await relay.post(path, FORM, signed_url=relay.base_url + "/elsewhere")

    for response in (missing, wrong, tampered, other_path):
        assert response.status_code == 403
        assert "signature" in response.text


async def test_webhooks_are_checked_against_the_public_url(start_relay: Any) -> None:
    async with start_relay(RELAY_PUBLIC_URL="https://voice.example.com") as relay:
        public = await relay.post("/twiml", FORM)  # signed over https://voice.example.com/twiml
        internal = await relay.post("/twiml", FORM, signed_url=relay.base_url + "/twiml")
        handoff = await relay.post(
            "/handoff", {**FORM, "SessionStatus": "completed", "CallStatus": "completed"}
        )

    assert public.status_code == 200
    assert internal.status_code == 403
    assert handoff.status_code == 200


@shared_loop
async def test_websocket_upgrade_with_a_valid_signature_is_accepted(relay: Any) -> None:
    call = relay.call()
    await call.connect()  # signed over wss://127.0.0.1:PORT/ws, as the TwiML says
    await call.close()
    await relay.session_closed()


@shared_loop
@pytest.mark.parametrize(
    "make_headers",
    [
        pytest.param(lambda url, token: {}, id="missing"),
        pytest.param(
            lambda url, token: {"X-Twilio-Signature": sign("not-the-token", url)}, id="wrong-token"
        ),
        pytest.param(
            lambda url, token: {
                "X-Twilio-Signature": sign(token, url.replace("wss://", "https://"))
            },
            id="https-url",
        ),
        pytest.param(
            lambda url, token: {"X-Twilio-Signature": sign(token, url, {"x": "1"})},
            id="with-params",
        ),
    ],
)
async def test_websocket_upgrade_is_refused_before_accept(relay: Any, make_headers: Any) -> None:
    signed_url = relay.ws_url.replace("ws://", "wss://")

    with pytest.raises(websockets.InvalidStatus) as caught:
        await websockets.connect(
            relay.ws_url,
            additional_headers=make_headers(signed_url, relay.settings.twilio_auth_token),
        )

    assert caught.value.response.status_code == 403
    await relay.session_closed()
    assert relay.sessions_started == 0  # no session was ever started


async def test_websocket_upgrade_is_checked_against_the_public_url(start_relay: Any) -> None:
    async with start_relay(RELAY_PUBLIC_URL="https://voice.example.com") as relay:
        good = relay.call()  # signs wss://voice.example.com/ws
        await good.connect()
        await good.close()

        internal = relay.call(signed_url=relay.ws_url.replace("ws://", "wss://"))
        with pytest.raises(websockets.InvalidStatus) as caught:
            await internal.connect()
        await relay.session_closed(2)
        assert relay.sessions_started == 1

    assert caught.value.response.status_code == 403


async def test_without_an_auth_token_nothing_is_checked(start_relay: Any) -> None:
    async with start_relay(TWILIO_AUTH_TOKEN=None) as relay:
        assert relay.settings.twilio_auth_token is None
        response = await relay.http.post(relay.base_url + "/twiml", data=FORM)
        call = relay.call()
        await call.connect()
        await call.close()
        await relay.session_closed()

    assert response.status_code == 200
    assert relay.sessions_started == 1
