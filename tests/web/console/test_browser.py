"""The console in a real browser: Debian's Chromium driven by Playwright, against a real relay
(uvicorn, the scripted model, simulated Twilio calls over a real WebSocket).

Needs ``apt-get install -y chromium`` (Playwright's own browser download cannot run here);
skipped when no Chromium binary exists. Screenshots go to a temporary folder, or to the folder
``RELAY_SCREENSHOTS`` names: ``RELAY_SCREENSHOTS=docs/console`` refreshes the README's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio

from relay.storage.models import Booking, Ticket
from relay.testing import ScriptedLLM, Text, ToolCall, ToolCalls
from tests.conftest import REPO, SHIPPED_PROMPTS
from tests.web.console.conftest import ADMIN_TOKEN

CHROMIUM = os.environ.get("RELAY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(
    os.environ.get("RELAY_SCREENSHOTS") or Path(tempfile.gettempdir()) / "relay-console-shots"
)
SHOTS.mkdir(parents=True, exist_ok=True)
#: The longest the browser waits for something to appear (a limit, not an expectation).
SECOND = 1000

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="no chromium binary (apt-get install chromium)"
    ),
]

INSURANCE = b"""# Insurance

Every move is insured for up to $50,000 against damage in transit, at no extra cost.
Grand pianos over $50,000 can be covered for their full value on request.
"""


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Any]:
    playwright = pytest.importorskip("playwright.async_api")
    async with playwright.async_playwright() as p:
        chromium = await p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            yield chromium
        finally:
            await chromium.close()


async def shot(page: Any, name: str) -> None:
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


def next_tuesday() -> str:
    today = datetime.now(ZoneInfo("Australia/Melbourne")).date()
    return str(today + timedelta(days=(1 - today.weekday()) % 7 + 7))


async def test_an_owner_runs_the_console_in_a_browser(
    start_relay: Any, browser: Any, tmp_path: Path, data_dir: Path
) -> None:
    prompts = tmp_path / "shipped-prompts"
    prompts.mkdir()
    shutil.copy(SHIPPED_PROMPTS / "piano-removals.toml", prompts / "piano-removals.toml")
    if (REPO / "data" / "prices.toml").exists():
        shutil.copy(REPO / "data" / "prices.toml", data_dir / "prices.toml")
    quote = {"piano_type": "upright", "pickup": "Brunswick", "dropoff": "Coburg",
             "move_date": next_tuesday()}  # fmt: skip
    llm = ScriptedLLM(
        [
            Text("Hello! Yes, I can help with a piano move."),
            ToolCalls([ToolCall("quote_piano_move", quote)]),
            Text("Happy to help: that move is quoted, and it's insured. Where is it now?"),
        ]
    )
    async with start_relay(
        llm,
        RELAY_PROMPTS_DIR=str(prompts),
        RELAY_ADMIN_TOKEN=ADMIN_TOKEN,
        RELAY_KNOWLEDGE="true",
        RELAY_KNOWLEDGE_AUTOLOAD="false",
        RELAY_KNOWLEDGE_MIN_SCORE="0.2",
    ) as relay:
        context = await browser.new_context(viewport={"width": 1100, "height": 900})
        page = await context.new_page()
        page.set_default_timeout(10 * SECOND)
        errors: list[str] = []  # what the browser's console logs as errors
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        icons: list[Any] = []  # the icons it fetches: the page's own, never /favicon.ico
        page.on("response", lambda r: icons.append(r) if "icon" in r.url else None)

        # Sign in with the admin token. The page loads cleanly, its icon included.
        await page.goto(relay.base_url + "/console")
        assert "/console/sign-in" in page.url
        await page.wait_for_load_state("networkidle")
        assert errors == [], errors
        assert [(r.url, r.status) for r in icons] == [
            (relay.base_url + "/console/static/icon.svg", 200)
        ]
        await page.get_by_role("textbox", name="Admin token").fill(ADMIN_TOKEN)
        await page.get_by_role("button", name="Sign in with the token").click()
        await page.wait_for_url(relay.base_url + "/console")
        await page.get_by_role("heading", name="How the phone line is doing").wait_for()

        # Upload a document (and one that fails), then ask it a question.
        await page.goto(relay.base_url + "/console/knowledge")
        await page.get_by_label("Files").set_input_files(
            [
                {"name": "insurance.md", "mimeType": "text/markdown", "buffer": INSURANCE},
                {"name": "broken.pdf", "mimeType": "application/pdf", "buffer": b"not a pdf"},
            ]
        )
        await page.get_by_role("button", name="Upload").click()
        results = page.locator("#upload-results")
        await results.locator("li.ok", has_text="insurance.md: added").wait_for()
        await results.locator("li.error", has_text="broken.pdf: failed").wait_for()
        await page.locator("#documents td", has_text="insurance.md").first.wait_for()
        await page.get_by_label("What a caller might ask").fill(
            "Is my piano insured during the move?"
        )
        await page.get_by_role("button", name="Ask").click()
        answer = page.locator("#answer")
        await answer.locator("blockquote", has_text="insured for up to $50,000").wait_for()
        await shot(page, "knowledge")

        # Watch a live call: it appears on the live page, then its transcript streams in.
        call = relay.call()
        await call.connect()
        await page.goto(relay.base_url + "/console/live")
        row = page.locator("#live tr", has_text="+61*******78")
        await row.wait_for()
        await call.say("Hi, do you move pianos?")
        # The live list shows each call's latest words (it refreshes every second).
        await row.locator("td.said", has_text="Hi, do you move pianos?").wait_for(
            timeout=3 * SECOND
        )
        await row.locator("td.said", has_text="I can help with a piano move.").wait_for(
            timeout=3 * SECOND
        )
        await shot(page, "live")
        await page.get_by_role("link", name="+61*******78").click()
        await page.wait_for_url(f"**/console/calls/{call.call_sid}")
        await page.locator("#live-state", has_text="live").wait_for()
        said = "How much to move my upright piano, and is it insured?"
        await call.say(said)
        transcript = page.locator("#transcript")
        # Each line is on screen within a second of the frame (the stream polls every 250 ms).
        await transcript.locator("li.caller", has_text=said).wait_for(timeout=2 * SECOND)
        await transcript.locator("li.tool", has_text="quote_piano_move").wait_for(
            timeout=2 * SECOND
        )
        await transcript.locator("li.agent", has_text="Where is it now?").wait_for(
            timeout=2 * SECOND
        )
        await shot(page, "live-call")
        await call.close()
        await relay.session_closed()
        await page.locator("#live-state", has_text="ended").wait_for()

        # Open the finished call: its quote total, tool calls and passages.
        await page.reload()
        await page.get_by_role("heading", name="Latency per turn").wait_for()
        assert await page.locator("ol.transcript li.caller").nth(1).inner_text() == f"Caller {said}"
        await page.locator("ol.transcript li.tool", has_text="quote_piano_move").wait_for()
        total = await page.locator("dd.quote-total").first.inner_text()
        assert total.startswith("AUD 350.00"), total
        assert await page.locator("#q-h ~ .card .total").first.inner_text() == "AUD 350.00"
        await page.locator("pre.given", has_text="insured for up to $50,000").wait_for()
        assert await page.locator("#replay").input_value() == f"relay replay {call.call_sid}"
        await shot(page, "call")
        # Mark a message done and confirm a booking.
        now = datetime.now(UTC)
        async with relay.runtime.deps.db.session() as session, session.begin():
            session.add(Ticket(agent="piano-removals", call_sid=call.call_sid, name="Ann Lee",
                               phone="+61412000111", reason="Wants a quote for a grand.",
                               status="open", created_at=now))  # fmt: skip
            session.add(Booking(id="246810", agent="piano-removals", kind="move",
                                phone="+61412000222", name="Bea", starts_at=now + timedelta(days=2),
                                ends_at=now + timedelta(days=2, hours=4), status="booked",
                                created_at=now, updated_at=now))  # fmt: skip
        await page.goto(relay.base_url + "/console/messages")
        ticket = page.locator("li.ticket", has_text="Ann Lee")
        await ticket.get_by_role("button", name="Done").click()
        await page.wait_for_url(relay.base_url + "/console/messages")
        assert await page.locator("li.ticket", has_text="Ann Lee").count() == 0
        await page.goto(relay.base_url + "/console/messages?status=done")
        await (
            page.locator("li.ticket", has_text="Ann Lee")
            .locator(".status", has_text="done")
            .wait_for()
        )

        await page.goto(relay.base_url + "/console/bookings")
        booking = page.locator("#booking-246810")
        await booking.get_by_role("button", name="Confirm").click()
        await page.locator("#booking-246810 .status", has_text="confirmed by admin").wait_for()
        await shot(page, "bookings")

        # The home page on a phone screen.
        phone = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
        await phone.add_cookies(await context.cookies())
        small = await phone.new_page()
        await small.goto(relay.base_url + "/console")
        await small.get_by_role("heading", name="How the phone line is doing").wait_for()
        width = await small.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
        await shot(small, "home-phone")
        # No page is wider than the phone (a wide table scrolls inside its own box).
        for path in (
            "/console/live",
            "/console/calls",
            f"/console/calls/{call.call_sid}",
            "/console/quotes",
            "/console/bookings",
            "/console/calendar",
            "/console/messages?status=done",
            "/console/notifications",
            "/console/knowledge",  # its documents table's hidden "Remove" heading
            "/console/calls/CAnone",  # the error page
        ):
            await small.goto(relay.base_url + path)
            width = await small.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{path} scrolls sideways on a phone ({width}px)"
        await phone.close()

        # Signing out ends the session.
        await page.get_by_role("button", name="Sign out").click()
        await page.wait_for_url("**/console/sign-in")
        await page.goto(relay.base_url + "/console/calls")
        assert "/console/sign-in" in page.url
        assert errors == [], errors  # nor on any page since
        await context.close()
