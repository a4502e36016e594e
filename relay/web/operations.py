"""Running relay for real: what the app wires in for health, metrics, drain, admission and
retention (each in its own module; this one only connects them to the app).

``start`` runs in the lifespan; it sets ``runtime.ops`` (:class:`Operations`: the call gate, the
rate limiter, the metrics sampler), ``runtime.drain`` and ``runtime.model_probe``. The handlers
in :mod:`relay.web.app` call :func:`admit`, :func:`forged`, :func:`session_opened` and
:func:`session_closed`.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from prometheus_client import Counter
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from relay import metrics
from relay.agents import AgentProfile
from relay.services import retention
from relay.web import drain as drain_
from relay.web import health
from relay.web.admission import (
    CallGate,
    LimitedModel,
    RateLimiter,
    Tarpit,
    busy_twiml,
    too_many,
)

if TYPE_CHECKING:
    from relay.call.session import CallSession
    from relay.services.retrieval import KnowledgeRetriever


class Runtime(health.Runtime, Protocol):
    """What operations reads and sets on the app's ``Runtime`` (relay.web.app), declared here
    so that this module does not import the app (which imports it)."""

    ops: Operations | None  # settable here (read-only in health's view)
    drain: drain_.Drain | None

    @property
    def retriever(self) -> KnowledgeRetriever | None: ...


log = structlog.get_logger("relay.web.operations")

#: How often the sampled gauges (recorder backlog, failure counters kept by other objects)
#: are brought up to date; a scrape also samples first.
SAMPLE_EVERY = 5.0


async def start(
    runtime: Runtime, background: list[asyncio.Task[Any]], *, probe_model: bool = True
) -> Callable[[], None]:
    """Build and start everything; returns what the lifespan calls when it ends.

    ``probe_model`` is False when the model is an in-process fake (no server to probe)."""
    settings, deps = runtime.settings, runtime.deps
    gate = CallGate(settings.max_calls)
    sampler = _Sampler(runtime)
    limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
    runtime.ops = Operations(gate=gate, limiter=limiter, sampler=sampler)
    drain = drain_.Drain(gate, deps.recorder, settings.drain_seconds)
    runtime.drain = drain
    if settings.max_llm_concurrency is not None:
        deps.llm = LimitedModel(deps.llm, settings.max_llm_concurrency)
    if probe_model:
        probe = health.model_probe(runtime)
        await probe.probe()  # the first answer before the first /readyz
        background.append(asyncio.create_task(probe.run(), name="relay-model-probe"))
    background.append(asyncio.create_task(sampler.run(), name="relay-metrics-sampler"))
    background.append(asyncio.create_task(runtime.ops.lag.run(), name="relay-loop-lag"))
    if settings.retention_days is not None or settings.mask_numbers_after_days is not None:
        background.append(
            asyncio.create_task(
                retention.run_daily(
                    deps.db,
                    retention_days=settings.retention_days,
                    mask_after_days=settings.mask_numbers_after_days,
                    now=lambda: deps.now(),
                ),
                name="relay-retention",
            )
        )
    restore_signal = drain_.install(drain)

    def stop() -> None:
        restore_signal()
        metrics.process_exited(os.getpid())  # this worker's live gauges leave the sums

    return stop


class LoopLag:
    """How late the event loop runs what is due: a timer asks to be woken every ``every``
    seconds and measures how much later it was (``relay_event_loop_lag_seconds``; the last and
    the largest since the process started in ``/metrics.json``). On an idle worker it is well
    under a millisecond; tens of milliseconds mean the worker's core is saturated, and every
    caller on it waits that much more at every step of a turn."""

    def __init__(self, every: float = 0.5) -> None:
        self.every = every
        self.last = 0.0
        self.worst = 0.0
        self.samples = 0

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.last = seconds
        self.worst = max(self.worst, seconds)
        self.samples += 1
        metrics.EVENT_LOOP_LAG.observe(seconds)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.every
            await asyncio.sleep(self.every)
            self.observe(loop.time() - due)


@dataclass
class Operations:
    """This process's admission state, metrics sampler and loop-lag probe (``runtime.ops``)."""

    gate: CallGate
    limiter: RateLimiter
    sampler: _Sampler
    lag: LoopLag = field(default_factory=LoopLag)
    database_check: health.RecentCheck = field(default_factory=health.RecentCheck)
    tarpit: Tarpit = field(default_factory=Tarpit)


def routes() -> list[BaseRoute]:
    return [*health.routes(), Route("/metrics", protected(_prometheus), methods=["GET"])]


def limit_admin(routes: list[Any]) -> list[Any]:
    """The admin API's routes, each behind the per-source rate limit."""
    for route in routes:
        route.app = _AdminLimit(route.app)
    return routes


# -- admission ------------------------------------------------------------------------------


