"""Hypothesis strategies for inbound ConversationRelay frames, hostile ones included.

Used by the parser's property tests and by the fuzzed sessions over a real socket. Needs
``hypothesis`` (a development dependency); nothing in the service imports this module.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import strategies as st

__all__ = ["KNOWN_TYPES", "deeply_nested", "json_values", "raw_frames", "twilio_like"]

KNOWN_TYPES = ["setup", "prompt", "dtmf", "interrupt", "error", "info", "configUpdated"]
FIELDS = [
    "type", "sessionId", "callSid", "from", "to", "customParameters", "voicePrompt", "lang",
    "last", "digit", "utteranceUntilInterrupt", "durationUntilInterruptMs", "description",
    "name", "value", "ts",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), children, max_size=4
        ),
    ),
    max_leaves=30,
)
# Frames that look like Twilio's: a known type with any fields of any types.
twilio_like = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    st.sampled_from(KNOWN_TYPES),
    st.dictionaries(st.sampled_from(FIELDS[1:]), json_values, max_size=6),
)


@st.composite
def deeply_nested(draw: st.DrawFn) -> str:
    depth = draw(st.integers(min_value=1, max_value=3000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    inner = opener * depth + "1" * (opener != "[") + closer * depth
    kind = draw(st.sampled_from([*KNOWN_TYPES, "mystery"]))
    field = draw(st.sampled_from(["value", "voicePrompt", "customParameters", "raw"]))
    return f'{{"type":"{kind}","{field}":{inner}}}'


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return "null"


raw_frames = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300),
    json_values.map(_json_text),
    twilio_like.map(_json_text),
    twilio_like.map(lambda f: _json_text(f).encode()),
    deeply_nested(),
    st.binary(max_size=200).map(lambda b: b'{"type":"prompt","voicePrompt":"' + b + b'"}'),
)
