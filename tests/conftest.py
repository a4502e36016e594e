"""Shared fixtures: isolated settings, a test copy of the shipped agent, and a running relay.

The running relay is the real app under a real uvicorn (``serve_in_process``) talking to the
scripted OpenAI-compatible server of ``relay.testing.scripted`` (``ScriptedLLM.app``, the app that
``FakeLLMServer`` runs), also under a real uvicorn; tests drive it as Twilio would, with
``SimulatedCall`` over a real WebSocket and signed form posts over real HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from relay.call.session import CallSession
from relay.config import Settings, load_settings
from relay.testing import ScriptedLLM
from relay.testing.simcall import SimulatedCall, serve_in_process, sign
from relay.web import app as app_module
from relay.web.app import Runtime, create_app

REPO = Path(__file__).resolve().parents[1]
SHIPPED_PROMPTS = REPO / "prompts"
SHIPPED_AGENT = SHIPPED_PROMPTS / "piano-removals.toml"

AUTH_TOKEN = "test-auth-token-0123456789abcdef"
#: The longest a test waits for the server to get somewhere (a limit, never an expectation).
WAIT = 10.0
#: The tools the test copy of the agent keeps: call control only, so these tests do not depend
#: on the business tools being present.
CALL_CONTROL_TOOLS = [
    "transfer_to_person",
    "end_call",
    "switch_language",
    "send_digits",
    "collect_digits",
]

#: Every environment variable Settings reads; removed so the host environment cannot leak in.
_SETTINGS_ENV = sorted(
    {
        alias
        for info in Settings.model_fields.values()
        for alias in ([info.alias] if info.alias else [])
        + list(getattr(info.validation_alias, "choices", []) or [])
        if isinstance(alias, str)
    }
)


def agent_toml(tools: list[str] = CALL_CONTROL_TOOLS) -> str:
    """The shipped piano agent, its ``tools`` list replaced and its ``[data]`` table (the
    business tables its business tools read) left out."""
    text = SHIPPED_AGENT.read_text(encoding="utf-8")
    text, replaced = re.subn(
        r"^tools = \[.*?^\]", "tools = " + orjson.dumps(tools).decode(), text, flags=re.S | re.M
    )
    text, dropped = re.subn(r"^\[data\]\n(?:[^\[\n].*\n)*", "", text, flags=re.M)
    assert (replaced, dropped) == (1, 1), (
        "the shipped agent's layout changed; update tests/conftest.py"
    )
    return text


def write_profile(prompts_dir: Path, text: str, **fields: Any) -> None:
    """The test agent's profile: ``fields`` as top-level settings ahead of ``text``."""
    head = "".join(f"{k} = {orjson.dumps(v).decode()}\n" for k, v in fields.items())
    (prompts_dir / SHIPPED_AGENT.name).write_text(head + text, encoding="utf-8")


def strip(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Frames without the receive times the simulated call adds (``_t``)."""
    return [{k: v for k, v in f.items() if k != "_t"} for f in frames]


async def stored_events(relay: Any, call_sid: str, kind: str) -> list[dict[str, Any]]:
    """The ``data`` of a call's recorded events of ``kind``, in order."""
    from sqlalchemy import select

    from relay.storage.models import Event

    async with relay.runtime.deps.db.session() as session:
        rows = await session.scalars(
            select(Event).where(Event.call_sid == call_sid, Event.kind == kind).order_by(Event.seq)
        )
        return [e.data for e in rows]


@pytest.fixture(autouse=True)
def _root_log_level() -> Iterator[None]:
    """The root logger's level as each test found it: a command run in a test (``relay eval``
    sets ``RELAY_LOG_LEVEL=error``) must not silence the warnings a later test reads."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


def fresh_logging(monkeypatch: pytest.MonkeyPatch, *modules: str) -> Iterator[None]:
    """structlog's defaults and a fresh logger for each of ``modules`` (its ``log``), whatever an earlier
    test configured: ``relay.logging`` at warning drops the info lines a test checks, and caches
    the loggers it has used, which ``capture_logs`` then never sees. For an autouse fixture:
    ``yield from fresh_logging(monkeypatch, "relay.storage.db")``."""
    import importlib

    import structlog

    structlog.reset_defaults()
    for module in modules:
        monkeypatch.setattr(importlib.import_module(module), "log", structlog.get_logger(module))
    yield
    structlog.reset_defaults()


async def raw_exchange(
    base_url: str, head: str, body: bytes = b"", *, wait: float = 10.0
) -> tuple[int, dict[str, str], str]:
    """Send a request's head and the start of its body on a raw socket, then read the answer up
    to the end of the connection (the server closes it): (status, lower-case headers, body).
    ``wait`` is the longest it waits (a limit, never an expectation)."""
    from urllib.parse import urlsplit

    address = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        writer.write(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        await writer.drain()
        async with asyncio.timeout(wait):
            answer = await reader.read()
    finally:
        writer.close()
    top, _, rest = answer.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, rest.decode("utf-8", "replace")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No relay/OpenAI/Twilio variable from the host environment."""
    for name in _SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)


