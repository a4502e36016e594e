"""Whose ``X-Forwarded-For`` the per-source limits believe: ``RELAY_FORWARDED_ALLOW_IPS``, by
default only a proxy on this host (uvicorn's own default), checked when the settings are read.

The server runs under a real uvicorn with the options ``relay serve`` gives it; a caller from
127.0.0.2 stands for one elsewhere (Linux routes all of 127.0.0.0/8 to this host)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
import uvicorn

from relay.config import Settings
from relay.errors import ConfigError
from relay.web.app import create_app

FORM = {"CallSid": "CA" + "1" * 32, "From": "+61412345678", "To": "+61390001234"}


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[str]:
    """The app under uvicorn as ``relay serve`` runs it (proxy headers, the setting's trust)."""
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=0, log_config=None, access_log=False,
        proxy_headers=True, forwarded_allow_ips=settings.forwarded_allow_ips, lifespan="on",
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:  # uvicorn sets a flag, no event to wait on
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


async def forged_from(base_url: str, local_address: str, count: int) -> list[int]:
    """``count`` forged /twiml requests from ``local_address``, each claiming another source."""
    transport = httpx.AsyncHTTPTransport(local_address=local_address)
    async with httpx.AsyncClient(transport=transport, timeout=10) as client:
        return [
            (
                await client.post(
                    base_url + "/twiml",
                    data=FORM,
                    headers={"X-Twilio-Signature": "bad", "X-Forwarded-For": f"198.51.100.{n}"},
                )
            ).status_code
            for n in range(count)
        ]


async def test_by_default_only_a_proxy_on_this_host_is_believed(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        OPENAI_BASE_URL="http://127.0.0.1:9/v1",
        RELAY_RATE_LIMIT_BURST="3",
        RELAY_RATE_LIMIT_PER_SECOND="0.01",
    )
    async with serving(settings) as base_url:
        elsewhere = await forged_from(base_url, "127.0.0.2", 4)
        local_proxy = await forged_from(base_url, "127.0.0.1", 4)

    assert elsewhere == [403, 403, 403, 429]  # its own address, whatever it claims
    assert local_proxy == [403] * 4  # each forwarded client its own bucket
    assert settings.forwarded_allow_ips == "127.0.0.1,::1"


@pytest.mark.parametrize(
    ("given", "read"),
    [
        ("*", "*"),
        (" * ", "*"),
        ("10.0.0.5", "10.0.0.5"),
        ("10.0.0.5, 10.0.0.0/8,::1", "10.0.0.5,10.0.0.0/8,::1"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("", "127.0.0.1,::1"),  # empty means unset, as for every setting
    ],
)
def test_forwarded_allow_ips_takes_a_star_or_addresses_and_networks(
    make_settings: Callable[..., Settings], given: str, read: str
) -> None:
    assert make_settings(RELAY_FORWARDED_ALLOW_IPS=given).forwarded_allow_ips == read


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("notanip", "'notanip' is not an IP address or network"),
        ("10.0.0.5/8", "'10.0.0.5/8' has host bits set"),
        ("10.0.0.5,,10.0.0.6", "an empty entry"),
        ("*,10.0.0.5", "'*' stands alone"),
        ("localhost", "'localhost' is not an IP address or network"),
    ],
)
def test_an_invalid_forwarded_allow_ips_is_one_line_naming_the_variable(
    make_settings: Callable[..., Settings], given: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        make_settings(RELAY_FORWARDED_ALLOW_IPS=given)

    message = str(raised.value)
    assert message.startswith("invalid settings: RELAY_FORWARDED_ALLOW_IPS: ")
    assert problem in message
    assert "\n" not in message
