"""The Starlette application: webhooks, the ConversationRelay WebSocket, health and metrics.

Shared objects (database, recorder, one ``httpx.AsyncClient``, the LLM client, agents, tools,
knowledge) are built once in the lifespan and reach handlers through ``app.state``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketState

from relay.agents import AgentProfile, AgentRegistry
from relay.call import reconnect
from relay.call.session import CallDependencies, CallSession
from relay.config import Settings
from relay.heap import IdleCollector, limit_malloc_arenas, settle_heap
from relay.llm.client import OpenAIChat
from relay.llm.types import ChatModel, Timeouts
from relay.protocol import twiml
from relay.protocol.signatures import SignatureChecker
from relay.services import messaging
from relay.services.customers import CustomerDirectory
from relay.services.postcall import PostCall
from relay.storage import repository, spill
from relay.storage.db import Database, check_driver
from relay.storage.recorder import Recorder
from relay.tools import ToolRegistry, default_registry
from relay.tools.business import load_services
from relay.web import console, feeds, headers, limits, operations, postcall
from relay.web.socket import RelaySocket, SocketLimits

if TYPE_CHECKING:
    from knowledge import AsyncKnowledge
    from relay.call.supervisor import Supervisor
    from relay.services.retrieval import KnowledgeRetriever
    from relay.web.drain import Drain
    from relay.web.health import ModelProbe
    from relay.web.operations import Operations

log = structlog.get_logger("relay.web.app")

TWIML = "application/xml"


@dataclass
class Runtime:
    """What the lifespan builds; one per process."""

    settings: Settings
    deps: CallDependencies
    signatures: SignatureChecker
    started: float = field(default_factory=time.monotonic)
    active_sessions: int = 0
    sessions_total: int = 0
    #: The full garbage collection a worker makes when it has no call (relay.heap).
    heap: IdleCollector = field(default_factory=IdleCollector)
    #: The knowledge store and its retriever (None when knowledge is off or not opened yet).
    knowledge: AsyncKnowledge | None = None
    retriever: KnowledgeRetriever | None = None
    #: Set once the knowledge warm-up has finished (None when knowledge is off): the embedding
    #: model loaded, a first start's shipped documents loaded, the search index built; or it
    #: failed for good. While the store cannot be reached it is tried again and this stays
    #: unset. Until then ``/readyz`` says "warming up" and searches may time out.
    knowledge_warmed: asyncio.Event | None = None
    #: Set once the warm-up has been tried once, whatever came of it.
    knowledge_tried: asyncio.Event | None = None
    #: Closed at shutdown, after the recorder has flushed.
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    #: The calendar feed's token key, made once (bytes: never shown by /metrics).
    feed_secret: bytes | None = None
    #: The console's cookie key and whether it has users (checked at most every few seconds).
    console_key: bytes | None = None
    console_users_cached: tuple[float, bool] | None = None
    #: Watches live sessions (idle reaping, replacement of a call's older socket).
    supervisor: Supervisor | None = None
    #: Readiness: the model's reachability, probed in the background, and the drain switch.
    model_probe: ModelProbe | None = None
    drain: Drain | None = None
    #: Admission (call cap, rate limits) and the metrics sampler: relay.web.operations.
    ops: Operations | None = None
    #: Outcomes, cost, analysis, webhook and owner e-mail after each call (relay.web.postcall).
    postcall: PostCall | None = None
    #: New sessions this process offered each call after a failed one (/handoff), newest last.
    reconnects_offered: dict[str, int] = field(default_factory=dict)

    async def knowledge_ready(self) -> None:
        """Wait for the knowledge warm-up (at once when knowledge is off): for the in-process
        app of ``relay call``, ``relay replay`` and ``relay eval``, whose first question would
        otherwise race the embedding model's loading. A store that cannot be reached is not
        waited for (the warm-up goes on trying it): the first try is."""
        if self.knowledge_tried is not None:
            await self.knowledge_tried.wait()


def create_app(
    settings: Settings,
    *,
    llm: ChatModel | None = None,
    tools: ToolRegistry | None = None,
    now: Callable[[], datetime] | None = None,
    configure: Callable[[Runtime], Any] | None = None,
) -> Starlette:
    """Build the app. ``llm``, ``tools`` and ``now`` replace the real ones (tests, replay)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        agents = AgentRegistry.load(settings.prompts_dir, default=settings.default_agent)
        registry = tools or default_registry()
        agents.check_tools(registry.names())  # an unknown tool fails at start, naming the file
        db = Database(settings.database, pool_size=settings.db_pool_size)
        await db.migrate()
        recorder = Recorder(
            db,
            max_events=settings.recorder_max_events,
            flush_timeout=settings.recorder_flush_timeout,
            stop_timeout=settings.recorder_stop_timeout,
            spill_dir=spill.directory_for(settings.recorder_spill_dir, settings.database),
        )
        await recorder.start()
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_connections=4000, max_keepalive_connections=1000),
        )
        model = llm
        if model is None:
            model = OpenAIChat(
                settings.llm_base_url,
                settings.llm_api_key(),
                timeouts=Timeouts(
                    connect=settings.llm_connect_timeout, first_token=settings.llm_first_token_timeout,
                    read=settings.llm_read_timeout, turn=settings.llm_turn_timeout,
                ),
                max_retries=settings.llm_max_retries,
                transport=settings.llm_transport,
                read_interval=settings.llm_read_interval,
            )  # fmt: skip
        twilio = messaging.credentials(
            settings.twilio_account_sid, settings.twilio_auth_token, settings.twilio_from_number
        )
        services = {
            agent.name: {
                **load_services(agent, settings.data_dir),
                **({"twilio": twilio} if twilio else {}),
            }
            for agent in agents.agents.values()
        }
        deps = CallDependencies(
            agents=agents, llm=model, recorder=recorder, db=db, http=http, tools=registry,
            services=services, model_override=settings.llm_model, max_tool_rounds=settings.max_tool_rounds,
        )  # fmt: skip
        if now is not None:
            deps.now = now
        deps.directory = CustomerDirectory(db, services=deps.services, now=lambda: deps.now())
        signatures = SignatureChecker(settings.twilio_auth_token, public_url=settings.public_url)
        runtime = Runtime(settings=settings, deps=deps, signatures=signatures)
        background: list[asyncio.Task[Any]] = []
        if settings.knowledge_enabled:
            background.append(await _start_knowledge(runtime))
        background.append(console.start(runtime))  # supervisor commands (relay.web.console)
        stop_ops = await operations.start(runtime, background, probe_model=llm is None)
        postcall.start(runtime, background)  # outcomes, cost, webhook, e-mail after each call
        if configure is not None:
            result = configure(runtime)
            if hasattr(result, "__await__"):
                await result
        app.state.runtime = runtime
        if not signatures.enabled:
            log.warning(
                "signatures_off",
                message="TWILIO_AUTH_TOKEN is not set: Twilio signatures are NOT checked on "
                "/twiml, /handoff or /ws. Set it before taking real calls.",
            )
        if settings.public_url is None:
            log.warning(
                "public_url_unset",
                message="RELAY_PUBLIC_URL is not set: URLs are derived from each request's Host header.",
            )
        log.info(
            "relay_started",
            agents=sorted(agents.agents),
            default_agent=agents.default_name,
            database=_redact_url(settings.database),
        )
        settle_heap()  # full collections walk only what calls allocate
        try:
            yield
        finally:
            gc.unfreeze()  # what start-up built may be collected again once it is let go
            stop_ops()  # SIGTERM back to uvicorn's handler
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if runtime.postcall is not None:
                # Before the recorder stops (the work waits for it to store each call); what
                # is not done goes to the recorder's spill file, for the next start.
                spilling = recorder.spill_dir is not None
                lost = await runtime.postcall.aclose(log_lost=not spilling)
                if spilling:
                    recorder.defer_postcall(lost)
            await recorder.stop()
            for close in runtime.closers:
                with contextlib.suppress(Exception):
                    await close()
            if llm is None and isinstance(model, OpenAIChat):
                await model.aclose()  # ours: its keep-alive connections to the LLM
            await http.aclose()
            await db.close()
            log.info("relay_stopped", sessions=runtime.sessions_total)

    routes: list[BaseRoute] = [
        Route("/twiml", incoming_call, methods=["POST"]),
        Route("/handoff", connect_action, methods=["POST"]),
        WebSocketRoute("/ws", conversation_relay),
        WebSocketRoute("/ws/{call_sid}", conversation_relay),  # application reconnect (h11)
        *operations.routes(),  # /healthz, /readyz, /metrics (Prometheus)
        Route("/metrics.json", operations.protected(metrics), methods=["GET"]),
        # Browsers ask for it on any page they open (a JSON export, /metrics): the console's icon.
        Route("/favicon.ico", _favicon, methods=["GET"]),
    ]
    routes.extend(feeds.routes())
    routes.extend(console.routes())  # /console: answers 404 until sign-in is configured
    if settings.admin_token:
        from relay.web import admin

        routes.extend(operations.limit_admin(admin.routes()))
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(headers.NoSniff)],
        exception_handlers={500: headers.server_error},
    )