REPO_DATA = Path(__file__).resolve().parent.parent / "data"


def seed_business_tables(data: Path) -> None:
    """Copy the shipped business tables (prices, places, calendars) the agents' tools load."""
    import shutil

    for business in ("piano-removals", "car-service"):
        shutil.copytree(REPO_DATA / business, data / business, dirs_exist_ok=True)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    seed_business_tables(path)
    return path


@pytest.fixture
def prompts_dir(tmp_path: Path) -> Path:
    """A prompts directory holding the test copy of the shipped agent."""
    path = tmp_path / "prompts"
    path.mkdir()
    (path / SHIPPED_AGENT.name).write_text(agent_toml(), encoding="utf-8")
    return path


def settings_for(data_dir: Path, prompts_dir: Path, **overrides: Any) -> Settings:
    """Settings for the given directories; keyword overrides by environment name (None unsets)."""
    values: dict[str, Any] = {
        "RELAY_DATA_DIR": str(data_dir),
        "RELAY_PROMPTS_DIR": str(prompts_dir),
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "RELAY_LOG_LEVEL": "warning",
        # Knowledge retrieval has its own tests; the call path is tested without it.
        "RELAY_KNOWLEDGE": "false",
    }
    values.update(overrides)
    return load_settings(_env_file=None, **{k: v for k, v in values.items() if v is not None})


@pytest.fixture
def make_settings(clean_env: None, data_dir: Path, prompts_dir: Path) -> Callable[..., Settings]:
    """Settings for the temp data and prompts directories; keyword overrides by env name."""

    def make(**overrides: Any) -> Settings:
        return settings_for(data_dir, prompts_dir, **overrides)

    return make


class Switchboard:
    """The fake LLM's ASGI app: hands every request to the current :class:`ScriptedLLM`, so one
    server can serve many tests, each with a fresh script."""

    def __init__(self, llm: ScriptedLLM | None = None) -> None:
        self.llm = llm if llm is not None else ScriptedLLM()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.llm.app(scope, receive, send)


class SessionWatch:
    """ASGI wrapper that counts WebSocket connections started and finished, so tests can wait
    for the server side of a call to be fully closed (its recording flushed) without sleeping."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.started = 0
        self.finished = 0
        self._changed: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        self.started += 1
        try:
            await self.app(scope, receive, send)
        finally:
            changed = self._condition()
            async with changed:
                self.finished += 1
                changed.notify_all()

    async def wait_finished(self, count: int) -> None:
        changed = self._condition()
        async with changed:
            await asyncio.wait_for(changed.wait_for(lambda: self.finished >= count), WAIT)

    async def wait_idle(self) -> None:
        changed = self._condition()
        async with changed:
            await asyncio.wait_for(changed.wait_for(lambda: self.finished >= self.started), WAIT)


class TwilioCall(SimulatedCall):
    """A SimulatedCall that also keeps every raw frame it sent, in order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []

    async def send(self, frame: Mapping[str, Any] | str) -> None:
        raw = frame if isinstance(frame, str) else orjson.dumps(frame).decode()
        self.sent.append(raw)
        await super().send(raw)

    def received(self) -> list[dict[str, Any]]:
        """The frames received, without the client's arrival timestamps."""
        return [{k: v for k, v in f.items() if k != "_t"} for f in self.frames]


