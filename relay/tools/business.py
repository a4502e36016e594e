"""The business tools relay ships, and the data files they work from.

``TOOLS`` lists every business tool (piano removals, appointments, customers, messages and the
document search); the registry adds them next to the call-control tools. Each agent lists the
ones it uses in its profile.

:func:`load_services` reads an agent's data files (its profile's ``[data]`` table) once, at
start, into the mapping tools find as ``ctx.services``. A missing or broken file, or a tool that
needs a file the agent does not name, stops the service at start with a message naming the
agent, the file and the field, never on a caller's turn.

Other services a tool can use are added next to the data by the app: ``"knowledge"`` (an object
with ``async search(collection, query, k=...)``, such as ``knowledge.aio.AsyncKnowledge``) and
``"twilio"`` (:class:`relay.services.messaging.TwilioCredentials`, for texts).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from relay.agents import AgentProfile
from relay.domain.places import Gazetteer
from relay.domain.pricing import load_pricing
from relay.domain.scheduling import BusinessCalendar, SchedulingError, load_calendar, load_catalogue
from relay.errors import ConfigError, RelayError
from relay.services.customers import bookings_owner
from relay.tools import appointments, customers, mail, messages, piano, reference
from relay.tools.base import Tool
from relay.tools.common import OWNER

__all__ = ["DATA_FILES", "TOOLS", "load_services"]

TOOLS: list[Tool] = [
    *piano.TOOLS,
    *appointments.TOOLS,
    *customers.TOOLS,
    *messages.TOOLS,
    *reference.TOOLS,
    *mail.TOOLS,
]

#: What each name in a profile's ``[data]`` table is, and how it is read.
DATA_FILES: dict[str, Callable[[Path], Any]] = {
    "pricing": load_pricing,  # piano-removals/pricing.toml
    "places": Gazetteer.load,  # piano-removals/places.csv
    "calendar": load_calendar,  # */calendar.toml
    "catalogue": load_catalogue,  # car-service/services.toml
}

#: ``[data]`` names that are not files: ``bookings`` names the agent whose bookings this one
#: works on (see :func:`relay.services.customers.bookings_owner`).
_NOT_FILES = frozenset({"bookings"})

#: The data each tool needs, checked at start.
_NEEDS: dict[str, tuple[str, ...]] = {
    "quote_piano_move": ("pricing", "places"),
    "find_move_dates": ("calendar",),
    "book_move": ("calendar", "pricing"),  # a quote is re-priced for its day when booked
    "find_available_slots": ("catalogue", "calendar"),
    "book_appointment": ("catalogue", "calendar"),
    "reschedule_appointment": ("catalogue", "calendar"),
    "cancel_appointment": ("catalogue", "calendar"),
    "appointment_status": ("catalogue", "calendar"),
}
#: Tools that need a calendar of named windows, and tools that need opening hours.
_WINDOW_TOOLS = frozenset({"find_move_dates", "book_move"})
_HOURS_TOOLS = frozenset(
    {
        "find_available_slots",
        "book_appointment",
        "reschedule_appointment",
        "cancel_appointment",
        "appointment_status",
    }
)


def load_services(agent: AgentProfile, data_dir: Path) -> dict[str, Any]:
    """Read ``agent``'s data files from ``data_dir`` (paths in its profile are relative to it).

    Returns the loaded tables by name (``pricing``, ``places``, ``calendar``, ``catalogue``)
    plus ``bookings_agent``, the agent name bookings are stored under. Raises
    :class:`~relay.errors.ConfigError` naming the agent and the file when a file is missing or
    invalid, when a ``[data]`` name is unknown, or when a listed tool lacks the data it needs.
    """
    services: dict[str, Any] = {OWNER: bookings_owner(agent)}
    for name, relative in agent.data.items():
        if name in _NOT_FILES:
            continue
        loader = DATA_FILES.get(name)
        if loader is None:
            known = ", ".join(sorted({*DATA_FILES, *_NOT_FILES}))
            raise ConfigError(
                f"agent {agent.name!r}, [data] {name} = {relative!r}: unknown data name (known: {known})"
            )
        path = Path(relative) if Path(relative).is_absolute() else data_dir / relative
        try:
            services[name] = loader(path)
        except (RelayError, SchedulingError, OSError, ValueError) as exc:
            where = "" if str(path) in str(exc) else f"{path}: "
            hint = (
                f" (relative to {Path.cwd()}: run relay from the folder that holds the agents' "
                "data/, or set RELAY_DATA_DIR to it)"
                if not path.is_absolute() and not path.exists()
                else ""
            )
            raise ConfigError(f"agent {agent.name!r}, [data] {name}: {where}{exc}{hint}") from exc
    for tool_name in agent.tools:
        missing = [key for key in _NEEDS.get(tool_name, ()) if key not in services]
        if missing:
            raise ConfigError(
                f"agent {agent.name!r}: tool {tool_name} needs [data] {', '.join(missing)} in "
                "its profile"
            )
        calendar = services.get("calendar")
        if (
            isinstance(calendar, BusinessCalendar)
            and tool_name in _WINDOW_TOOLS | _HOURS_TOOLS
            and (tool_name in _WINDOW_TOOLS) != calendar.uses_windows
        ):
            wanted = "[[window]] entries" if tool_name in _WINDOW_TOOLS else "an [hours] table"
            raise ConfigError(
                f"agent {agent.name!r}: tool {tool_name} needs a calendar with {wanted} "
                f"({agent.data['calendar']!r})"
            )
    return services