async def _start_knowledge(runtime: Runtime) -> asyncio.Task[Any]:
    """Open the knowledge store and hand it to sessions and tools; warm it up in the background."""
    from relay.services.retrieval import open_knowledge
    from relay.web.passages import served_retriever

    settings, deps = runtime.settings, runtime.deps
    knowledge = await asyncio.to_thread(functools.partial(open_knowledge, settings, serving=True))
    retriever = served_retriever(knowledge, settings)
    deps.retriever = retriever
    runtime.knowledge = knowledge
    runtime.retriever = retriever
    runtime.closers.append(retriever.aclose)
    runtime.closers.append(knowledge.aclose)
    for name in deps.agents.agents:
        services = dict(deps.services.get(name, {}))
        services["knowledge"] = retriever
        deps.services = {**deps.services, name: services}

    warmed = runtime.knowledge_warmed = asyncio.Event()
    tried = runtime.knowledge_tried = asyncio.Event()
    # The default agent's documents first: a first start's first call is most likely its.
    agents = sorted(deps.agents.agents.values(), key=lambda a: a.name != deps.agents.default_name)

    async def warm() -> None:
        # A store that cannot be reached (a Chroma server not up yet) is tried again, 1 s
        # doubling to 30 s, until it answers: a first start's shipped documents are loaded
        # then, and /readyz says "warming up" meanwhile (calls go on ungrounded). The trouble
        # and its end are logged once each, not once a try. Any other failure ends the warm-up:
        # the service runs without grounding rather than not at all.
        from knowledge.errors import StoreUnavailable

        delay, down_since = 1.0, None
        try:
            while True:
                try:
                    await knowledge.warm_up()
                    if settings.knowledge_autoload:
                        await retriever.autoload(agents, settings.documents_dir)
                    await retriever.warm_index(agents)
                except StoreUnavailable as exc:
                    tried.set()
                    if down_since is None:
                        down_since = time.monotonic()
                        log.error(
                            "knowledge_unavailable",
                            error=repr(exc)[:300],
                            message="retrying in the background; calls go ungrounded meanwhile",
                        )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                if down_since is not None:
                    log.info("knowledge_available", down_s=round(time.monotonic() - down_since))
                break
        except Exception as exc:
            log.error("knowledge_unavailable", error=repr(exc)[:300])
        finally:
            tried.set()
            warmed.set()

    return asyncio.create_task(warm(), name="relay-knowledge-warm-up")