@dataclass
class Relay:
    """Handles on a running relay and its scripted model."""

    base_url: str  # http://127.0.0.1:PORT
    board: Switchboard
    settings: Settings
    app: Starlette
    watch: SessionWatch
    http: httpx.AsyncClient
    calls: list[TwilioCall] = field(default_factory=list)
    _sessions_before: int = 0
    _finished_before: int = 0
    _sessions: list[weakref.ref[CallSession]] = field(default_factory=list)
    _patch: pytest.MonkeyPatch = field(default_factory=pytest.MonkeyPatch)

    @property
    def llm(self) -> ScriptedLLM:
        """The scripted model answering now: push replies, read ``requests``."""
        return self.board.llm

    def use(self, llm: ScriptedLLM) -> ScriptedLLM:
        """Answer from ``llm`` from now on (for example one with a ``token_delay``)."""
        self.board.llm = llm
        return llm

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1) + "/ws"

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime

    @property
    def sessions_started(self) -> int:
        """Call sessions the app started (accepted WebSockets) since this test began."""
        return self.runtime.sessions_total - self._sessions_before

    def public_base(self) -> str:
        """The base URL Twilio signs HTTP requests against."""
        return self.settings.public_url or self.base_url

    def call(self, **kwargs: Any) -> TwilioCall:
        """A signed call to this relay (not yet connected)."""
        kwargs.setdefault("auth_token", self.settings.twilio_auth_token)
        if self.settings.public_url and "signed_url" not in kwargs:
            kwargs["signed_url"] = "wss://" + self.settings.public_url.split("://", 1)[1] + "/ws"
        call = TwilioCall(self.ws_url, **kwargs)
        self.calls.append(call)
        return call

    async def post(
        self,
        path: str,
        form: Mapping[str, str],
        *,
        signature: str | None = None,
        signed_url: str | None = None,
    ) -> httpx.Response:
        """POST a form as Twilio would: signed over the public URL and the form fields."""
        headers = {}
        if signature is None and self.settings.twilio_auth_token:
            url = signed_url or self.public_base() + path
            signature = sign(self.settings.twilio_auth_token, url, form)
        if signature is not None:
            headers["X-Twilio-Signature"] = signature
        return await self.http.post(self.base_url + path, data=dict(form), headers=headers)

    async def session_closed(self, count: int = 1) -> None:
        """Wait until ``count`` WebSocket connections of this test have finished on the server
        (for an accepted one: its session closed and its recording flushed)."""
        await self.watch.wait_finished(self._finished_before + count)

    def begin_test(self) -> None:
        self.board.llm = ScriptedLLM()
        self.calls = []
        self._sessions_before = self.runtime.sessions_total
        self._finished_before = self.watch.finished
        # Each call's session must be freed when its socket closes, by reference counting:
        # with the collector off, a cycle through a session keeps it (see end_test).
        self._sessions = []
        self._patch.setattr(app_module, "CallSession", _tracking(self._sessions))
        gc.disable()

    async def end_test(self) -> None:
        """Hang up this test's calls and wait until the server has nothing left running, and
        check that every call session of the test was freed."""
        try:
            for call in self.calls:
                await call.close()
            await self.watch.wait_idle()
            await self.runtime.deps.recorder.flush()
            assert_requests_valid(self.llm)
            alive = [session for ref in self._sessions if (session := ref()) is not None]
            # something holds a session in a reference cycle (gc.get_referrers finds it)
            assert not alive, f"call sessions kept after their sockets closed: {alive}"
        finally:
            gc.enable()
            self._patch.undo()


def _tracking(made: list[weakref.ref[CallSession]]) -> type[CallSession]:
    """CallSession, noting a weak reference to each session made."""

    class Tracked(CallSession):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(weakref.ref(self))

    return Tracked


