"""Piano-removal tools: quote a move, find free crew windows, book a move, text a quote.

Prices come only from the business's price list (``pricing.toml`` through
:mod:`relay.domain.pricing`), distances from its place table, days and crew capacity from its
calendar. Every quote is saved, so a booking or a text refers to exactly the price the caller
heard.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import select

from relay.domain import pricing
from relay.domain.places import Gazetteer, PlaceError, distance_km
from relay.domain.scheduling import (
    BusinessCalendar,
    Reason,
    SchedulingError,
    SlotUnavailable,
    available_windows,
    check_window,
    explain_day,
    spoken_choices,
    spoken_date,
)
from relay.errors import ToolError
from relay.services import messaging
from relay.storage import business as store
from relay.storage.models import Booking, Message
from relay.storage.models import Quote as QuoteRow
from relay.tools.base import ToolContext, ToolResult, tool
from relay.tools.common import (
    blank_name,
    bookings_busy,
    caller_phone,
    locked,
    need,
    no_name,
    owner,
    read_day,
    refusal,
    spoken_ref,
)


@tool(timeout=10.0)
async def quote_piano_move(
    ctx: ToolContext,
    piano_type: str,
    pickup: str,
    dropoff: str,
    move_date: str,
    pickup_steps: int = 0,
    pickup_floors: int = 0,
    pickup_has_lift: bool = False,
    dropoff_steps: int = 0,
    dropoff_floors: int = 0,
    dropoff_has_lift: bool = False,
    storage_weeks: int = 0,
    needs_crane: bool = False,
) -> ToolResult:
    """Work out the price of a piano move from our price list and save it as a quote. Every price you say must come from this tool. Returns the total, the breakdown to read out, and the quote id.

    Args:
        piano_type: The piano as the caller describes it: digital, upright, large upright or player piano (pianola), baby grand (under 170 cm long), grand (170 to 210 cm) or concert grand (over 210 cm).
        pickup: Pick-up suburb or town, with the postcode if the caller gave one, e.g. "Brunswick" or "Richmond 3121".
        dropoff: Drop-off suburb or town, as for pickup.
        move_date: The moving day as YYYY-MM-DD ("tomorrow" or a weekday name also work).
        pickup_steps: Stair steps the piano is carried on by hand at pick-up, not counting whole floors. 0 if none.
        pickup_floors: Floors climbed by stairs at pick-up (2 for a second-floor flat without a lift). 0 at ground level.
        pickup_has_lift: True if a lift big enough for the piano serves the pick-up address.
        dropoff_steps: Stair steps carried by hand at drop-off, not counting whole floors. 0 if none.
        dropoff_floors: Floors climbed by stairs at drop-off. 0 at ground level.
        dropoff_has_lift: True if a lift big enough for the piano serves the drop-off address.
        storage_weeks: Weeks of storage in our warehouse between pick-up and drop-off. 0 if none.
        needs_crane: True if the caller says a crane or hoist will be needed.
    """
    rules = need(ctx, "pricing", pricing.PricingRules)
    places = need(ctx, "places", Gazetteer)
    calendar = ctx.services.get("calendar")
    now = ctx.now()
    today = now.astimezone(rules.tz).date()
    note = ""
    if isinstance(calendar, BusinessCalendar):
        day = read_day(move_date, calendar=calendar, now=now)
        # The calendar knows what the price list does not: public holidays, how far ahead we
        # book, and whether the crews are already taken that day.
        async with ctx.db.session() as session:
            busy = await bookings_busy(session, ctx, calendar, now)
        problem = explain_day(calendar, day=day, busy=busy, now=now)
        if problem is not None and problem.reason is not Reason.FULL:
            return ToolResult(
                f"No quote yet. {problem} Ask the caller which day suits, then quote for that day.",
                data=problem.to_dict(),
            )
        if problem is not None:
            note = (
                f" Note: {problem} Tell the caller before anything else; if they want another "
                "day, quote again for it, as the price can change with the day."
            )
    else:
        day = _iso_day(move_date)

    start = _place(places, pickup, "pick-up")
    end = _place(places, dropoff, "drop-off")
    road_km = distance_km(start, end, rules.distance.road_factor)
    request = pricing.QuoteRequest(
        piano_type=piano_type,
        pickup=start.label,
        dropoff=end.label,
        move_date=day,
        pickup_steps=pickup_steps,
        pickup_floors=pickup_floors,
        pickup_has_lift=pickup_has_lift,
        dropoff_steps=dropoff_steps,
        dropoff_floors=dropoff_floors,
        dropoff_has_lift=dropoff_has_lift,
        storage_weeks=storage_weeks,
        needs_crane=needs_crane,
    )
    priced = pricing.quote(rules, request, today=today, distance_km=road_km)

    inputs: dict[str, Any] = {
        "piano_type": piano_type,
        "pickup": pickup,
        "dropoff": dropoff,
        "move_date": move_date,
        "pickup_steps": pickup_steps,
        "pickup_floors": pickup_floors,
        "pickup_has_lift": pickup_has_lift,
        "dropoff_steps": dropoff_steps,
        "dropoff_floors": dropoff_floors,
        "dropoff_has_lift": dropoff_has_lift,
        "storage_weeks": storage_weeks,
        "needs_crane": needs_crane,
        "piano": priced.piano_type.value,
        "pickup_place": start.label,
        "dropoff_place": end.label,
        "road_km": road_km,
        "gst_included": priced.gst_included,
    }
    breakdown = [
        {
            "kind": line.kind.value,
            "label": line.label,
            "amount_cents": line.amount_cents,
            "phrase": line.phrase,
        }
        for line in priced.lines
    ]
    async with ctx.db.session() as session, session.begin():
        quote_id = await store.new_quote_id(session)
        session.add(
            QuoteRow(
                id=quote_id,
                agent=owner(ctx),
                call_sid=ctx.call_sid or None,
                caller=caller_phone(ctx),
                inputs=inputs,
                breakdown=breakdown,
                total_cents=priced.total_cents,
                currency=priced.currency,
                move_date=day,
                valid_until=priced.valid_until,
                status=INSPECTION if priced.needs_inspection else "quoted",
                created_at=store.utc(now),
            )
        )

    if priced.needs_inspection:
        return _inspection_needed(ctx, quote_id, priced)
    nexts = []
    if "find_move_dates" in ctx.agent.tools and "book_move" in ctx.agent.tools:
        nexts.append(f"offer to book it (find_move_dates, then book_move with quote_id {quote_id})")
    if "send_quote_sms" in ctx.agent.tools:
        nexts.append("offer to text it (send_quote_sms)")
    if "send_quote_email" in ctx.agent.tools:
        nexts.append("offer to e-mail it (send_quote_email, after reading the address back)")
    then = f" Then {' or '.join(nexts)}." if nexts else ""
    content = (
        f"Quote {quote_id}: moving {_article(priced.piano_type.spoken_name)} from {start.label} "
        f"to {end.label} on {spoken_date(day)}, about {road_km:g} km by road. {priced.spoken()} "
        f"The quote is valid until {spoken_date(priced.valid_until)}.{note} Read the total and "
        f"the breakdown to the caller plainly.{then}"
    )
    return ToolResult(content, data={**priced.as_dict(), "quote_id": quote_id})


@tool()
async def find_move_dates(ctx: ToolContext, date: str | None = None) -> ToolResult:
    """Find moving windows with a free crew: a morning (8 am to midday) or an afternoon (12:30 to 4:30 pm). The crew arrives during the window. Without a date you get the next free days.

    Args:
        date: The day the caller would like, as YYYY-MM-DD ("tomorrow" or a weekday name also work). Leave it out to get the next free days.
    """
    calendar = need(ctx, "calendar", BusinessCalendar)
    now = ctx.now()
    day = read_day(date, calendar=calendar, now=now) if date else None
    async with ctx.db.session() as session:
        busy = await bookings_busy(session, ctx, calendar, now)
    try:
        slots = available_windows(calendar, day=day, busy=busy, now=now, limit=4)
    except SchedulingError as exc:
        return refusal(exc)
    if not slots:
        problem = explain_day(calendar, day=day, busy=busy, now=now) if day else None
        if problem is not None:
            return refusal(problem)
        return ToolResult(
            f"There are no free windows in the next {calendar.horizon_days} days. Offer to take "
            "a message so the office can call back.",
            data={"error": "none free"},
        )
    choices = "; ".join(f"{s.start.date().isoformat()} {s.window}" for s in slots)
    return ToolResult(
        f"Free windows: {spoken_choices(slots)}. (For book_move: {choices}.) A quote is for one "
        "day: if the caller picks a different day from their quote, quote again for that day.",
        data={"windows": [s.to_dict() for s in slots]},
    )


@tool(side_effect=True)
async def book_move(
    ctx: ToolContext,
    quote_id: str,
    date: str,
    window: str,
    confirmed: bool,
    name: str,
    pickup_address: str | None = None,
    dropoff_address: str | None = None,
    notes: str | None = None,
) -> ToolResult:
    """Book a quoted piano move into a morning or afternoon window. First read back the day, the window, the pick-up and drop-off and the total price, and ask the caller to confirm; call this with confirmed=true only after they clearly say yes.

    Args:
        quote_id: The quote id from quote_piano_move, e.g. "Q482913".
        date: The moving day as YYYY-MM-DD. It must be the day the quote was for.
        window: "morning" or "afternoon" (Saturdays have mornings only).
        confirmed: True only if the caller clearly said yes to your read-back just now. An interrupted read-back is not a yes.
        name: The name the booking is under.
        pickup_address: The street address at pick-up, if the caller gave it.
        dropoff_address: The street address at drop-off, if the caller gave it.
        notes: Anything the crew should know, such as parking, tight corners or a narrow gate.
    """
    calendar = need(ctx, "calendar", BusinessCalendar)
    rules = need(ctx, "pricing", pricing.PricingRules)
    if blank_name(name):
        return no_name()
    now = ctx.now()
    qid = _quote_id(quote_id)
    day = read_day(date, calendar=calendar, now=now)
    scope = owner(ctx)
    if not confirmed:
        async with ctx.db.session() as session:
            quote = await _valid_quote(session, ctx, qid, day, rules)
            busy = await bookings_busy(session, ctx, calendar, now)
        try:
            slot = check_window(calendar, day=day, window=window, busy=busy, now=now)
        except SchedulingError as exc:
            return _window_refusal(exc)
        return ToolResult(
            "Not booked yet; the window is free. Read back to the caller: moving the "
            f"{_piano(quote)} from {quote.inputs.get('pickup_place')} to "
            f"{quote.inputs.get('dropoff_place')}, {slot.spoken()}, for "
            f"{pricing.format_money(quote.total_cents)}, under the name {name}. Ask them to "
            "confirm, and only when they clearly say yes call book_move again with "
            "confirmed=true.",
            data={"error": "not confirmed", "slot": slot.to_dict()},
        )

    phone = caller_phone(ctx)
    async with locked(ctx) as session:
        quote = await _valid_quote(session, ctx, qid, day, rules)
        existing = await session.scalar(select(Booking).where(Booking.quote_id == qid))
        if existing is not None:
            if existing.status == "booked":
                return ToolResult(
                    f"That quote is already booked: reference {existing.id} "
                    f"({spoken_ref(existing.id)}). Nothing new was booked.",
                    data={"booking_ref": existing.id, "already_booked": True},
                )
            raise ToolError(
                f"The booking for quote {qid} was cancelled. Make a new quote to book again."
            )
        busy = await bookings_busy(session, ctx, calendar, now)
        try:
            slot = check_window(calendar, day=day, window=window, busy=busy, now=now)
        except SchedulingError as exc:
            return _window_refusal(exc)
        customer = (
            await store.ensure_customer(session, phone=phone, name=name, now=now) if phone else None
        )
        ref = await store.new_booking_id(session)
        stamp = store.utc(now)
        session.add(
            Booking(
                id=ref,
                agent=scope,
                kind="move",
                quote_id=qid,
                service=quote.inputs.get("piano"),
                customer_id=customer.id if customer else None,
                phone=phone,
                name=name.strip(),
                starts_at=store.utc(slot.start),
                ends_at=store.utc(slot.end),
                status="booked",
                call_sid=ctx.call_sid or None,
                notes=_move_notes(quote, pickup_address, dropoff_address, notes),
                created_at=stamp,
                updated_at=stamp,
            )
        )
        quote.status = "booked"

    sms = (
        " Offer to text the quote if you haven't (send_quote_sms)."
        if "send_quote_sms" in ctx.agent.tools
        else ""
    )
    return ToolResult(
        f"Booked. Reference {ref} ({spoken_ref(ref)}): the {_piano(quote)} from "
        f"{quote.inputs.get('pickup_place')} to {quote.inputs.get('dropoff_place')}, "
        f"{slot.spoken()}, {pricing.format_money(quote.total_cents)}. Tell the caller the "
        f"reference slowly, and that the crew arrives during the window.{sms}",
        data={"booking_ref": ref, "slot": slot.to_dict(), "quote_id": qid},
    )


@tool(side_effect=True, timeout=messaging.HTTP_TIMEOUT + 10.0)
async def send_quote_sms(ctx: ToolContext, quote_id: str) -> ToolResult:
    """Text a quote to the mobile the caller is calling from. Offer it after giving a quote, and send it only if the caller wants it.

    Args:
        quote_id: The quote id from quote_piano_move, e.g. "Q482913".
    """
    creds = ctx.services.get("twilio")
    if not isinstance(creds, messaging.TwilioCredentials):
        return ToolResult(
            "SMS is not set up for this business, so the quote can't be texted. Apologise, and "
            "offer to read the quote again so the caller can write it down.",
            data={"error": "sms not configured"},
        )
    to = caller_phone(ctx)
    if to is None:
        return ToolResult(
            "The caller's number is withheld, so there is no mobile to text. Offer to read the "
            "quote again instead.",
            data={"error": "no caller number"},
        )
    if to.startswith("+61") and not to.startswith("+614"):
        return ToolResult(
            "The caller is on a landline, which can't receive texts. Offer to read the quote "
            "again instead.",
            data={"error": "landline"},
        )
    sender = creds.from_number or (ctx.agent.numbers[0] if ctx.agent.numbers else None)
    if sender is None:
        return ToolResult(
            "SMS is not set up for this business (no number to send from). Offer to read the "
            "quote again instead.",
            data={"error": "no sender number"},
        )
    async with ctx.db.session() as session:
        quote = await callers_quote(session, ctx, _quote_id(quote_id))
    body = _quote_text(ctx, quote)
    earlier = await _earlier_text(ctx, to, body)
    if earlier is not None:
        return earlier
    row = Message(
        agent=ctx.agent.name,
        call_sid=ctx.call_sid or None,
        to_number=to,
        from_number=sender,
        body=body,
        created_at=store.utc(ctx.now()),
        status="sending",
    )
    # Stored before the request: a send that times out or is cut off stays on record, so it
    # is never repeated blindly.
    await _save(ctx, row)
    try:
        sent = await messaging.send_sms(creds, ctx.http, to=to, from_=sender, body=body)
    except messaging.TwilioTimeout as exc:
        row.status, row.error = UNKNOWN, str(exc)
        await _save(ctx, row)
        return ToolResult(
            f"The text {MAYBE_SENT}",
            data={"error": "send outcome unknown", "unknown": True},
        )
    except messaging.TwilioError as exc:
        row.status, row.error = "failed", str(exc)
        await _save(ctx, row)
        return ToolResult(
            "The text could not be sent just now. Apologise, and offer to read the quote again.",
            data={"error": str(exc)},
        )
    row.status, row.twilio_sid = sent.status, sent.sid
    await _save(ctx, row)
    return ToolResult(
        f"Texted quote {quote.id} to the caller's mobile. Tell them it should arrive in a moment.",
        data={"message_sid": sent.sid, "status": sent.status},
    )


# -- helpers ---------------------------------------------------------------------------------

#: The status of a saved quote for a crane or hoist job: no phone price, never booked as is.
INSPECTION = "inspection"


def _inspection_needed(ctx: ToolContext, quote_id: str, priced: pricing.Quote) -> ToolResult:
    """A crane or hoist job: no price, no booking; offer an inspection or a message."""
    offer = (
        "Offer to arrange an inspection: take a message (take_message) with their name, number, "
        "the piano, both addresses and the stairs, so the office calls back to book it."
        if "take_message" in ctx.agent.tools
        else "Offer to have the office call back to arrange an inspection."
    )
    return ToolResult(
        f"No price over the phone for this move. {priced.spoken()} Do not give any price or "
        f"estimate, and do not book it. {offer}",
        data={**priced.as_dict(), "quote_id": quote_id, "no_phone_price": True},
    )


def _refuse_inspection_quote(quote: QuoteRow) -> None:
    if quote.status == INSPECTION:
        raise ToolError(
            f"Quote {quote.id} is a crane or hoist job: it has no phone price and can't be "
            "booked or sent until it has been inspected. Offer an inspection or take a message."
        )


def _place(places: Gazetteer, text: str, end: str) -> Any:
    try:
        return places.lookup(text)
    except PlaceError as exc:
        raise ToolError(f"The {end} place: {exc}") from exc


def _window_refusal(exc: SchedulingError) -> ToolResult:
    result = refusal(exc, lead="Not booked.")
    if isinstance(exc, SlotUnavailable) and exc.alternatives:
        return ToolResult(
            result.content + " Offer those; if the caller picks another day, quote again for it "
            "first, as the price can change with the day.",
            data=result.data,
        )
    return result


def _iso_day(text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError as exc:
        raise ToolError(f"{text!r} is not a date. Give the moving day as YYYY-MM-DD.") from exc


def _quote_id(text: str) -> str:
    cleaned = "".join(c for c in text if c.isalnum()).upper()
    return f"Q{cleaned}" if cleaned.isdigit() else cleaned


def _article(phrase: str) -> str:
    return f"an {phrase}" if phrase[:1] in "aeiou" else f"a {phrase}"


def _piano(quote: QuoteRow) -> str:
    try:
        return pricing.PianoType(str(quote.inputs.get("piano"))).spoken_name
    except ValueError:
        return "piano"


async def callers_quote(session: Any, ctx: ToolContext, qid: str) -> QuoteRow:
    """The quote ``qid`` if it is this caller's: made on this call, or from the number this call
    comes from (a withheld number: this call only). Quote ids are short, so anyone else's is
    refused as if it did not exist, with what to do instead. A crane job is refused too."""
    quote: QuoteRow | None = await session.get(QuoteRow, qid)
    if quote is None or quote.agent != owner(ctx) or not _is_callers(ctx, quote):
        raise ToolError(
            f"There is no quote {qid} for this caller. Quote again with quote_piano_move, and "
            "use the new quote id."
        )
    _refuse_inspection_quote(quote)
    return quote


def _is_callers(ctx: ToolContext, quote: QuoteRow) -> bool:
    if ctx.call_sid and quote.call_sid == ctx.call_sid:
        return True
    caller = caller_phone(ctx)
    return caller is not None and quote.caller == caller


async def _valid_quote(
    session: Any, ctx: ToolContext, qid: str, day: date, rules: pricing.PricingRules
) -> QuoteRow:
    quote = await callers_quote(session, ctx, qid)
    today = ctx.now().astimezone(rules.tz).date()
    if quote.valid_until is not None and quote.valid_until < today:
        raise ToolError(
            f"Quote {qid} expired on {spoken_date(quote.valid_until)}. Make a new quote."
        )
    if quote.move_date is not None and quote.move_date != day:
        raise ToolError(
            f"Quote {qid} is for {spoken_date(quote.move_date)}, not {spoken_date(day)}, and the "
            "price depends on the day. Quote again for the new day, then book with that quote."
        )
    if quote.move_date is not None:
        _check_day_price(rules, quote, quote.move_date, today)
    return quote


#: The lines of a quote that depend on the day it was given as well as the move's day.
_DAY_KINDS = frozenset({pricing.LineKind.NEXT_DAY.value, pricing.LineKind.WEEKEND.value})


def _check_day_price(
    rules: pricing.PricingRules, quote: QuoteRow, move_date: date, today: date
) -> None:
    """Refuse a quote whose day surcharges no longer hold: quoted at 11:59 pm for the day after
    tomorrow, it became a next-day move at midnight. Priced again as of ``today`` from what it
    was for; the quote's price otherwise holds until it expires, even if the price list changed.
    A date that can no longer be done at all is refused by the price list's own rules."""
    inputs = quote.inputs
    request = pricing.QuoteRequest(
        piano_type=str(inputs.get("piano")),
        pickup=str(inputs.get("pickup_place")),
        dropoff=str(inputs.get("dropoff_place")),
        move_date=move_date,
        pickup_steps=int(inputs.get("pickup_steps", 0)),
        pickup_floors=int(inputs.get("pickup_floors", 0)),
        pickup_has_lift=bool(inputs.get("pickup_has_lift", False)),
        dropoff_steps=int(inputs.get("dropoff_steps", 0)),
        dropoff_floors=int(inputs.get("dropoff_floors", 0)),
        dropoff_has_lift=bool(inputs.get("dropoff_has_lift", False)),
        storage_weeks=int(inputs.get("storage_weeks", 0)),
        needs_crane=bool(inputs.get("needs_crane", False)),
    )
    road_km = inputs.get("road_km")
    priced = pricing.quote(
        rules, request, today=today, distance_km=None if road_km is None else float(road_km)
    )
    then = {str(item["kind"]) for item in quote.breakdown} & _DAY_KINDS
    kinds = {line.kind.value for line in priced.lines} & _DAY_KINDS
    if kinds == then:
        return
    why = (
        "the move is now the next day"
        if pricing.LineKind.NEXT_DAY.value in kinds - then
        else "the price for that day has changed"
    )
    raise ToolError(
        f"Not booked. Quote {quote.id} was {pricing.format_money(quote.total_cents)}, but {why}. "
        f"{priced.spoken()} Tell the caller the new total; if they want it, quote again with "
        "quote_piano_move and book with the new quote id."
    )


