"""E-mail: the quote to the caller (read back and confirmed first) and the owner's notification,
each at most once, through a real SMTP server (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

import email
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from relay.agents import AgentRegistry
from relay.errors import ConfigError
from relay.services import costs
from relay.services.email import SmtpSettings, smtp_settings
from relay.services.postcall import PostCall
from relay.storage.models import Call, Event
from relay.storage.outcomes import Email

TUESDAY = "2026-11-24"
SENDER = "office@keystone.example"


class Inbox:
    """aiosmtpd handler: keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        self.messages.append(
            (envelope.mail_from, list(envelope.rcpt_tos), email.message_from_bytes(content))
        )
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, SmtpSettings]]:
    handler = Inbox()
    port = _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        smtp = smtp_settings(f"smtp://127.0.0.1:{port}", SENDER)
        assert smtp is not None
        yield handler, smtp
    finally:
        controller.stop()


def test_smtp_settings_from_the_url() -> None:
    assert smtp_settings(None, SENDER) is None
    smtp = smtp_settings("smtps://user%40x:p%3Ass@mail.example:2465", SENDER)
    assert smtp is not None
    assert (smtp.host, smtp.port, smtp.tls, smtp.username, smtp.password) == (
        "mail.example", 2465, True, "user@x", "p:ss",
    )  # fmt: skip
    assert "p:ss" not in repr(smtp)
    with pytest.raises(ConfigError, match="RELAY_EMAIL_FROM"):
        smtp_settings("smtp://mail.example:25", None)
    with pytest.raises(ConfigError, match="RELAY_SMTP_URL"):
        smtp_settings("http://mail.example", SENDER)


async def _quote(call: Any) -> str:
    result = await call(
        "quote_piano_move", piano_type="upright", pickup="Brunswick", dropoff="Coburg",
        move_date=TUESDAY,
    )  # fmt: skip
    assert result.data is not None
    return str(result.data["quote_id"])


async def test_the_quote_is_e_mailed_once_after_the_address_is_confirmed(
    phone: Callable[..., Any], inbox: tuple[Inbox, SmtpSettings]
) -> None:
    handler, smtp = inbox
    call = phone()
    call.services = {**call.services, "smtp": smtp}
    quote_id = await _quote(call)

    unconfirmed = await call(
        "send_quote_email", quote_id=quote_id, email="jo.smith@example.com", confirmed=False
    )
    assert unconfirmed.content.startswith("Not sent yet.")
    assert "j o . s m i t h at example.com" in unconfirmed.content
    assert handler.messages == []

    arguments = {"quote_id": quote_id, "email": "jo.smith@example.com", "confirmed": True}
    sent = await call("send_quote_email", **arguments)
    again = await call("send_quote_email", **arguments)  # the same request: the ledger
    reworded = await call("send_quote_email", **{**arguments, "email": "Jo.Smith@example.com "})

    assert sent.content.startswith(f"E-mailed quote {quote_id} to jo.smith@example.com")
    assert "not repeated" in again.content
    assert reworded.content.startswith("That quote was already e-mailed to jo.smith@example.com")
    assert len(handler.messages) == 1
    mail_from, rcpt, message = handler.messages[0]
    assert (mail_from, rcpt) == (SENDER, ["jo.smith@example.com"])
    assert message["Subject"] == f"Keystone Piano Movers quote {quote_id}"
    body = message.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert f"Keystone Piano Movers quote {quote_id}" in body
    assert "Base price for an upright piano: $350" in body
    assert "Total: $350 incl. GST" in body
    async with call.db.session() as session:
        rows = (await session.scalars(select(Email).order_by(Email.id))).all()
    assert [(r.kind, r.to_address, r.status) for r in rows] == [
        ("quote", "jo.smith@example.com", "sent"),
    ]


async def test_a_bad_address_and_a_missing_server(
    phone: Callable[..., Any], inbox: tuple[Inbox, SmtpSettings]
) -> None:
    handler, smtp = inbox
    call = phone()
    quote_id = await _quote(call)
    unset = await call("send_quote_email", quote_id=quote_id, email="a@b.co", confirmed=True)
    assert unset.content.startswith("E-mail is not set up")

    call.services = {**call.services, "smtp": smtp}
    bad = await call("send_quote_email", quote_id=quote_id, email="jo at example", confirmed=True)
    assert bad.data is not None and bad.data["error"] == "bad address"

    down = SmtpSettings(host="127.0.0.1", port=_free_port(), sender=SENDER)
    call.services = {**call.services, "smtp": down}
    failed = await call("send_quote_email", quote_id=quote_id, email="a@b.co", confirmed=True)
    assert failed.content.startswith("The e-mail could not be sent")
    call.services = {**call.services, "smtp": smtp}
    retried = await call("send_quote_email", quote_id=quote_id, email="a@b.co", confirmed=True)
    assert retried.content.startswith("E-mailed quote")
    assert len(handler.messages) == 1


async def test_the_owner_is_e_mailed_once_per_call(
    phone: Callable[..., Any], agents: AgentRegistry, inbox: tuple[Inbox, SmtpSettings]
) -> None:
    handler, smtp = inbox
    call = phone()
    await call(
        "take_message", name="Bo Chen", phone="this number", reason="Wants a crane quote in Kew"
    )
    now = datetime(2026, 11, 19, tzinfo=UTC)
    async with call.db.session() as session, session.begin():
        session.add(
            Call(call_sid=call.call_sid, agent="piano-removals", from_number=call.caller,
                 to_number="+61390001234", direction="inbound", caller_name="", status="completed",
                 outcome="hung-up", started_at=now, ended_at=now, sessions=1, turns=2)
        )  # fmt: skip
        session.add(
            Event(call_sid=call.call_sid, session_id="s", seq=1, t=0.0, at=now, kind="tool_result",
                  data={"name": "take_message", "data": {"ticket_id": 1}})
        )  # fmt: skip
    profile = agents.get("piano-removals").model_copy(update={"owner_email": "owner@example.com"})
    registry = AgentRegistry.from_profiles([profile])
    postcall = PostCall(call.db, registry, costs.PriceTable(), smtp=smtp)

    first = await postcall.process(call.call_sid)
    await postcall.process(call.call_sid)  # processed again (a second session, a re-run)

    assert first is not None and first["outcomes"] == ["message-taken"]
    [(_sender, rcpt, message)] = handler.messages
    assert rcpt == ["owner@example.com"]
    assert message["Subject"] == "Keystone Piano Movers: call message-taken"
    body = message.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert f"Call {call.call_sid} to piano-removals" in body and "message-taken" in body
