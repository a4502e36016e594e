"""Bodies a client that has not proved who it is can send: Twilio's webhooks take only a small
``application/x-www-form-urlencoded`` form, the admin API's upload a capped multipart body, and
neither reads past its cap, chunked or not (relay.web.limits).

The raw exchanges write a body's start and never its end: a server that waited for the rest
would never answer, so an answer at all shows it stopped reading."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from relay.web import admin, limits
from relay.web.app import Runtime
from tests.conftest import raw_exchange

WAIT = 10.0  # the longest a test waits for an answer (a limit, never an expectation)
FORM = {"CallSid": "CA" + "1" * 32, "From": "+61412345678", "To": "+61390001234"}


async def exchange(base_url: str, head: str, body: bytes = b"") -> tuple[int, dict[str, str]]:
    """A raw request's head and body start, and the answer to the end of the connection:
    (status, headers)."""
    status, headers, _ = await raw_exchange(base_url, head, body, wait=WAIT)
    return status, headers


def chunked(data: bytes, size: int = 4096) -> bytes:
    """``data`` in chunks of the chunked transfer coding, without the last (empty) one."""
    return b"".join(
        b"%x\r\n%s\r\n" % (len(part), part)
        for part in (data[i : i + size] for i in range(0, len(data), size))
    )


# -- Twilio's webhooks --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/twiml", "/handoff"])
async def test_a_webhook_refuses_a_multipart_body_before_reading_any_of_it(
    start_relay: Any, path: str
) -> None:
    async with start_relay() as relay:
        status, headers = await exchange(
            relay.base_url,
            f"POST {path} HTTP/1.1\nHost: x\nContent-Type: multipart/form-data; boundary=B\n"
            "Content-Length: 4000000000\nX-Twilio-Signature: forged\n",
        )

    assert status == 415
    assert headers["connection"] == "close"


@pytest.mark.parametrize("path", ["/twiml", "/handoff"])
async def test_a_chunked_webhook_body_over_the_cap_is_refused_without_reading_the_rest(
    start_relay: Any, path: str
) -> None:
    start = chunked(b"CallSid=" + b"A" * (limits.SMALL_FORM_BYTES + 4096))
    async with start_relay() as relay:
        status, headers = await exchange(
            relay.base_url,
            f"POST {path} HTTP/1.1\nHost: x\nContent-Type: application/x-www-form-urlencoded\n"
            "Transfer-Encoding: chunked\n",
            start,
        )

    assert status == 413
    assert headers["connection"] == "close"


async def test_a_webhook_body_declared_over_the_cap_is_refused_at_once(start_relay: Any) -> None:
    async with start_relay() as relay:
        status, _ = await exchange(
            relay.base_url,
            "POST /twiml HTTP/1.1\nHost: x\nContent-Type: application/x-www-form-urlencoded\n"
            f"Content-Length: {limits.SMALL_FORM_BYTES + 1}\n",
        )

    assert status == 413


async def test_signed_forms_under_the_cap_are_taken_with_or_without_a_charset(
    start_relay: Any,
) -> None:
    async with start_relay(RELAY_RATE_LIMIT_BURST="1", RELAY_RATE_LIMIT_PER_SECOND="0.01") as relay:
        plain = await relay.post("/twiml", FORM)
        signature = plain.request.headers["x-twilio-signature"]
        with_charset = await relay.http.post(
            relay.base_url + "/twiml",
            content=plain.request.content,
            headers={
                "Content-Type": "application/x-www-form-urlencoded; charset=UTF-8",
                "X-Twilio-Signature": signature,
            },
        )
        # Refused bodies count with forged signatures: one source, one bucket.
        refused = [
            await relay.http.post(relay.base_url + "/twiml", content=b"{}") for _ in range(2)
        ]

    assert (plain.status_code, with_charset.status_code) == (200, 200)
    assert [r.status_code for r in refused] == [415, 429]


# -- the admin API's upload ---------------------------------------------------------------------


class Knowledge:
    """The knowledge store as the upload route uses it: what was added, by name."""

    def __init__(self) -> None:
        self.added: dict[str, bytes] = {}

    async def add_bytes(self, collection: str, name: str, data: bytes) -> dict[str, Any]:
        self.added[name] = data
        return {"path": name, "doc_id": name, "status": "added", "chunks": 1}


def with_knowledge(store: Knowledge) -> Any:
    def configure(runtime: Runtime) -> None:
        runtime.knowledge = store  # type: ignore[assignment]

    return configure


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


def multipart(name: str, data: bytes) -> bytes:
    return (
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="%s"\r\n'
        b"Content-Type: text/markdown\r\n\r\n%s\r\n--B--\r\n" % (name.encode(), data)
    )


async def test_a_chunked_upload_over_the_cap_is_refused_without_reading_the_rest(
    start_relay: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin, "MAX_UPLOAD_BYTES", 1000)  # a request may carry 5 of them
    store = Knowledge()
    async with start_relay(
        RELAY_ADMIN_TOKEN="admin-token", configure=with_knowledge(store)
    ) as relay:
        head = (
            "POST /admin/knowledge/piano-removals/documents HTTP/1.1\nHost: x\n"
            "Authorization: Bearer admin-token\nContent-Type: multipart/form-data; boundary=B\n"
        )
        over, headers = await exchange(
            relay.base_url,
            head + "Transfer-Encoding: chunked\n",
            chunked(multipart("big.md", b"x" * 6000)[:-10]),  # never its end
        )
        under = await relay.http.post(
            relay.base_url + "/admin/knowledge/piano-removals/documents",
            content=body(multipart("small.md", b"# Small\n")),  # chunked
            headers={
                "Authorization": "Bearer admin-token",
                "Content-Type": "multipart/form-data; boundary=B",
            },
        )

    assert over == 413
    assert headers["connection"] == "close"
    assert under.request.headers["transfer-encoding"] == "chunked"
    assert under.status_code == 200, under.text
    assert store.added == {"small.md": b"# Small\n"}


async def test_an_upload_without_the_token_is_refused_without_reading_its_body(
    start_relay: Any,
) -> None:
    async with start_relay(
        RELAY_ADMIN_TOKEN="admin-token", configure=with_knowledge(Knowledge())
    ) as relay:
        status, headers = await exchange(
            relay.base_url,
            "POST /admin/knowledge/piano-removals/documents HTTP/1.1\nHost: x\n"
            "Content-Type: multipart/form-data; boundary=B\nTransfer-Encoding: chunked\n",
            chunked(multipart("big.md", b"x" * 6000)[:-10]),
        )

    assert status == 401
    assert headers["connection"] == "close"