async def _favicon(request: Request) -> Response:
    return RedirectResponse("/console/static/icon.svg", status_code=308)


def app_from_env() -> Starlette:
    """The app with settings from the environment: the factory each worker process of
    ``relay serve --workers N`` runs (``uvicorn --factory relay.web.app:app_from_env``)."""
    from relay import logging as relay_logging
    from relay.config import load_settings

    limit_malloc_arenas()  # before the worker starts its threads (relay.heap)
    settings = load_settings()
    relay_logging.configure(settings.log_level, settings.log_format)
    log.info("worker_starting", pid=os.getpid())
    return create_app(settings)


def preflight(settings: Settings, tools: ToolRegistry | None = None) -> AgentRegistry:
    """Check what start-up will need (profiles, tools, business tables, LLM key) and raise a
    ConfigError naming the variable or file, before any server starts."""
    settings.llm_api_key()
    if settings.llm_transport == "lean":  # the app's start-up refuses it too, in a traceback
        from relay.llm.client import refuse_proxies

        refuse_proxies(settings.llm_base_url + "/chat/completions")
    check_driver(settings.database)  # one line naming the missing database driver
    agents = check_agents(settings, tools)
    if settings.elevenlabs_api_key:
        _check_voices(settings, agents)
    postcall.check(settings)  # the price table, RELAY_SMTP_URL / RELAY_EMAIL_FROM
    return agents


def check_agents(settings: Settings, tools: ToolRegistry | None = None) -> AgentRegistry:
    """The agent profiles as start-up checks them: every profile valid, every tool it lists
    known, every business table it names readable (``relay agents check`` runs this alone).
    Raises a ConfigError naming the file and the field."""
    agents = AgentRegistry.load(settings.prompts_dir, default=settings.default_agent)
    agents.check_tools((tools or default_registry()).names())
    for agent in agents.agents.values():
        load_services(agent, settings.data_dir)
    return agents


