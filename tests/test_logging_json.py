"""JSON logging is JSON on every line: structlog's own events and the standard library's records
(uvicorn, chromadb, alembic, ``knowledge``) rendered by structlog's ProcessorFormatter."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import structlog

from relay import logging as relay_logging

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def reset_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    structlog.reset_defaults()


def lines_of(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "nothing was logged"
    parsed = []
    for line in lines:
        try:
            parsed.append(orjson.loads(line))
        except orjson.JSONDecodeError:  # pragma: no cover - the assertion below explains
            pytest.fail(f"not a JSON line: {line!r}")
    return parsed


def test_library_records_are_json_lines(
    reset_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    relay_logging.configure("info", "json")
    capsys.readouterr()

    logging.getLogger("uvicorn.error").info("Started server process [%d]", 4242)
    logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET /healthz HTTP/1.1" 200')
    logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")  # filtered
    logging.getLogger("alembic.runtime.migration").warning("Running upgrade  -> 0001")
    logging.getLogger("chromadb.telemetry").info("Anonymized telemetry enabled.")  # filtered
    logging.getLogger("chromadb.api").error("collection %r is gone", "piano-removals")
    try:
        raise ValueError("bad chunk")
    except ValueError:
        logging.getLogger("knowledge.store").exception("ingest failed for %s", "faq.md")
    logging.getLogger("some.library").warning("caller +61412345678 said hi")
    structlog.get_logger("relay.test").info("relay_event", n=1)

    lines = lines_of(capsys.readouterr().err)
    by_event = {line["event"]: line for line in lines}
    caller = next(e for e in by_event if e.startswith("caller "))
    assert set(by_event) == {
        "Started server process [4242]",
        '127.0.0.1 - "GET /healthz HTTP/1.1" 200',
        "Running upgrade  -> 0001",
        "collection 'piano-removals' is gone",
        "ingest failed for faq.md",
        caller,
        "relay_event",
    }
    assert by_event["Started server process [4242]"]["logger"] == "uvicorn.error"
    assert by_event["Started server process [4242]"]["level"] == "info"
    assert by_event["Running upgrade  -> 0001"]["logger"] == "alembic.runtime.migration"
    assert by_event["collection 'piano-removals' is gone"]["level"] == "error"
    failed = by_event["ingest failed for faq.md"]
    assert failed["logger"] == "knowledge.store"
    assert "ValueError: bad chunk" in failed["exception"]
    assert all("timestamp" in line for line in lines)
    assert "+61412345678" not in caller  # the same masking as relay's own events

    assert by_event["relay_event"]["n"] == 1


def test_the_knowledge_packages_name_value_messages_become_json_fields(
    reset_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    relay_logging.configure("info", "json")
    capsys.readouterr()
    store = logging.getLogger("knowledge.store")

    store.info(
        "document_%s collection=%s doc_id=%s version=%d chunks=%d",
        "added", "piano-removals", "about.md", 1, 6,
    )  # fmt: skip
    logging.getLogger("knowledge.quantization").warning(
        "embedding_model_cache_invalid path=%s; rebuilding", "/cache/m.onnx"
    )
    logging.getLogger("knowledge.priority").info("thread_priority_unchanged error=%r", OSError(1))
    store.info("document_failed doc_id=%s reason=%s", "a.pdf", "call +61412345678 for it")
    store.info("loaded %d files in %s", 3, "docs")  # a sentence: left as it is
    logging.getLogger("uvicorn.error").info("x=%s", 1)  # not the knowledge package

    lines = [
        {k: v for k, v in line.items() if k != "timestamp"}
        for line in lines_of(capsys.readouterr().err)
    ]
    assert lines == [
        {"event": "document_added", "collection": "piano-removals", "doc_id": "about.md",
         "version": 1, "chunks": 6, "logger": "knowledge.store", "level": "info"},
        {"event": "embedding_model_cache_invalid", "path": "/cache/m.onnx", "note": "rebuilding",
         "logger": "knowledge.quantization", "level": "warning"},
        {"event": "thread_priority_unchanged", "error": "OSError(1)",
         "logger": "knowledge.priority", "level": "info"},
        {"event": "document_failed", "doc_id": "a.pdf", "reason": "call +61*******78 for it",
         "logger": "knowledge.store", "level": "info"},
        {"event": "loaded 3 files in docs", "logger": "knowledge.store", "level": "info"},
        {"event": "x=1", "logger": "uvicorn.error", "level": "info"},
    ]  # fmt: skip


def test_console_mode_renders_library_records_too(
    reset_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    relay_logging.configure("info", "console")
    capsys.readouterr()

    logging.getLogger("uvicorn.error").info("Application startup complete.")

    err = capsys.readouterr().err
    assert "Application startup complete." in err and "uvicorn.error" in err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
def test_a_real_relay_serve_logs_json_on_every_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for business in ("piano-removals", "car-service"):
        shutil.copytree(ROOT / "data" / business, data / business)
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RELAY_", "OPENAI_", "TWILIO_", "ELEVENLABS_", "DATABASE_"))
    }
    env.update(
        RELAY_LOG_FORMAT="json",
        RELAY_PROMPTS_DIR=str(ROOT / "prompts"),
        RELAY_DATA_DIR=str(data),
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}",
        RELAY_KNOWLEDGE="false",
        RELAY_DRAIN_SECONDS="1",
        PYTHONWARNINGS="default",
    )
    command = [
        sys.executable, "-c", "from relay.cli.main import main; raise SystemExit(main())",
        "serve", "--fake-llm", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "relay serve did not start"
            time.sleep(0.1)
        httpx.post(f"http://127.0.0.1:{port}/twiml", data={"To": "+61390001234"}, timeout=5)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover
            process.kill()
            out, err = process.communicate()

    lines = lines_of(err.decode())
    loggers = {line.get("logger") for line in lines}
    events = [line["event"] for line in lines]
    assert "uvicorn.error" in loggers, events
    assert "relay_started" in events
    assert any(str(port) in e for e in events if isinstance(e, str))  # "Uvicorn running on ..."
    assert out.decode().strip() == ""  # nothing on stdout either


def test_processes_sharing_one_pipe_never_split_a_line() -> None:
    """``relay serve --workers N`` gives every worker the same stderr: each line must be one write,
    or another process's line lands between a message and its newline (seen in CI)."""
    code = (
        "import structlog\n"
        "from relay.logging import configure\n"
        "configure(fmt='json')\n"
        "log = structlog.get_logger()\n"
        "for i in range(1500):\n"
        "    log.info('line', i=i, pad='x' * 100)\n"
        "import logging\n"
        "for i in range(300):\n"
        "    logging.getLogger('uvicorn.error').info('library line %d', i)\n"
    )
    read, write = os.pipe()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # as in the Dockerfile: no buffer to hide it
    processes = [
        subprocess.Popen([sys.executable, "-c", code], stdout=write, stderr=write, env=env)
        for _ in range(3)
    ]
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        output = pipe.read()
    assert [process.wait(timeout=60) for process in processes] == [0, 0, 0]
    lines = output.splitlines()
    assert len(lines) == 3 * 1800
    events = [orjson.loads(line) for line in lines]  # raises on a torn or joined line
    assert sum(event["event"] == "line" for event in events) == 3 * 1500
