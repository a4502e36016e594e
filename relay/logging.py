"""structlog, configured once: JSON when not on a terminal, readable console output on one.

Every line of a call carries ``call_sid`` (bound in the session's context). Phone numbers are
masked at info level and above.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

_PHONE = re.compile(r"\+?\d[\d\s\-().]{6,}\d")


def mask_phone(value: str) -> str:
    """'+61390001234' -> '+6139*****34': enough to tell calls apart, not to dial."""

    def hide(match: re.Match[str]) -> str:
        digits = match.group(0)
        if len(digits) <= 6:
            return digits
        return digits[:4] + "*" * (len(digits) - 6) + digits[-2:]

    return _PHONE.sub(hide, value)


def _mask_processor(
    _logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if method == "debug":
        return event
    for key, value in event.items():
        if isinstance(value, str) and key not in ("call_sid", "timestamp", "level", "logger"):
            event[key] = mask_phone(value)
    return event


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written (tests swap it; cached loggers keep this)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str = "info", fmt: Literal["auto", "json", "console"] = "auto") -> None:
    """Configure structlog and the standard library logging it sits on."""
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    numeric = logging.getLevelName(level.upper())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _mask_processor,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(message)s")
    for noisy in ("httpx", "httpcore", "chromadb", "alembic"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