def _check_voices(settings: Settings, agents: AgentRegistry) -> None:
    """With ``ELEVENLABS_API_KEY`` set: every agent's ElevenLabs voice must exist (a wrong id
    stops the start, naming the profile file). A key ElevenLabs refuses stops it too; an
    unreachable ElevenLabs only warns (Twilio, not relay, talks to it during calls)."""
    from relay.errors import ConfigError
    from relay.services.voices import VoiceError, Voices, check_agent_voices

    try:
        with Voices(settings.elevenlabs_api_key or "") as voices:
            checked = check_agent_voices(
                agents.agents.values(), voices, prompts_dir=settings.prompts_dir
            )
    except VoiceError as exc:
        if "(401)" in str(exc):
            raise ConfigError(str(exc)) from exc
        log.warning("voices_unchecked", error=str(exc)[:300])
        return
    log.info("voices_checked", voices=checked)


def _runtime(request: Request | WebSocket) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _redact_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


async def _signed_form(request: Request) -> dict[str, str] | None:
    """The webhook's form fields, or None when its signature is missing or wrong, or its body
    is not a small url-encoded form (Twilio sends nothing else): that body is refused before
    it is read (415), or as soon as it passes the cap (413), and counted like a forgery."""
    runtime = _runtime(request)
    try:
        form = await limits.read_form(request, limit=limits.SMALL_FORM_BYTES)
    except limits.BodyRefused as refused:
        throttled = operations.forged(request)  # 429 once a source floods
        request.state.refusal = throttled or refused.response()
        request.state.refusal.headers["Connection"] = "close"  # the rest is never read
        if throttled is None:  # a throttled flood is counted, not logged
            log.warning(
                "webhook_body_refused",
                path=request.url.path,
                status=refused.status_code,
                client=operations.client(request.scope),
            )
        return None
    if not runtime.signatures.check_http(request.url, request.headers, form):
        request.state.refusal = operations.forged(request)  # 429 once a source floods
        if request.state.refusal is None:  # a throttled flood is counted, not logged
            log.warning(
                "signature_rejected", path=request.url.path, client=operations.client(request.scope)
            )
        return None
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _forbidden(request: Request) -> Response:
    refusal: Response | None = getattr(request.state, "refusal", None)
    if refusal is not None:
        return refusal
    return Response(
        "Forbidden: invalid Twilio signature\n", status_code=403, media_type="text/plain"
    )


def _urls(request: Request) -> tuple[str, str]:
    """The wss:// URL for ConversationRelay and the https:// URL of the Connect action."""
    checker = _runtime(request).signatures
    ws_url = checker.public_ws_url("/ws", request.headers)
    action = checker.public_http_url(
        request.url.replace(path="/handoff", query=""), request.headers
    )
    return ws_url, action


async def incoming_call(request: Request) -> Response:
    """``POST /twiml``: the voice webhook. Answers with ``<Connect><ConversationRelay>``."""
    form = await _signed_form(request)
    if form is None:
        return _forbidden(request)
    agent = _runtime(request).deps.agents.for_number(form.get("To"))
    busy = operations.admit(_runtime(request), agent, form)  # over the call cap, or draining
    if busy is not None:
        return busy
    ws_url, action = _urls(request)
    ws_url = reconnect.socket_url(ws_url, agent, form.get("CallSid", ""))  # (h11)
    log.info(
        "call_incoming",
        agent=agent.name,
        call_sid=form.get("CallSid", ""),
        direction=form.get("Direction", ""),
    )
    document = twiml.connect(ws_url=ws_url, action_url=action, **agent.twiml_options())
    return Response(document, media_type=TWIML)


async def connect_action(request: Request) -> Response:
    """``POST /handoff``: Twilio's ``<Connect action>`` after a session ends. Always TwiML."""
    form = await _signed_form(request)
    if form is None:
        return _forbidden(request)
    runtime = _runtime(request)
    try:
        return Response(await _after_session(request, runtime, form), media_type=TWIML)
    except Exception:
        log.exception("handoff_failed")
        agent = runtime.deps.agents.default
        return Response(twiml.say_and_hang_up(agent.no_person_line), media_type=TWIML)


#: ``ErrorCode``s of a failed session that a new one would meet again: settings Twilio refused
#: (64101 invalid TTS settings, 64106 invalid argument). The call is not reconnected.
NO_RECONNECT = frozenset({"64101", "64106"})
#: New sessions offered to one call after failed ones (a dropped socket, 64105; a network
#: failure, 39001...) before relay stops reconnecting it.
MAX_RECONNECTS = 3