def admit(runtime: Runtime, agent: AgentProfile, form: dict[str, str]) -> Response | None:
    """None to connect the call, or the polite TwiML when this process cannot take it."""
    ops: Operations | None = runtime.ops
    drain: drain_.Drain | None = runtime.drain
    reason = None
    if drain is not None and drain.draining:
        reason = "draining"
    elif ops is not None and ops.gate.full:
        reason = "capacity"
    if reason is None:
        if ops is not None:
            ops.gate.reserve()
        return None
    metrics.CALLS_REJECTED.labels(reason).inc()
    log.warning("call_refused", reason=reason, call_sid=form.get("CallSid", ""), agent=agent.name)
    return Response(busy_twiml(agent, form.get("To")), media_type="application/xml")


def forged(connection: HTTPConnection) -> Response | None:
    """A webhook or a WebSocket upgrade failed the signature check: 429 once its source is
    over the limit, else None (the caller answers 403). Both share the source's bucket."""
    ops: Operations | None = connection.app.state.runtime.ops
    if ops is None:
        return None
    wait = ops.limiter.take("forged:" + client(connection.scope))
    return too_many(wait, "forged", ops.tarpit) if wait > 0 else None


def session_opened(runtime: Runtime, session: CallSession) -> None:
    if runtime.ops is not None:
        runtime.ops.gate.enter(session)


def session_closed(runtime: Runtime, session: CallSession) -> None:
    if runtime.ops is not None:
        runtime.ops.gate.leave(session)
    if session.setup is not None:
        metrics.call_ended(session.agent.name, session.outcome or "hung-up")
    if session.invalid_frames:
        metrics.INVALID_FRAMES.inc(session.invalid_frames)


# -- metrics ----------------------------------------------------------------------------------


class _Sampler:
    """Brings gauges and counters kept by other objects (the recorder, the retriever) into the
    Prometheus instruments, as increments: nothing on the call path waits for it."""

    #: (object, attribute) → the Prometheus counter that follows it.
    FOLLOWED: tuple[tuple[str, str, Counter], ...] = (
        ("recorder", "failures", metrics.RECORDER_FAILURES),
        ("recorder", "parked", metrics.RECORDER_PARKED),
        ("recorder", "lost", metrics.RECORDER_LOST),
        ("recorder", "dropped_events", metrics.RECORDER_DROPPED),
        ("recorder", "restored", metrics.RECORDER_RESTORED),
        ("retriever", "failures", metrics.KNOWLEDGE_FAILURES),
        ("retriever", "shed", metrics.KNOWLEDGE_SHED),
    )

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._seen: dict[tuple[str, str], int] = {}

    def sample(self) -> None:
        recorder = self.runtime.deps.recorder
        metrics.RECORDER_BACKLOG.set(recorder.pending)
        sources = {"recorder": recorder, "retriever": self.runtime.retriever}
        for source, attribute, counter in self.FOLLOWED:
            value = getattr(sources[source], attribute, 0)
            if not isinstance(value, int):
                continue
            before = self._seen.get((source, attribute), 0)
            if value > before:
                counter.inc(value - before)
            self._seen[(source, attribute)] = value

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_EVERY)


def protected(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """``handler`` behind ``RELAY_METRICS_TOKEN`` (a bearer token), when it is set."""

    async def guarded(request: Request) -> Response:
        token: str | None = request.app.state.runtime.settings.metrics_token
        if token and not _bearer_ok(request, token):
            return Response(
                "Unauthorized\n",
                status_code=401,
                media_type="text/plain",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        return await handler(request)

    return guarded


async def _prometheus(request: Request) -> Response:
    """``GET /metrics``: the text exposition format."""
    runtime = request.app.state.runtime
    if runtime.ops is not None:
        runtime.ops.sampler.sample()
    if metrics.multiprocess_dir() is not None:  # reads every worker's files: off the loop
        body = await asyncio.to_thread(metrics.exposition)
    else:
        body = metrics.exposition()
    return Response(body, media_type=metrics.CONTENT_TYPE)


def _bearer_ok(request: Request, token: str) -> bool:
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode(), token.encode()
    )


# -- rate limits ------------------------------------------------------------------------------


def client(scope: Scope) -> str:
    """The request's source address as uvicorn resolved it (from ``X-Forwarded-For`` only when
    the peer is one of ``RELAY_FORWARDED_ALLOW_IPS``): the rate limits' key, and what the
    refusals' log lines name."""
    address = scope.get("client")
    return str(address[0]) if address else "unknown"


class _AdminLimit:
    """ASGI wrapper: the admin API, per source, at the configured rate."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ops: Operations | None = scope["app"].state.runtime.ops
        if ops is not None:
            wait = ops.limiter.take("admin:" + client(scope))
            if wait > 0:
                await too_many(wait, "admin")(scope, receive, send)
                return
        await self.app(scope, receive, send)
