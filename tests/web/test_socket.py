"""The ConversationRelay socket under abuse: malformed, binary, huge and deeply nested frames are
recorded and ignored and the call goes on; only the stated limits close the socket, each with
one clear log line. Over a real WebSocket to real uvicorn (relay.web.socket).
"""

from __future__ import annotations

from typing import Any

import pytest

from relay import logging as relay_logging
from relay.storage import repository
from relay.testing import ScriptedLLM, Text

pytestmark = pytest.mark.asyncio(loop_scope="module")  # the relay fixture is shared by the module

MIB = 1024 * 1024


def deep_info(depth: int) -> str:
    """The frame that used to kill a call: an info frame nested ``depth`` levels (530 bytes at 300)."""
    return '{"type":"info","name":"x","value":' + "[" * depth + "]" * depth + "}"


async def closed(call: Any) -> int | None:
    """Read until the server closes the socket; its close code."""
    while await call.next_frame(timeout=30) is not None:
        pass
    code: int | None = call._ws.close_code
    return code


async def invalid_events(relay: Any, call_sid: str) -> list[dict[str, Any]]:
    await relay.runtime.deps.recorder.flush()
    events = await repository.call_events(relay.runtime.deps.db, call_sid)
    return [e.data for e in events if e.kind == "frame_in_invalid"]


async def test_hostile_frames_are_ignored_and_the_call_goes_on(relay: Any) -> None:
    relay.llm.push(Text("Still here."))
    call = relay.call()
    await call.connect()

    hostile: list[str | bytes] = [
        deep_info(300),
        deep_info(5000),
        '{"type":"prompt","voicePrompt":' + '{"a":' * 200 + "1" + "}" * 200 + "}",
        b"\xff\xfe\x00binary\x80",
        b'{"type":"dtmf","digit":"\xff"}',
        '{"type":"prompt","voicePrompt":"' + "a" * MIB + '"}',  # 1 MiB
        "x" * (MIB + 17),
        '{"type":"interrupt","durationUntilInterruptMs":1e999}',
        '{"type":"setup","sessionId":["VX"],"callSid":{"CA":1}}',
        # (a timestamp may be any number, so this one's is a list to stay invalid)
        '{"type":"info","name":"agentSpeaking","value":{"on":[1,2,{"x":null}]},"ts":[1e30]}',
        '{"type":' + "1" * 5000 + "}",
    ]
    for frame in hostile:
        await call.send(frame) if isinstance(frame, str) else await call._ws.send(frame)
    reply = await call.say("Are you there?")
    await call.close()
    await relay.session_closed()

    assert reply.text == "Still here."
    assert call._ws.close_code == 1000  # we hung up; the server never closed on us
    invalid = await invalid_events(relay, call.call_sid)
    # Every hostile frame is recorded as invalid, each with at most 8 KiB of its text.
    assert len(invalid) == len(hostile)
    for record in invalid:
        assert len(record["raw"]) <= 8 * 1024
        assert record["error"]
    sizes = [r.get("size") for r in invalid]
    if all(size is not None for size in sizes):  # once the session records with record_of()
        assert MIB + 17 in sizes


async def test_frames_with_nulls_and_fractional_timestamps_are_used_not_refused(
    relay: Any,
) -> None:
    """Twilio's loose edges (conversationrelay.md, 0.1: validate loosely on inbound): a prompt
    with ``"lang": null`` is answered, a speaker event with a fractional ``ts`` is read."""
    relay.llm.push(Text("Hello!"))
    call = relay.call()
    await call.connect()
    await call.send('{"type":"info","name":"agentSpeaking","value":"off","ts":1752091234567.5}')
    await call.send(
        '{"type":"interrupt","utteranceUntilInterrupt":null,"durationUntilInterruptMs":null}'
    )
    await call.send('{"type":"prompt","voicePrompt":"hi","lang":null,"last":true}')
    reply = await call.reply()
    await call.close()
    await relay.session_closed()

    assert reply.text == "Hello!"
    assert await invalid_events(relay, call.call_sid) == []


