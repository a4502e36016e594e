"""A calendar feed of each agent's bookings, for the owner's calendar app.

``GET /calendar/{agent}/{token}.ics`` serves the bookings as iCalendar
(:func:`relay.domain.calendar_feed.build_ics`); the owner subscribes to the URL once in Google
Calendar or Outlook. The token and the bookings come from :mod:`relay.services.calendar_feed`.
A wrong token or an unknown agent gets the same 404, so the URL says nothing about which agents
exist. ``relay business feed-url AGENT`` prints the URL.

The handler finds what it needs on ``request.app.state.runtime`` (the app's ``Runtime``):
``deps.db``, ``deps.agents``, ``deps.services``, ``settings`` and ``feed_secret``.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from relay.agents import AgentProfile
from relay.domain.calendar_feed import build_ics
from relay.services.calendar_feed import (
    KEEP_PAST,
    SECRET_FILE,
    booking_events,
    feed_secret,
    feed_token,
    feed_url,
    settings_secret,
)

__all__ = [
    "SECRET_FILE",
    "booking_events",
    "calendar_feed",
    "feed_secret",
    "feed_token",
    "feed_url",
    "routes",
    "settings_secret",
]


def routes() -> list[Route]:
    """The feed's route, for the app's route list."""
    return [Route("/calendar/{agent}/{token}.ics", calendar_feed, methods=["GET", "HEAD"])]


async def calendar_feed(request: Request) -> Response:
    """``GET /calendar/{agent}/{token}.ics``."""
    runtime = request.app.state.runtime
    name = request.path_params["agent"]
    secret: bytes | None = runtime.feed_secret
    if secret is None:
        secret = runtime.feed_secret = settings_secret(runtime.settings)
    agent: AgentProfile | None = runtime.deps.agents.agents.get(name)
    if agent is None or not hmac.compare_digest(
        request.path_params["token"], feed_token(secret, name)
    ):
        return PlainTextResponse("Not Found", status_code=404)
    services: Mapping[str, Any] = runtime.deps.services.get(name, {})
    now: datetime = runtime.deps.now()
    events = await booking_events(runtime.deps.db, agent, services=services, since=now - KEEP_PAST)
    body = build_ics(
        events, calendar_name=f"{agent.business_name} bookings", timezone=agent.timezone
    )
    return Response(
        body,
        media_type="text/calendar; charset=utf-8",
        headers={
            "Content-Disposition": f'inline; filename="{name}.ics"',
            "Cache-Control": "private, max-age=300",
        },
    )
