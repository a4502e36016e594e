"""Property-based tests of the inbound parser: whatever arrives, ``parse_inbound`` returns a frame
or raises :class:`ProtocolError`, never anything else, and ``record_of`` can always be stored."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.errors import ProtocolError
from relay.protocol import frames as protocol
from relay.testing.fuzz import raw_frames


def check(raw: str | bytes) -> None:
    try:
        frame = protocol.parse_inbound(raw)
    except ProtocolError as exc:
        assert str(exc)
    else:
        assert isinstance(frame, protocol.InboundFrame)
    record = protocol.record_of(raw)
    orjson.dumps(record)  # storable as JSON: no lone surrogates, no bytes
    assert record["size"] == (
        len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    )
    assert len(record["raw"]) <= protocol.RECORD_CAP


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_frames)
def test_the_parser_never_raises_anything_but_protocol_error(raw: str | bytes) -> None:
    check(raw)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(min_value=protocol.MAX_FRAME_BYTES - 64, max_value=2 * 1024 * 1024), st.booleans()
)
def test_frames_up_to_two_mebibytes_are_refused_or_parsed(size: int, binary: bool) -> None:
    head = '{"type":"prompt","voicePrompt":"'
    text = head + "é" * ((size - len(head) - 2) // 2) + '"}'
    check(text.encode() if binary else text)


def test_the_frame_that_used_to_kill_a_call() -> None:
    raw = '{"type":"info","name":"x","value":' + "[" * 300 + "]" * 300 + "}"
    assert 600 < len(raw) < 700
    try:
        protocol.parse_inbound(raw)
    except ProtocolError as exc:
        assert "deeper than 32" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("a 300-deep frame was accepted")