async def test_a_frame_over_the_limit_closes_the_socket_with_1009(
    start_relay: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    relay_logging.configure("info", "json")
    async with start_relay(RELAY_WS_MAX_FRAME_BYTES=str(128 * 1024)) as relay:
        relay.llm.push(Text("Fine."))
        call = relay.call()
        await call.connect()
        assert (await call.say("hello")).text == "Fine."

        frame = '{"type":"prompt","voicePrompt":"' + "a" * (128 * 1024) + '"}'
        await call.send(frame)

        assert await closed(call) == 1009
        await relay.session_closed()
        sessions = await repository.call_sessions(relay.runtime.deps.db, call.call_sid)
        invalid = await invalid_events(relay, call.call_sid)
        stored = await repository.get_call(relay.runtime.deps.db, call.call_sid)
    assert [s.close_code for s in sessions] == [1009]
    assert "ws_closed_frame_too_large" in capsys.readouterr().err
    # The refused frame is recorded like every invalid one (its start, its real size) ...
    [record] = invalid
    assert record == {
        "raw": frame[: 8 * 1024], "size": len(frame), "truncated": True, "limit": 128 * 1024,
        "close_code": 1009, "error": f"frame of {len(frame)} bytes exceeds "
        f"RELAY_WS_MAX_FRAME_BYTES={128 * 1024}: the socket was closed (1009)",
    }  # fmt: skip
    # ... and the call ended because relay closed the socket, not because the caller hung up.
    assert stored is not None and stored.outcome == "frame-too-large"


async def test_a_frame_over_the_servers_own_limit_is_recorded_too(start_relay: Any) -> None:
    """uvicorn refuses a frame over its ``ws_max_size`` (16 MiB here, uvicorn's default; ``relay
    serve`` sets twice RELAY_WS_MAX_FRAME_BYTES) before relay sees it: only the close code and
    the protocol library's reason reach the app, and they are what is recorded."""
    async with start_relay(RELAY_WS_MAX_FRAME_BYTES=str(128 * 1024)) as relay:
        relay.llm.push(Text("Fine."))
        call = relay.call()
        await call.connect()
        assert (await call.say("hello")).text == "Fine."

        await call.send('{"type":"prompt","voicePrompt":"' + "a" * (16 * MIB) + '"}')

        assert await closed(call) == 1009
        await relay.session_closed()
        sessions = await repository.call_sessions(relay.runtime.deps.db, call.call_sid)
        invalid = await invalid_events(relay, call.call_sid)
        stored = await repository.get_call(relay.runtime.deps.db, call.call_sid)
    assert [s.close_code for s in sessions] == [1009]
    # The test client compresses (permessage-deflate): the frame was refused as it inflated
    # past the limit, and the library's reason gives no size.
    [record] = invalid
    assert record == {
        "raw": "", "truncated": True, "limit": 16 * MIB, "close_code": 1009,
        "error": f"the server's WebSocket limit refused the frame (frame exceeds limit of "
        f"{16 * MIB} bytes): the socket was closed (1009)",
    }  # fmt: skip
    assert stored is not None and stored.outcome == "frame-too-large"


@pytest.mark.parametrize(
    ("reason", "size", "limit"),
    [
        ("frame with 17825800 bytes exceeds limit of 16777216 bytes", 17825800, 16 * MIB),
        (  # a fragmented message: this frame plus what came before it
            "frame with 9000000 bytes after reading 10000000 bytes exceeds limit of 16777216 bytes",
            19000000,
            16 * MIB,
        ),
        ("frame exceeds limit of 16777216 bytes", None, 16 * MIB),
        (None, None, 8 * MIB),  # no reason (another protocol library): the configured limit
    ],
)
async def test_a_frame_the_server_refused_is_recorded_with_what_its_library_said(
    reason: str | None, size: int | None, limit: int
) -> None:
    from relay.web.socket import too_large_record

    record = too_large_record(None, limit=8 * MIB, reason=reason)
    assert (record.get("size"), record["limit"], record["close_code"]) == (size, limit, 1009)
    assert (record["raw"], record["truncated"]) == ("", True)
    assert record["error"] == (
        f"the server's WebSocket limit refused the frame ({reason or 'no reason given'}): "
        "the socket was closed (1009)"
    )


async def test_a_frame_at_the_limit_is_ignored_not_closed(start_relay: Any) -> None:
    async with start_relay(RELAY_WS_MAX_FRAME_BYTES=str(128 * 1024)) as relay:
        relay.llm.push(Text("Fine."))
        call = relay.call()
        await call.connect()
        head = '{"type":"prompt","voicePrompt":""}'
        await call.send(head.replace('""', '"' + "a" * (128 * 1024 - len(head)) + '"'))

        assert (await call.say("hello")).text == "Fine."


async def test_a_flood_of_invalid_frames_closes_the_socket_with_1008(
    start_relay: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    relay_logging.configure("info", "json")
    async with start_relay(RELAY_WS_MAX_INVALID_PER_SECOND="5") as relay:
        call = relay.call()
        await call.connect()
        for n in range(400):  # a minute's worth (300) at once: far faster than 5 a second
            await call.send(f"garbage {n}")

        assert await closed(call) == 1008
        await relay.session_closed()
        events = await repository.call_events(relay.runtime.deps.db, call.call_sid)
    [end] = [e.data for e in events if e.kind == "session_end"]
    assert (end["close_code"], end["close_reason"]) == (1008, "invalid-frames")
    assert "ws_closed_invalid_frames" in capsys.readouterr().err


async def test_a_burst_of_invalid_frames_within_the_minute_allowance_does_not_close(
    start_relay: Any,
) -> None:
    async with start_relay(RELAY_WS_MAX_INVALID_PER_SECOND="5") as relay:
        relay.llm.push(Text("Fine."))
        call = relay.call()
        await call.connect()
        for n in range(250):  # a burst, but under 60 s x 5 a second
            await call.send(f"garbage {n}")

        assert (await call.say("hello")).text == "Fine."


async def test_an_idle_socket_is_reaped(
    start_relay: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    relay_logging.configure("info", "json")
    async with start_relay(RELAY_WS_IDLE_SECONDS="0.3") as relay:
        call = relay.call()
        await call.connect()  # then nothing, from either side

        assert await closed(call) == 1001
        await relay.session_closed()
        sessions = await repository.call_sessions(relay.runtime.deps.db, call.call_sid)
        events = await repository.call_events(relay.runtime.deps.db, call.call_sid)
    assert [s.close_code for s in sessions] == [1001]
    [end] = [e.data for e in events if e.kind == "session_end"]
    assert end["close_reason"] == "idle"
    assert "ws_closed_idle" in capsys.readouterr().err


async def test_sending_counts_as_activity(start_relay: Any) -> None:
    """A long reply keeps the socket alive although the caller sends nothing meanwhile."""
    llm = ScriptedLLM([Text(" ".join(["word"] * 12))], token_delay=0.05)
    async with start_relay(llm, RELAY_WS_IDLE_SECONDS="0.4") as relay:
        call = relay.call()
        await call.connect()
        reply = await call.say("Tell me a long story")  # about 0.6 s of tokens

        assert reply.text.split() == ["word"] * 12
        # ... and once everything is quiet, the socket is reaped.
        assert await closed(call) == 1001


async def test_idle_reaping_can_be_turned_off(start_relay: Any) -> None:
    async with start_relay(RELAY_WS_IDLE_SECONDS="0") as relay:
        relay.llm.push(Text("Fine."))
        call = relay.call()
        await call.connect()
        with pytest.raises(TimeoutError):
            await call.next_frame(timeout=0.5)
        assert (await call.say("hello")).text == "Fine."


async def test_uvicorn_is_told_twice_the_limit_and_no_pings() -> None:
    from relay.config import load_settings
    from relay.web.socket import uvicorn_ws_options

    settings = load_settings(OPENAI_API_KEY="sk-test")
    assert settings.ws_max_frame_bytes == 4 * MIB
    assert (settings.ws_max_invalid_per_second, settings.ws_idle_seconds) == (2000, 300.0)
    assert uvicorn_ws_options(settings) == {"ws_max_size": 8 * MIB, "ws_ping_interval": None}


# -- a session fuzzed through a real socket (hypothesis; a bounded number of examples) ---------


def _harmless(raw: str | bytes) -> bool:
    """Frames that would legitimately change the call (a prompt, a key, a barge-in, a second
    setup) are left out: the fuzz checks that nothing *else* can."""
    from relay.errors import ProtocolError
    from relay.protocol import frames as protocol

    try:
        frame = protocol.parse_inbound(raw)
    except ProtocolError:
        return True
    return not isinstance(
        frame, protocol.Prompt | protocol.Dtmf | protocol.Interrupt | protocol.Setup
    )


async def test_a_fuzzed_session_never_loses_the_call(relay: Any) -> None:
    import asyncio

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from relay.testing.fuzz import raw_frames

    loop = asyncio.get_running_loop()
    examples = 0

    async def one_call(frames: list[str | bytes]) -> None:
        relay.llm.push(Text("Still here."))
        call = relay.call()
        await call.connect()
        for frame in frames:
            await call.send(frame) if isinstance(frame, str) else await call._ws.send(frame)
        reply = await call.say("Hello?")
        await call.close()
        assert reply.text == "Still here.", reply
        assert call._ws.close_code == 1000

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(st.lists(raw_frames.filter(_harmless), min_size=1, max_size=30))
    def fuzz(frames: list[str | bytes]) -> None:
        nonlocal examples
        examples += 1
        asyncio.run_coroutine_threadsafe(one_call(frames), loop).result(timeout=60)

    await asyncio.to_thread(fuzz)
    assert examples >= 10


async def test_the_fuzzcall_tool_loses_no_call(relay: Any) -> None:
    from relay.testing.fuzzcall import run

    summary = await run(relay.ws_url, 2, 300, 100, 11, auth_token=relay.settings.twilio_auth_token)

    assert summary["lost"] == []
    assert summary["frames"] == 600
    assert summary["prompts_answered"] == 6
