"""Mid-call configuration: the ``config`` and ``hints`` frames where they help the caller.

Only for agents with ``mid_call_config = true`` in ``[relay]`` (off by default: the frames'
field names are unconfirmed, notes 0.1). It watches the call through three hooks the session
calls (:meth:`MidCall.observe` for its events, :meth:`MidCall.outbound` for each frame it
sends, :meth:`MidCall.digits` when keypad collection starts and stops) and sends:

* **DTMF only while digits are collected**: an agent without a keypad menu and without
  ``dtmf_detection`` in its TwiML gets ``config dtmfDetection=true`` when ``collect_digits``
  starts and ``false`` when it ends;
* **a read-back that cannot be interrupted** (``readback_uninterruptible = true``): after a
  price or booking tool result, ``config interruptible=none`` before the reply that reads it
  back, and the agent's ``interruptible`` again once the caller speaks (or playback ends, with
  speaker events). Without ``mid_call_config`` the same is done with the confirmed per-token
  field instead: the read-back's ``text`` frames carry ``interruptible: false``;
* **place names as hints while an address is asked for**: when the agent's reply asks for a
  suburb, address or postcode, one ``hints`` frame with the business's place names (its
  ``places`` table) and the TwiML's own hints, once per call.

If Twilio refuses one of these frames (an ``error`` frame with 64107 naming its type), that
type is not sent again in the call.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog

from relay.agents import AgentProfile
from relay.protocol import frames as protocol

log = structlog.get_logger("relay.call.midcall")

#: Tools whose result is read back to the caller (a price, a booking).
READBACK_TOOLS = frozenset(
    {
        "quote_piano_move", "book_move", "book_appointment", "reschedule_appointment",
        "cancel_appointment", "quote_service",
    }
)  # fmt: skip
_READBACK_KEYS = frozenset({"total", "price", "quote_id", "booking_ref", "spoken_ref"})
_ASKS_ADDRESS = re.compile(r"\b(suburb|address|postcode|post code|which town)\b", re.I)
MAX_HINTS = 200
_INPUT_KINDS = ("none", "dtmf", "speech", "any")


class MidCall:
    """One call's mid-call configuration."""

    def __init__(
        self,
        agent: AgentProfile,
        send: Callable[[protocol.OutboundFrame], None],
        *,
        services: Mapping[str, Any] | None = None,
    ) -> None:
        self.agent = agent
        self._send = send
        self._services = services or {}
        self.refused: set[str] = set()
        self._dtmf_on = False
        self._armed = False  # a read-back tool answered: the next reply reads it back
        self._reading = False  # that reply is being spoken
        self._read_sent = False  # ... and all of it has been sent (last: true)
        self._locked = False  # config interruptible=none is in force
        self._hinted = False
        self._reply = ""

    @property
    def enabled(self) -> bool:
        return self.agent.mid_call_config

    def use(self, agent: AgentProfile, services: Mapping[str, Any] | None = None) -> None:
        """The agent is known (after ``setup``)."""
        self.agent = agent
        if services is not None:
            self._services = services

    # -- hooks the session calls ---------------------------------------------------------------

    def observe(self, kind: str, data: Mapping[str, Any]) -> None:
        """An event the session recorded (``tool_result``, ``frame_in`` …)."""
        if kind == "tool_result" and self.agent.readback_uninterruptible:
            result = data.get("data")
            failed = isinstance(result, Mapping) and "error" in result
            keyed = isinstance(result, Mapping) and bool(_READBACK_KEYS & set(result))
            if not failed and (data.get("name") in READBACK_TOOLS or keyed):
                self._armed = True

    def prompt(self) -> None:
        """The caller spoke (a final prompt): a read-back is over."""
        self._reading = self._armed = self._read_sent = False
        self._unlock()

    def agent_speaking(self, on: bool) -> None:
        """Speaker events: playback finished ends a read-back."""
        if not on and self._reading and self._read_sent:
            self._reading = self._read_sent = False
            self._unlock()

    def outbound(self, frame: protocol.OutboundFrame) -> protocol.OutboundFrame:
        """Each frame the session sends, before it is queued; may send a frame before it, or
        return it changed (per-token ``interruptible: false``)."""
        if isinstance(frame, protocol.Text):
            if self._armed and not frame.preemptible:  # fillers are not the read-back
                self._armed, self._reading = False, True
                self._lock()
            if self._reading and not self.enabled and frame.interruptible is None:
                frame = frame.model_copy(update={"interruptible": False})
            if frame.token:
                self._reply = (self._reply + frame.token)[-400:]
            if frame.last:
                self._read_sent = self._reading
                if self._reply and _ASKS_ADDRESS.search(self._reply):
                    self._address_hints()
                self._reply = ""
        return frame

    def digits(self, collecting: bool) -> None:
        """Keypad collection started (True) or ended (False)."""
        agent = self.agent
        if collecting:
            if agent.keypad or agent.relay.get("dtmf_detection") is True or self._dtmf_on:
                return
            self._dtmf_on = self._config(dtmf_detection=True)
        elif self._dtmf_on:
            self._dtmf_on = False
            self._config(dtmf_detection=False)

    def error(self, frame: protocol.Error) -> None:
        """Twilio's ``error`` frame: stop sending a frame type it refused."""
        kind = protocol.rejected_frame_type(frame)
        if kind in protocol.MID_CALL_TYPES or kind == "language":
            if kind not in self.refused:
                log.warning(
                    "mid_call_frame_refused", type=kind, description=frame.description[:200]
                )
            self.refused.add(kind)

    # -- what it sends -------------------------------------------------------------------------

    def _lock(self) -> None:
        if self.enabled and not self._locked:
            self._locked = self._config(interruptible="none")

    def _unlock(self) -> None:
        if self._locked:
            self._locked = False
            default = self.agent.relay.get("interruptible", "any")
            if isinstance(default, bool):  # the legacy spelling: true = any, false = none
                default = "any" if default else "none"
            self._config(interruptible=default if default in _INPUT_KINDS else "any")

    def _address_hints(self) -> None:
        if self._hinted or not self.enabled or "hints" in self.refused:
            return
        phrases = list(_place_names(self._services.get("places")))
        phrases += [h for h in str(self.agent.relay.get("hints", "")).split(",") if h.strip()]
        if not phrases:
            return
        self._hinted = True
        try:
            frame = protocol.hints_frame(phrases[:MAX_HINTS])
        except ValueError as exc:
            log.warning("hints_not_sent", error=str(exc)[:200])
            return
        self._send(frame)

    def _config(self, **settings: Any) -> bool:
        if not self.enabled or "config" in self.refused:
            return False
        self._send(protocol.config_frame(**settings))
        return True


def _place_names(places: Any) -> Iterable[str]:
    """Names from the agent's ``places`` table (a Gazetteer), without commas."""
    items = getattr(places, "places", None)
    if items is None:
        return []
    seen: dict[str, None] = {}
    for place in items:
        name = str(getattr(place, "name", "")).replace(",", " ").strip()
        if name:
            seen.setdefault(name, None)
    return list(seen)
