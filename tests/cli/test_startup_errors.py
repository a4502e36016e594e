"""What the ``relay`` command says when it cannot start or cannot go on: one line naming what to
change (the variable, the flag), never a traceback; and the workers of ``relay serve --workers``
that outlive a parent killed outright."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.datastructures import Headers
from websockets.http11 import Response

from relay.cli import call as call_cli
from relay.cli import eval as eval_cli
from relay.cli.main import main
from relay.errors import ConfigError
from relay.replay.cassette import serve_asgi
from relay.testing.simcall import serve_in_process

REPO = Path(__file__).resolve().parents[2]
RELAY = [sys.executable, "-m", "relay"]
#: The longest a test waits for a process to get somewhere (a limit, never an expectation).
WAIT = 60.0
HANDOFF = str(REPO / "tests" / "sessions" / "handoff.jsonl")


def environ(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The host environment without relay's, OpenAI's, Twilio's or a proxy's variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RELAY_", "OPENAI_", "TWILIO_", "DATABASE_URL", "CHROMA_URL"))
        and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    }
    env.update(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",
            "RELAY_LOG_LEVEL": "error",
            "RELAY_KNOWLEDGE": "false",
            **extra,
        }
    )
    return env


def run(args: list[str], tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RELAY, *args], capture_output=True, text=True, cwd=REPO, env=environ(tmp_path, **extra),
        timeout=WAIT * 2, check=False,
    )  # fmt: skip


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- a port in use, a host that is not this machine's ------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_port_in_use_is_one_line_before_migrations(
    workers: str, taken: int, tmp_path: Path
) -> None:
    done = run(
        ["serve", "--fake-llm", "--host", "127.0.0.1", "--port", str(taken), "--workers", workers],
        tmp_path,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"relay: configuration error: cannot listen on 127.0.0.1:{taken}: address already in "
        "use (RELAY_PORT or --port)\n"
    )
    assert not (tmp_path / "relay.db").exists()  # stopped before the migrations


def test_relay_port_in_use_names_the_variable_too(taken: int, tmp_path: Path) -> None:
    done = run(["serve", "--fake-llm"], tmp_path, RELAY_HOST="127.0.0.1", RELAY_PORT=str(taken))
    assert (done.returncode, done.stderr) == (
        2,
        f"relay: configuration error: cannot listen on 127.0.0.1:{taken}: address already in "
        "use (RELAY_PORT or --port)\n",
    )


def test_a_host_that_does_not_resolve_is_one_line_naming_it(tmp_path: Path) -> None:
    done = run(["serve", "--fake-llm"], tmp_path, RELAY_HOST="999.1.1.1")
    assert done.returncode == 2
    assert done.stderr.startswith("relay: configuration error: cannot listen on 999.1.1.1:8080: ")
    assert done.stderr.endswith(" (RELAY_HOST or --host)\n")
    assert done.stderr.count("\n") == 1


def test_fake_llm_on_a_port_in_use_is_one_line(taken: int, tmp_path: Path) -> None:
    done = run(["fake-llm", "--port", str(taken)], tmp_path)
    assert (done.returncode, done.stderr) == (
        2,
        f"relay: configuration error: cannot listen on 127.0.0.1:{taken}: address already in "
        "use (--port)\n",
    )


def test_replay_with_its_llm_port_in_use_is_one_line(taken: int, tmp_path: Path) -> None:
    done = run(
        ["replay", "--url", f"ws://127.0.0.1:{free_port()}/ws", "--llm-port", str(taken), HANDOFF],
        tmp_path,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"relay: configuration error: cannot listen on 127.0.0.1:{taken}: address already in "
        "use (--llm-port)\n"
    )


async def test_the_recorded_llm_server_on_a_port_in_use_raises_a_config_error(
    taken: int,
) -> None:
    """uvicorn exits (SystemExit) when it cannot bind: out of a task, that escaped the event
    loop as "Task exception was never retrieved" and a traceback."""

    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("never served")

    with pytest.raises(ConfigError, match=rf"^cannot listen on 127\.0\.0\.1:{taken}$"):
        async with serve_asgi(app, "127.0.0.1", taken) as url:
            raise AssertionError(f"served at {url} on a port in use")


# -- flags that stand for settings ----------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--workers", "0", "--workers / RELAY_WORKERS: Input should be greater than or equal to 1"),
        ("--port", "0", "--port / RELAY_PORT: Input should be greater than or equal to 1"),
        ("--port", "70000", "--port / RELAY_PORT: Input should be less than or equal to 65535"),
    ],
)
def test_a_flag_out_of_range_is_refused_naming_the_flag_and_the_variable(
    flag: str, value: str, message: str, tmp_path: Path
) -> None:
    done = run(["serve", "--fake-llm", flag, value], tmp_path)
    assert (done.returncode, done.stderr) == (
        2,
        f"relay: configuration error: invalid settings: {message}\n",
    )


def test_the_lean_transport_behind_a_proxy_is_refused_before_start(tmp_path: Path) -> None:
    done = run(
        ["serve", "--fake-llm"], tmp_path, RELAY_LLM_TRANSPORT="lean",
        HTTP_PROXY="http://proxy.invalid:3128",
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "relay: configuration error: RELAY_LLM_TRANSPORT=lean connects directly, but the "
        "environment sets the proxy http://proxy.invalid:3128 for "
        "http://127.0.0.1:9/v1/chat/completions: use RELAY_LLM_TRANSPORT=aiohttp (the default), "
        "or exclude the host with NO_PROXY\n"
    )
    assert not (tmp_path / "relay.db").exists()


def test_fake_llm_help_says_what_each_option_is_and_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["fake-llm", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--host HOST interface to listen on (default: 127.0.0.1)" in text
    assert "--port PORT port (0: any free port) (default: 8081)" in text
    assert "--reply-tokens REPLY_TOKENS tokens per reply (default: 20)" in text


# -- misspelt variables ---------------------------------------------------------------------


def test_a_misspelt_variable_is_a_warning_naming_the_nearest_setting(tmp_path: Path) -> None:
    done = run(
        ["agents", "check"], tmp_path, RELAY_PROT="18264", RELAY_MAX_CALL="3",
        RELAY_LOG_LEVEL="warning", RELAY_LOG_FORMAT="json", RELAY_CHROMIUM="/usr/bin/chromium",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr  # a warning, not a refusal
    warnings = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(w["event"], w["variable"], w["did_you_mean"], w["message"]) for w in warnings] == [
        ("setting_unknown", "RELAY_MAX_CALL", "RELAY_MAX_CALLS",
         "RELAY_MAX_CALL is not a relay setting; ignored (did you mean RELAY_MAX_CALLS?)"),
        ("setting_unknown", "RELAY_PROT", "RELAY_PORT",
         "RELAY_PROT is not a relay setting; ignored (did you mean RELAY_PORT?)"),
    ]  # fmt: skip


# -- relay call --url ------------------------------------------------------------------------


def test_call_takes_an_http_url_as_its_websocket_saying_so(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    done = run(["call", "--url", f"http://127.0.0.1:{port}/ws"], tmp_path)
    assert done.returncode == 1
    first, second = done.stderr.splitlines()
    assert first == (
        f"relay call: http://127.0.0.1:{port}/ws is not a WebSocket URL; "
        f"using ws://127.0.0.1:{port}/ws"
    )
    assert second.startswith(f"relay call: cannot connect to ws://127.0.0.1:{port}/ws: ")


def test_call_refuses_a_url_that_is_no_websocket(tmp_path: Path) -> None:
    done = run(["call", "--url", "127.0.0.1:8080/ws"], tmp_path)
    assert (done.returncode, done.stderr) == (
        2,
        "relay: configuration error: --url 127.0.0.1:8080/ws: use ws:// or wss:// (a running "
        "server's WebSocket, e.g. ws://127.0.0.1:8080/ws)\n",
    )


async def test_call_says_what_a_refused_handshake_means(tmp_path: Path) -> None:
    async def refuse(websocket: WebSocket) -> None:
        await websocket.close(code=1008)  # before accept: 403, as relay's /ws on a bad signature

    app = Starlette(routes=[WebSocketRoute("/ws", refuse)])
    async with serve_in_process(app) as base:
        url = base.replace("http://", "ws://") + "/wrong"
        process = await asyncio.create_subprocess_exec(
            *RELAY, "call", "--url", url, cwd=REPO, env=environ(tmp_path),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(process.communicate(), WAIT)
    assert process.returncode == 1
    assert err.decode() == (
        f"relay call: cannot connect to {url}: server rejected WebSocket connection: HTTP 403 "
        "(refused: the Twilio signature did not check out, so this side's TWILIO_AUTH_TOKEN "
        "and RELAY_PUBLIC_URL must be the server's; or nothing takes a WebSocket at this path: "
        "relay's is /ws)\n"
    )


def test_a_404_handshake_says_nothing_is_served_there() -> None:
    refused = websockets.InvalidStatus(Response(404, "Not Found", Headers()))
    assert call_cli._refusal(refused) == (
        " (nothing is served at this path: relay's WebSocket is /ws)"
    )


# -- relay knowledge with a Chroma server that cannot be reached -----------------------------


@pytest.mark.parametrize(
    "args",
    [["add", "{doc}"], ["sync", "{docs}"], ["list"], ["show", "doc.md"], ["remove", "doc.md"],
     ["drop", "--yes"], ["search", "stairs"], ["load-shipped"]],
    ids=lambda args: args[0],
)  # fmt: skip
def test_knowledge_commands_with_a_dead_chroma_server_are_one_line(
    args: list[str], tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "doc.md").write_text("# Stairs\n\nWe carry pianos up stairs.\n", encoding="utf-8")
    (tmp_path / "data").mkdir()
    argv = [a.format(doc=docs / "doc.md", docs=docs) for a in args]
    dead = f"http://127.0.0.1:{free_port()}"
    done = run(
        ["knowledge", *argv], tmp_path, CHROMA_URL=dead, RELAY_DATA_DIR=str(tmp_path / "data")
    )
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith(
        f"relay knowledge: cannot reach the Chroma server at {dead} (CHROMA_URL): "
    )
    assert done.stderr.count("\n") == 1, done.stderr


# -- output piped into a reader that goes away (| head) --------------------------------------


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    reader, writer = os.pipe()
    os.close(reader)  # no reader at all: the first write fails (head -1 gone)
    try:
        done = subprocess.run(
            [*RELAY, "agents", "check"], stdout=writer, stderr=subprocess.PIPE, text=True,
            cwd=REPO, env=environ(tmp_path), timeout=WAIT, check=False,
        )  # fmt: skip
    finally:
        os.close(writer)
    assert (done.returncode, done.stderr) == (141, "")


# -- relay replay and relay eval -------------------------------------------------------------


@pytest.mark.parametrize("target", ["tests_missing/", "nope/call.jsonl", "nope.jsonl"])
def test_replay_of_a_path_that_names_nothing_says_no_such_file(target: str, tmp_path: Path) -> None:
    done = run(["replay", target], tmp_path)
    assert (done.returncode, done.stderr) == (
        1,
        f"relay: cannot read {target}: No such file or directory\n",
    )


def test_replay_over_url_says_the_server_keeps_its_own_clock(tmp_path: Path) -> None:
    done = run(
        ["replay", "--url", f"ws://127.0.0.1:{free_port()}/ws", "--llm-port", str(free_port()),
         "--timeout", "5", HANDOFF],
        tmp_path,
    )  # fmt: skip
    assert done.stderr.splitlines()[0] == (
        "relay replay: over --url the server uses its own clock (an in-process replay pins it "
        "to the recorded call's start): tools whose answers depend on the date (free slots, "
        "opening hours) may answer differently."
    )


@pytest.mark.parametrize(("flags", "level"), [([], {"RELAY_LOG_LEVEL": "error"}), (["-v"], {})])
def test_eval_shows_the_service_log_only_with_verbose(
    flags: list[str], level: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As relay replay: the service's info lines (each call's) would bury the progress lines."""
    given: list[dict[str, str]] = []

    def settings_from(args: object, **overrides: str) -> None:
        given.append(overrides)
        raise ConfigError("settings read")  # the scenarios need not run

    monkeypatch.setattr(eval_cli, "settings_from", settings_from)
    assert main(["eval", *flags]) == 2
    assert given == [level]