async def _reconnects_so_far(runtime: Runtime, call_sid: str, known: bool) -> int:
    """How many times this call was reconnected: its sessions beyond the first (any worker's),
    or the new sessions this process offered it if more (one that never connected leaves no
    session behind)."""
    offered = runtime.reconnects_offered.get(call_sid, 0)
    if not known:
        return offered
    try:
        sessions = await repository.call_sessions(runtime.deps.db, call_sid)
    except Exception as exc:  # the answer must not wait on a database in trouble
        log.error("handoff_sessions_lookup_failed", error=repr(exc)[:300])
        return offered
    return max(len(sessions) - 1, offered)


async def _after_session(request: Request, runtime: Runtime, form: dict[str, str]) -> str:
    status = form.get("SessionStatus", "")
    call_status = form.get("CallStatus", "")
    call_sid = form.get("CallSid", "")
    deps = runtime.deps
    # The session that just closed has handed over its history; Twilio waits ~15 s for TwiML,
    # so a database outage must not hold this answer (the handoff data is in the form anyway).
    await deps.recorder.flush(timeout=2.0)
    try:
        call = await repository.get_call(deps.db, call_sid) if call_sid else None
    except Exception as exc:
        log.error("handoff_call_lookup_failed", error=repr(exc)[:300])
        call = None
    agent = _agent_for(deps.agents, call.agent if call else None, form.get("To"))
    log.info(
        "session_action",
        call_sid=call_sid,
        session_status=status,
        call_status=call_status,
        error_code=form.get("ErrorCode"),
    )
    if call_status == "completed" or status == "completed":
        if call is not None:
            deps.recorder.update_call(call_sid, status="completed", ended_at=datetime.now(UTC))
        return twiml.empty()
    if status == "ended":
        handoff = _handoff_data(form.get("HandoffData"))
        if handoff.get("reasonCode") == "live-agent-handoff" or handoff.get("person"):
            number = handoff.get("takeoverNumber") or agent.person_number  # console take-over
            if number:
                if call is not None:
                    deps.recorder.update_call(call_sid, status="transferred", outcome="transferred")
                return twiml.dial(
                    say=agent.handoff_say,
                    number=number,
                    caller_id=form.get("To") or None,
                )
            return twiml.say_and_hang_up(agent.no_person_line)
        return twiml.say_and_hang_up(None)
    if status == "failed" and call_status in ("in-progress", "ringing", ""):
        code = form.get("ErrorCode", "")
        reconnects = await _reconnects_so_far(runtime, call_sid, call is not None)
        if code in NO_RECONNECT or reconnects >= MAX_RECONNECTS:
            # Settings Twilio refused (a new session would fail the same way), or a call
            # that keeps failing: a person takes it if the agent has one, else an apology in
            # Twilio's own voice (the session's may be what failed) and the call ends.
            log.warning("session_not_resumed", call_sid=call_sid, error_code=code,
                        reconnects=reconnects, to_person=bool(agent.person_number))  # fmt: skip
            if agent.person_number:
                if call is not None:
                    deps.recorder.update_call(call_sid, status="transferred", outcome="transferred")
                return twiml.dial(
                    say=agent.handoff_say,
                    number=agent.person_number,
                    caller_id=form.get("To") or None,
                )
            if call is not None:
                deps.recorder.update_call(call_sid, status="completed", ended_at=datetime.now(UTC))
            return twiml.say_and_hang_up(agent.trouble_line)
        runtime.reconnects_offered[call_sid] = reconnects + 1
        while len(runtime.reconnects_offered) > 10_000:  # oldest calls first (insertion order)
            del runtime.reconnects_offered[next(iter(runtime.reconnects_offered))]
        # The socket dropped but the caller is still there: reconnect with the same history.
        ws_url, action = _urls(request)
        ws_url = reconnect.socket_url(ws_url, agent, call_sid)  # (h11)
        if call is not None:
            deps.recorder.update_call(call_sid, status="reconnecting")
        greeting = agent.resume_greeting if call is not None else None
        params = {"resumed": "1", "greeting": greeting} if greeting else {}
        language = None
        if call is not None:  # a call that had switched language resumes in it
            try:
                language = await repository.call_language(deps.db, call_sid)
            except Exception as exc:  # the agent's language then; the session says it again
                log.error("handoff_language_lookup_failed", error=repr(exc)[:300])
        log.info(
            "session_resuming",
            call_sid=call_sid,
            error_code=form.get("ErrorCode"),
            had_history=call is not None,
            language=language,
        )
        return twiml.connect(
            ws_url=ws_url,
            action_url=action,
            **agent.twiml_options(parameters=params, welcome_greeting=greeting, language=language),
        )
    return twiml.empty()


