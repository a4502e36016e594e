"""The operator console at ``/console``: server-rendered pages for owners and editors.

Off (404) until ``RELAY_ADMIN_TOKEN`` is set or a console user exists (``relay users add``).
Everything is read from the database, so any worker serves any page, and the live pages see
calls served by every worker. See ``relay.web.console.auth`` for sign-in, cookies and CSRF.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from starlette.routing import BaseRoute, Route

from relay.call.supervisor import Supervisor

log = structlog.get_logger("relay.web.console")


def routes() -> list[BaseRoute]:
    from relay.web.console import views as v

    get, post = ["GET"], ["POST"]
    return [
        Route("/console", v.home, methods=get),
        Route("/console/sign-in", v.sign_in_page, methods=get),
        Route("/console/sign-in", v.sign_in, methods=post),
        Route("/console/sign-out", v.sign_out, methods=post),
        Route("/console/calls", v.calls, methods=get),
        Route("/console/calls/{call_sid}", v.call_page, methods=get),
        Route("/console/calls/{call_sid}/export", v.export, methods=get),
        Route("/console/calls/{call_sid}/command", v.command, methods=post),
        Route("/console/live", v.live, methods=get),
        Route("/console/api/live", v.live_api, methods=get),
        Route("/console/api/calls/{call_sid}/stream", v.stream, methods=get),
        Route("/console/quotes", v.quotes, methods=get),
        Route("/console/bookings", v.bookings, methods=get),
        Route("/console/calendar", v.calendar, methods=get),
        Route("/console/bookings/{booking_id}/{action}", v.booking_action, methods=post),
        Route("/console/messages", v.messages, methods=get),
        Route("/console/notifications", v.notifications, methods=get),
        Route("/console/notifications", v.save_notifications, methods=post),
        Route("/console/messages/{ticket_id}/done", v.ticket_done, methods=post),
        Route("/console/knowledge", v.knowledge, methods=get),
        Route("/console/knowledge/upload", v.knowledge_upload, methods=post),
        Route("/console/knowledge/remove", v.knowledge_remove, methods=post),
        Route("/console/static/{name}", v.static, methods=get),
    ]


def start(runtime: Any) -> asyncio.Task[None]:
    """The worker's supervisor: delivers console commands to the calls this worker serves."""
    supervisor = Supervisor(runtime.deps.db)
    runtime.supervisor = supervisor

    async def run() -> None:
        # Not relay.web.console.views (Jinja2 and the pages, about 50 ms of imports): this runs
        # on the event loop as the first calls connect.
        from relay.web.console import rollup

        try:  # the analytics rollups of past days, prepared before anyone asks
            await rollup.warm(
                runtime.deps.db,
                sorted(runtime.deps.agents.agents),
                zone=rollup.business_zone(runtime.deps.agents),
            )
        except Exception as exc:
            log.warning("console_rollup_warm_failed", error=repr(exc)[:300])
        from relay.web.console import notify

        agents = sorted(runtime.deps.agents.agents)
        zones = {name: a.timezone for name, a in runtime.deps.agents.agents.items()}
        await asyncio.gather(
            supervisor.run(),
            notify.run(runtime.deps.db, notify.channels_for(runtime), agents, zones),
        )

    return asyncio.create_task(run(), name="relay-console")