def _move_notes(quote: QuoteRow, pickup: str | None, dropoff: str | None, notes: str | None) -> str:
    parts = [
        f"Pick-up: {', '.join(p for p in (pickup, quote.inputs.get('pickup_place')) if p)}",
        f"Drop-off: {', '.join(p for p in (dropoff, quote.inputs.get('dropoff_place')) if p)}",
        f"Quote {quote.id}: {pricing.format_money(quote.total_cents)}",
    ]
    if notes:
        parts.append(f"Notes: {notes.strip()}")
    return "\n".join(parts)


def _quote_text(ctx: ToolContext, quote: QuoteRow) -> str:
    moving = f"{quote.move_date:%a %-d %b %Y}" if quote.move_date else "date to be confirmed"
    lines = [
        f"{ctx.agent.business_name} quote {quote.id}",
        f"{_piano(quote).capitalize()}, {quote.inputs.get('pickup_place')} to "
        f"{quote.inputs.get('dropoff_place')}, {moving}.",
    ]
    lines += [
        f"{item['label']}: {pricing.format_money(int(item['amount_cents']))}"
        for item in quote.breakdown
    ]
    gst = "incl." if quote.inputs.get("gst_included", True) else "plus"
    lines.append(f"Total: {pricing.format_money(quote.total_cents)} {gst} GST")
    closing = f"Valid until {quote.valid_until:%-d %b %Y}." if quote.valid_until else ""
    if ctx.agent.numbers:
        closing += f" To book, call {ctx.agent.numbers[0]}."
    lines.append(closing.strip())
    return "\n".join(line for line in lines if line)