def _agent_for(agents: AgentRegistry, name: str | None, to: str | None) -> AgentProfile:
    if name and name in agents.agents:
        return agents.agents[name]
    return agents.for_number(to)


def _handoff_data(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"person": "person" in raw.lower() or "agent" in raw.lower(), "raw": raw}
    return data if isinstance(data, dict) else {"raw": raw}


async def conversation_relay(websocket: WebSocket) -> None:
    """``/ws``: one ConversationRelay session."""
    runtime = _runtime(websocket)
    if not runtime.signatures.check_ws(websocket.url, websocket.headers):
        refusal = operations.forged(websocket)  # counted with forged webhooks, per source
        if refusal is None:
            log.warning("signature_rejected", path="/ws", client=operations.client(websocket.scope))
            await websocket.close(code=1008)  # before accept: the server answers 403
        else:  # a throttled flood is counted, not logged
            await _deny(websocket, refusal)
        return
    await websocket.accept()
    sock = RelaySocket(websocket, SocketLimits.from_settings(runtime.settings))
    session = CallSession(runtime.deps, sock.send)
    # application reconnect (h11): the call a reconnected socket names; a way to hand it over
    session.reconnect.call_sid_hint = str(websocket.path_params.get("call_sid", ""))
    session.reconnect.close_socket = functools.partial(sock._close, session)
    runtime.active_sessions += 1
    runtime.sessions_total += 1
    runtime.heap.busy()
    operations.session_opened(runtime, session)
    supervisor = runtime.supervisor
    if supervisor is not None:
        supervisor.watch(session)
    try:
        await session.run(sock.frames(session))  # limits and idle reaping: relay.web.socket
    finally:
        runtime.active_sessions -= 1
        if not runtime.active_sessions:
            runtime.heap.idle()  # the full pass the worker owes, while no caller waits
        operations.session_closed(runtime, session)
        postcall.session_closed(runtime, session)
        if supervisor is not None:
            supervisor.forget(session)
        session.reconnect.close_socket = None  # it holds the session: let the call go now
        if websocket.application_state is WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await websocket.close(code=1000)


async def _deny(websocket: WebSocket, refusal: Response) -> None:
    """Answer the upgrade with ``refusal`` (the 429), or with 403 when the server cannot send
    a response of its own (uvicorn can)."""
    try:
        await websocket.send_denial_response(refusal)
    except RuntimeError:  # no websocket.http.response extension
        await websocket.close(code=1008)


async def metrics(request: Request) -> Response:
    runtime = _runtime(request)
    rss_kb = _rss_kb()
    return JSONResponse(
        {
            "active_sessions": runtime.active_sessions,
            "sessions_total": runtime.sessions_total,
            "recorder_pending": runtime.deps.recorder.pending,
            "recorder_failures": runtime.deps.recorder.failures,
            "postcall_pending": runtime.postcall.pending if runtime.postcall is not None else 0,
            "rss_kb": rss_kb,
            "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "uptime_s": round(time.monotonic() - runtime.started, 1),
            "pid": os.getpid(),  # one worker's figures (relay bench adds them up)
            **_loop_lag(runtime),
            **_retrieval_counters(runtime),
            **_heap(runtime),
        }
    )


def _heap(runtime: Runtime) -> dict[str, Any]:
    idle = runtime.heap
    return {
        "gc_collections": [generation["collections"] for generation in gc.get_stats()],
        "gc_middle_passes": gc.get_count()[2],  # full pass due after relay.heap.OLDEST of them
        "gc_idle_collections": idle.collections,
        "gc_idle_ms_total": round(idle.seconds * 1000, 3),
    }


def _loop_lag(runtime: Runtime) -> dict[str, float]:
    ops = runtime.ops
    if ops is None:
        return {}
    lag = ops.lag
    return {
        "event_loop_lag_ms": round(lag.last * 1000, 3),
        "event_loop_lag_max_ms": round(lag.worst * 1000, 3),
    }


def _retrieval_counters(runtime: Runtime) -> dict[str, float]:
    retriever = runtime.retriever
    if retriever is None:
        return {}
    return retriever.counters()


def _rss_kb() -> int:
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * resource.getpagesize() // 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
