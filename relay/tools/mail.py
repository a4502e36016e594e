"""E-mailing a quote to the caller (SMTP, see :mod:`relay.services.email`)."""

from __future__ import annotations

from sqlalchemy import select

from relay.services import email as mail
from relay.storage import business as store
from relay.storage.models import Quote as QuoteRow
from relay.storage.outcomes import Email
from relay.tools.base import ToolContext, ToolResult, tool
from relay.tools.piano import MAYBE_SENT, _quote_id, _quote_text, callers_quote

#: The status of an e-mail whose server gave no answer in time: it may have been sent.
UNKNOWN = "unknown"


@tool(side_effect=True, timeout=mail.SmtpSettings.timeout + 10.0)
async def send_quote_email(
    ctx: ToolContext, quote_id: str, email: str, confirmed: bool
) -> ToolResult:
    """E-mail a quote, with its breakdown, to the caller. First read the address back to the caller letter by letter and ask them to confirm; call this with confirmed=true only after they clearly say yes.

    Args:
        quote_id: The quote id from quote_piano_move, e.g. "Q482913".
        email: The caller's e-mail address as they spelt it, written normally, e.g. "jo.smith@example.com" (not "jo dot smith at example dot com").
        confirmed: True only if the caller clearly said yes to your read-back of the address just now.
    """
    smtp = ctx.services.get("smtp")
    if not isinstance(smtp, mail.SmtpSettings):
        return ToolResult(
            "E-mail is not set up for this business, so the quote can't be e-mailed. Apologise, "
            "and offer to text it or read it again.",
            data={"error": "email not configured"},
        )
    address = email.strip().strip(".").replace(" ", "").lower()
    if not mail.ADDRESS.match(address):
        return ToolResult(
            f"{email!r} is not an e-mail address I can use. Ask the caller to spell it again.",
            data={"error": "bad address"},
        )
    async with ctx.db.session() as session:
        quote = await callers_quote(session, ctx, _quote_id(quote_id))
    if not confirmed:
        return ToolResult(
            f"Not sent yet. Read the address back to the caller, spelling it: {_spelt(address)}. "
            "Ask them to confirm, and only when they clearly say yes call send_quote_email again "
            "with confirmed=true.",
            data={"error": "not confirmed", "email": address},
        )
    subject = f"{ctx.agent.business_name} quote {quote.id}"
    earlier = await _earlier(ctx, address, subject)
    if earlier is not None:
        return earlier
    row = Email(
        agent=ctx.agent.name, call_sid=ctx.call_sid or None, kind="quote", to_address=address,
        subject=subject, status="sending", created_at=store.utc(ctx.now()),
    )  # fmt: skip
    await _save(ctx, row)  # before sending: a send cut off halfway stays on record
    try:
        await mail.send_email(smtp, to=address, subject=subject, body=_body(ctx, quote))
    except mail.EmailTimeout as exc:
        row.status, row.error = UNKNOWN, str(exc)
        await _save(ctx, row)
        return ToolResult(
            f"The e-mail {MAYBE_SENT}",
            data={"error": "send outcome unknown", "unknown": True},
        )
    except mail.EmailError as exc:
        row.status, row.error = "failed", str(exc)
        await _save(ctx, row)
        return ToolResult(
            "The e-mail could not be sent just now. Apologise, and offer to text the quote or "
            "read it again.",
            data={"error": str(exc)},
        )
    row.status = "sent"
    await _save(ctx, row)
    return ToolResult(
        f"E-mailed quote {quote.id} to {address}. Tell the caller it should arrive in a few "
        "minutes, and to check their junk folder if it doesn't.",
        data={"email": address, "quote_id": quote.id},
    )


def _spelt(address: str) -> str:
    local, _, domain = address.partition("@")
    return f"{' '.join(local)} at {domain}"


def _body(ctx: ToolContext, quote: QuoteRow) -> str:
    return (
        "Hello,\n\nThank you for calling. Here is your quote:\n\n"
        + _quote_text(ctx, quote)
        + f"\n\nKind regards,\n{ctx.agent.business_name}\n"
    )


async def _save(ctx: ToolContext, row: Email) -> None:
    async with ctx.db.session() as session, session.begin():
        merged = await session.merge(row)
        await session.flush()
        row.id = merged.id


async def _earlier(ctx: ToolContext, to: str, subject: str) -> ToolResult | None:
    """A result when this very e-mail was already sent (or may have been) on this call."""
    if not ctx.call_sid:
        return None
    async with ctx.db.session() as session:
        earlier = await session.scalar(
            select(Email)
            .where(
                Email.call_sid == ctx.call_sid,
                Email.to_address == to,
                Email.subject == subject,
                Email.status != "failed",
            )
            .limit(1)
        )
    if earlier is None:
        return None
    if earlier.status == "sent":
        return ToolResult(
            f"That quote was already e-mailed to {to} on this call; it was not sent again.",
            data={"email": to, "not_repeated": True},
        )
    return ToolResult(
        f"That e-mail was already tried on this call and {MAYBE_SENT}",
        data={"error": "send outcome unknown", "unknown": True, "not_repeated": True},
    )


TOOLS = [send_quote_email]