async def _save(ctx: ToolContext, row: Message) -> None:
    """Insert ``row``, or update it when it was saved before (its id is set)."""
    async with ctx.db.session() as session, session.begin():
        merged = await session.merge(row)
        await session.flush()
        row.id = merged.id


#: The status of a text whose request got no answer in time: it may have been sent.
UNKNOWN = "unknown"

#: What the model is told of a text (or an e-mail) whose request got no answer in time: it may
#: have gone or not, as the ledger says of any side effect in that state
#: (:data:`relay.tools.ledger.MAYBE_DONE`), never that it will arrive.
MAYBE_SENT = (
    "may or may not have gone through (no answer came in time), so it was not sent again. Tell "
    "the caller so, and offer to read the quote so they can write it down."
)


async def _earlier_text(ctx: ToolContext, to: str, body: str) -> ToolResult | None:
    """A result when this very text was already sent (or may have been) on this call."""
    if not ctx.call_sid:
        return None
    async with ctx.db.session() as session:
        earlier = await session.scalar(
            select(Message)
            .where(
                Message.call_sid == ctx.call_sid,
                Message.to_number == to,
                Message.body == body,
                Message.status != "failed",
            )
            .limit(1)
        )
    if earlier is None:
        return None
    if earlier.status in (UNKNOWN, "sending"):
        return ToolResult(
            f"That text was already tried on this call and {MAYBE_SENT}",
            data={"error": "send outcome unknown", "unknown": True, "not_repeated": True},
        )
    return ToolResult(
        "That text was already sent on this call; it was not sent again.",
        data={"message_sid": earlier.twilio_sid, "status": earlier.status, "not_repeated": True},
    )


TOOLS = [quote_piano_move, find_move_dates, book_move, send_quote_sms]