# -- the workers of a parent killed outright -------------------------------------------------


def test_a_worker_whose_parent_died_before_it_asked_stops_itself() -> None:
    code = "from relay.cli.workers import die_with_parent; die_with_parent(-1); input()"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, timeout=WAIT, check=False
    )
    assert done.returncode == -signal.SIGTERM


def gone(pid: int) -> bool:
    """The process has exited (a zombie no one reaps yet counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    port = free_port()
    env = environ(tmp_path, RELAY_LOG_LEVEL="info", RELAY_LOG_FORMAT="json")
    parent = subprocess.Popen(
        [*RELAY, "serve", "--fake-llm", "--workers", "2", "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    started: set[int] = set()
    workers: set[int] = set()
    ready = threading.Event()

    def read() -> None:
        assert parent.stdout is not None
        for line in parent.stdout:
            lines.append(line)
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            if event.get("event") == "worker_starting":
                workers.add(int(event["pid"]))
            if event.get("event") == "Application startup complete.":
                started.add(len(started))
            if len(workers) == 2 and len(started) == 2:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(WAIT * 2), "".join(lines)
        parent.kill()
        parent.wait(WAIT)
        deadline = time.monotonic() + WAIT
        while not all(gone(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [pid for pid in workers if not gone(pid)]
        assert left == [], "".join(lines)
    finally:
        for pid in workers:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        reader.join(WAIT)  # the workers held the pipe's write end too: now closed
        assert parent.stdout is not None
        parent.stdout.close()
    with socket.socket() as sock:  # free again: a restart can bind it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
