"""Taking a message for a person at the business to call back."""

from __future__ import annotations

from relay.services.customers import normalise_phone
from relay.storage import business as store
from relay.storage.models import Ticket
from relay.tools.base import ToolContext, ToolResult, tool

# What a caller says when the call-back number is the one they are calling from.
_THIS_NUMBER = frozenset(
    {
        "",
        "this number",
        "this one",
        "same",
        "same number",
        "caller id",
        "caller",
        "the number i'm calling from",
    }
)


@tool(side_effect=True)
async def take_message(ctx: ToolContext, name: str, phone: str, reason: str) -> ToolResult:
    """Take a message so someone from the business calls the caller back. Use it when nobody can take the call, or the caller would rather be called back. Read the number back before calling this.

    Args:
        name: The caller's name.
        phone: The number to call back on, as the caller gave it (e.g. "0412 345 678"), or "this number" for the number they are calling from.
        reason: What the call is about, in a sentence or two, with the details the team will need.
    """
    said = phone.strip()
    number = normalise_phone(ctx.caller) if said.lower() in _THIS_NUMBER else normalise_phone(said)
    if number is None:
        return ToolResult(
            f"{phone!r} isn't a phone number I can use. Ask the caller for the best number to "
            "call back on, digit by digit.",
            data={"error": "bad phone"},
        )
    if not name.strip() or not reason.strip():
        return ToolResult(
            "Ask for the caller's name and what the call is about first.",
            data={"error": "incomplete"},
        )
    async with ctx.db.session() as session, session.begin():
        ticket = Ticket(
            agent=ctx.agent.name,
            call_sid=ctx.call_sid or None,
            name=name.strip(),
            phone=number,
            reason=reason.strip(),
            status="open",
            created_at=store.utc(ctx.now()),
        )
        session.add(ticket)
        await session.flush()
        ticket_id = ticket.id
    return ToolResult(
        f"Message taken (number {ticket_id}). Tell the caller someone from {ctx.agent.business_name} "
        "will call them back, and ask if there's anything else.",
        data={"ticket_id": ticket_id},
    )


TOOLS = [take_message]
