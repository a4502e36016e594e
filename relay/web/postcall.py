"""Wiring of the post-call work (relay.services.postcall) into the app: built in the lifespan
from the settings, handed each closed session, closed at shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from relay.services import costs
from relay.services.analysis import Analyser
from relay.services.email import smtp_settings
from relay.services.postcall import PostCall
from relay.services.webhooks import WebhookOutbox

if TYPE_CHECKING:
    from relay.call.ports import CallDependencies
    from relay.call.session import CallSession
    from relay.config import Settings


class Runtime(Protocol):
    """What the post-call wiring reads and sets on the app's ``Runtime`` (relay.web.app),
    declared here so that this module does not import the app (which imports it)."""

    postcall: PostCall | None

    @property
    def settings(self) -> Settings: ...
    @property
    def deps(self) -> CallDependencies: ...
    @property
    def closers(self) -> list[Callable[[], Awaitable[None]]]: ...


def check(settings: Settings) -> None:
    """Raise a ConfigError naming the file or variable when the price table or the SMTP
    settings are wrong (called before any server starts)."""
    costs.load_prices(settings.prices, setting=_prices_setting(settings))
    smtp_settings(settings.smtp_url, settings.email_from)


def start(runtime: Runtime, background: list[asyncio.Task[Any]]) -> PostCall:
    """Build the post-call work, start the webhook outbox, give tools the SMTP settings."""
    settings, deps = runtime.settings, runtime.deps
    smtp = smtp_settings(settings.smtp_url, settings.email_from)
    if smtp is not None:
        deps.services = {
            name: {**services, "smtp": smtp} for name, services in deps.services.items()
        }
    outbox = None
    if any(agent.webhook_url for agent in deps.agents.agents.values()):
        outbox = WebhookOutbox(
            deps.db,
            deps.http,
            secret=settings.webhook_secret,
            max_attempts=settings.webhook_max_attempts,
        )
        background.append(asyncio.create_task(outbox.run(), name="relay-webhook-outbox"))
    analyser = None
    if settings.analysis_enabled:
        analyser = Analyser(
            deps.http,
            base_url=settings.llm_base_url,
            api_key=settings.llm_api_key(),
            default_model=settings.llm_model or "gpt-4o-mini",
        )
    postcall = PostCall(
        deps.db,
        deps.agents,
        costs.load_prices(settings.prices, setting=_prices_setting(settings)),
        outbox=outbox,
        analyser=analyser,
        smtp=smtp,
        now=lambda: deps.now(),
        # A retry after the database's trouble first waits for the recorder to store the call
        # (its status "in progress" until then would defer the work).
        flushed=deps.recorder.flush,
    )
    runtime.postcall = postcall

    async def close() -> None:  # the app's stop closes it first (relay.web.app): a no-op then
        await postcall.aclose()

    runtime.closers.insert(0, close)
    # Calls that ended while the database was down, or whose post-call work a stop cut short,
    # back from the recorder's spill file at this start: their outcomes, webhook and e-mail
    # are still to do (each once).
    for call_sid in dict.fromkeys(deps.recorder.restored_ends):
        postcall.call_ended(call_sid)
    deps.recorder.restored_ends.clear()
    return postcall


def session_closed(runtime: Runtime, session: CallSession) -> None:
    """A session's handler returned (its recording is flushed): work out how the call went."""
    if runtime.postcall is not None:
        runtime.postcall.call_ended(session.call_sid)


def _prices_setting(settings: Settings) -> str | None:
    """``RELAY_PRICES`` when it names the price table (which must then exist), else None."""
    return "RELAY_PRICES" if settings.prices_path else None
