"""Jinja2 templates of the console, and small formatting helpers they use."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from relay.recordings.format import mask_number

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


def _when(value: datetime | str | None) -> str:
    """A UTC time as every page writes it (``2026-12-07 19:34:28``; the page says "UTC"); an
    ISO 8601 text (the knowledge store's times) is read first, a naive one taken as UTC."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        text = value
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            return text
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _local(value: datetime | None, zone: str) -> str:
    """A booking's time in its agent's time zone (named by the template, as the calendar does)."""
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    whole = round(seconds)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _money(cents: int | None, currency: str = "") -> str:
    if cents is None:
        return ""
    return f"{currency} {cents / 100:,.2f}".strip()


#: A number retention masked: its first characters kept, every later one an ``x``.
_MASKED = re.compile(r"\+?\d*x+")


def _mask(number: str | None) -> str:
    """A number masked for the page; one retention already masked (``+614xxxxxxxx``,
    ``relay.services.retention.mask``) as stored: masking it again cut it to ``+614``."""
    if not number:
        return ""
    return number if _MASKED.fullmatch(number) else mask_number(number)


def _json(value: Any, indent: int | None = None) -> str:
    """JSON to read on a page (tool arguments, a tool's data, fields): letters as written
    (``José``, not ``Jos\\u00e9`` as ``tojson`` writes them for scripts), keys sorted as
    ``tojson`` sorts them; the page's autoescaping escapes it."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, indent=indent, default=str)


env = Environment(
    loader=FileSystemLoader(str(TEMPLATES)),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters.update(
    when=_when, local=_local, duration=_duration, money=_money, mask=_mask, json=_json
)


def render(
    request: Request, template: str, session: Any = None, *, status_code: int = 200, **context: Any
) -> HTMLResponse:
    html = env.get_template(template).render(request=request, session=session, **context)
    return HTMLResponse(html, status_code=status_code)


def landing(session: Any) -> tuple[str, str]:
    """Where a user's console starts, and the link's words: owners the home page, editors
    the knowledge page (the only part open to them), anyone not signed in the sign-in page."""
    if session is None:
        return "/console/sign-in", "Sign in"
    if getattr(session, "owner", False):
        return "/console", "Back to the console home"
    return "/console/knowledge", "Go to Knowledge"


def render_error(
    request: Request,
    status: int,
    title: str,
    message: str,
    session: Any = None,
    *,
    back: tuple[str, str] | None = None,
) -> HTMLResponse:
    """The error page: the message, the navigation and Sign out of a signed-in ``session``,
    and one link on: ``back`` (a console path and its words) when given, else the user's
    landing page."""
    href, label = back or landing(session)
    return render(request, "error.html", session, status_code=status, title=title,
                  message=message, back_href=href, back_label=label)  # fmt: skip
