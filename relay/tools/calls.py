"""Call-control tools: hand the call to a person, end it, switch language, press keys."""

from __future__ import annotations

from relay.tools.base import (
    CollectDigits,
    Hangup,
    SendDigits,
    SwitchLanguage,
    ToolContext,
    ToolResult,
    Transfer,
    tool,
)


# Not a ledger side effect: a session sends ``end`` at most once, which is what makes a
# repeated transfer harmless.
@tool()
async def transfer_to_person(ctx: ToolContext, reason: str, summary: str) -> ToolResult:
    """Hand the call to a person at the business. Use it when the caller asks for a person, is upset, or needs something you cannot do.

    Args:
        reason: Why the call is being handed over, in a few words (e.g. "caller asked for a person").
        summary: One or two sentences for the person taking the call: who is calling and what they need so far.
    """
    if not ctx.agent.person_number:
        return ToolResult(
            "Nobody can take calls right now. Apologise, and offer to take a message with take_message."
        )
    return ToolResult(
        "Transferring the call now.",
        action=Transfer(reason=reason, summary=summary, line=ctx.agent.transfer_line),
    )


@tool()
async def end_call(ctx: ToolContext, reason: str) -> ToolResult:
    """End the call after the caller has said goodbye or has nothing else. The goodbye line is spoken for you.

    Args:
        reason: Why the call is ending, in a few words (e.g. "caller said goodbye").
    """
    return ToolResult("Ending the call.", action=Hangup(reason=reason, line=ctx.agent.goodbye_line))


@tool()
async def switch_language(ctx: ToolContext, language: str) -> ToolResult:
    """Switch the call to another language the business speaks, then carry on in that language.

    Args:
        language: The language code or name, for example "es-ES" or "Spanish".
    """
    option = ctx.agent.speaks(language)
    if option is None:
        for candidate in ctx.agent.languages:
            if candidate.name and candidate.name.lower() == language.strip().lower():
                option = candidate
                break
    if option is None:
        spoken = ", ".join(o.name or o.code for o in ctx.agent.languages) or "English"
        return ToolResult(f"Error: we do not offer {language}. Languages available: {spoken}.")
    return ToolResult(
        f"Switched to {option.name or option.code} ({option.code}). Reply in that language from now on.",
        action=SwitchLanguage(option.code),
    )


@tool(side_effect=True)
async def send_digits(ctx: ToolContext, digits: str) -> ToolResult:
    """Press keys on the call, for example to reach an extension. Use w for a half-second pause.

    Args:
        digits: The keys to press: 0-9, *, # and w (pause), for example "ww123#".
    """
    if not digits or any(c not in "0123456789*#w" for c in digits) or len(digits) > 32:
        return ToolResult("Error: digits may only contain 0-9, *, # and w, at most 32 of them.")
    return ToolResult(f"Pressed {digits}.", action=SendDigits(digits))


@tool()
async def collect_digits(ctx: ToolContext, purpose: str, max_digits: int = 12) -> ToolResult:
    """Ask the caller to type a number on their keypad (ended by # or a short pause), for example a booking reference. Tell the caller what to type before calling this.

    Args:
        purpose: What the digits are, for example "booking reference".
        max_digits: The most digits to accept.
    """
    if not 1 <= max_digits <= 32:
        return ToolResult("Error: max_digits must be between 1 and 32.")
    return ToolResult(
        "Waiting for the caller to type the digits; they will arrive as the caller's next message.",
        action=CollectDigits(purpose=purpose, max_digits=max_digits),
    )


TOOLS = [transfer_to_person, end_call, switch_language, send_digits, collect_digits]