@asynccontextmanager
async def running_relay(
    settings: Callable[..., Settings],
    llm: ScriptedLLM | None = None,
    *,
    configure: Callable[[Runtime], Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[Relay]:
    """The fake LLM and the app, each under a real uvicorn on a free port in this loop.

    ``configure`` is handed to ``create_app``: it can swap in fakes for the shared objects.
    """
    board = Switchboard(llm)
    async with contextlib.AsyncExitStack() as stack:
        fake_llm = serve_in_process(board)
        llm_base = await fake_llm.__aenter__()
        serving: AbstractAsyncContextManager[str] | None = None

        async def stop() -> None:
            # Each uvicorn takes ~0.15 s to notice it should exit and drain: stop both at once.
            stopping = [fake_llm.__aexit__(None, None, None)]
            if serving is not None:
                stopping.append(serving.__aexit__(None, None, None))
            await asyncio.gather(*stopping)

        stack.push_async_callback(stop)
        resolved = settings(OPENAI_BASE_URL=llm_base + "/v1", **overrides)
        app = create_app(resolved, configure=configure)
        watch = SessionWatch(app)
        serving = serve_in_process(watch)
        base = await serving.__aenter__()
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
        relay = Relay(base, board, resolved, app, watch, http)
        try:
            yield relay
        finally:
            for call in relay.calls:
                await call.close()
        assert_requests_valid(relay.llm)


def assert_requests_valid(llm: ScriptedLLM) -> None:
    """Every request relay sent the scripted model was one OpenAI accepts (the scripted server
    answers any other with OpenAI's 400, see relay.testing.openai_rules)."""
    assert not llm.rejected, f"requests OpenAI would refuse (request number, error): {llm.rejected}"


@pytest.fixture
def start_relay(
    make_settings: Callable[..., Settings],
) -> Callable[..., AbstractAsyncContextManager[Relay]]:
    """``async with start_relay(llm, configure=..., **settings) as relay``: a fake LLM and a relay
    of its own, for tests that need particular settings. Runs in the test's own event loop."""

    def start(
        llm: ScriptedLLM | None = None,
        *,
        configure: Callable[[Runtime], Any] | None = None,
        **overrides: Any,
    ) -> AbstractAsyncContextManager[Relay]:
        return running_relay(make_settings, llm, configure=configure, **overrides)

    return start


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module's shared relay runs on each database its ``RELAY_DATABASES`` lists (default
    SQLite only): ``RELAY_DATABASES = ["sqlite", "postgres"]`` runs the module twice."""
    databases = getattr(metafunc.module, "RELAY_DATABASES", None)
    if databases and "relay_database" in metafunc.fixturenames:
        metafunc.parametrize("relay_database", databases, indirect=True, scope="module")


@pytest.fixture(scope="module")
def relay_database(request: pytest.FixtureRequest) -> str:
    """The database of the module's shared relay: "sqlite" or "postgres"."""
    return str(getattr(request, "param", "sqlite"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_relay(
    tmp_path_factory: pytest.TempPathFactory, relay_database: str, request: pytest.FixtureRequest
) -> AsyncIterator[Relay]:
    """One relay (and fake LLM) for a whole test module; see :func:`relay`."""
    database: dict[str, str] = {}
    if relay_database == "postgres":
        from relay.testing import postgres

        server = request.getfixturevalue("postgres_server")
        database["DATABASE_URL"] = await postgres.create_database(server)
    with pytest.MonkeyPatch.context() as env:
        for name in _SETTINGS_ENV:
            env.delenv(name, raising=False)
        root = tmp_path_factory.mktemp("relay")
        data, prompts = root / "data", root / "prompts"
        data.mkdir()
        seed_business_tables(data)
        prompts.mkdir()
        (prompts / SHIPPED_AGENT.name).write_text(agent_toml(), encoding="utf-8")
        async with running_relay(
            lambda **o: settings_for(data, prompts, **database, **o)
        ) as running:
            yield running
    if database:
        await postgres.drop_database(server, database["DATABASE_URL"])


@pytest_asyncio.fixture(loop_scope="module")
async def relay(shared_relay: Relay, request: pytest.FixtureRequest) -> AsyncIterator[Relay]:
    """A running relay with default settings and a fresh, empty script (``relay.llm.push``).

    The server is shared by the tests of a module (starting and stopping uvicorn is most of a
    test's time), so a test using it must run in the module's event loop: mark it (or the
    module) ``pytest.mark.asyncio(loop_scope="module")``. Each test gets its own script and
    its own calls (unique call SIDs); when it ends its calls are hung up and the server is
    idle again. Tests needing other settings use :func:`start_relay`.
    """
    marker = request.node.get_closest_marker("asyncio")
    if marker is None or marker.kwargs.get("loop_scope") != "module":
        pytest.fail('tests using the relay fixture need pytest.mark.asyncio(loop_scope="module")')
    shared_relay.begin_test()
    try:
        yield shared_relay
    finally:
        await shared_relay.end_test()


# -- databases: every test taking ``database_url`` runs on SQLite and on PostgreSQL ------------


@pytest.fixture(scope="session")
def postgres_server() -> Any:
    """A PostgreSQL server for the session: ``RELAY_TEST_POSTGRES_URL`` (``.ci/run`` starts one),
    else a throwaway cluster started here; skipped only when PostgreSQL is not installed."""
    import os

    from relay.testing import postgres

    url = os.environ.get(postgres.ENV)
    if url:
        yield url
        return
    if postgres.binaries() is None:
        pytest.skip("PostgreSQL is not installed (initdb not found)")
    with postgres.cluster() as started:
        yield started


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database: a SQLite file, or a new database on :func:`postgres_server`."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"
        return
    from relay.testing import postgres

    server = request.getfixturevalue("postgres_server")
    url = await postgres.create_database(server)
    try:
        yield url
    finally:
        await postgres.drop_database(server, url)
