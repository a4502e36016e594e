"""What every command group shares: settings from the environment and flags, logging set up.

Only the command line and :mod:`relay.web.app` read settings; everything below them receives
explicit arguments.
"""

from __future__ import annotations

import argparse
import errno
import socket
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from relay import logging as relay_logging
from relay.config import Settings, load_settings, unknown_variables
from relay.errors import ConfigError

Handler = Callable[[argparse.Namespace], int]

log = structlog.get_logger("relay.cli")


def settings_from(
    args: argparse.Namespace, flags: Mapping[str, str] | None = None, /, **overrides: Any
) -> Settings:
    """Settings from the environment, with command-line flags on top; logging configured.

    ``flags``: the flag that gave each override, named with its variable when it is invalid.
    Each ``RELAY_`` variable relay does not know is logged once (``setting_unknown``, with the
    nearest known name): a warning, not a refusal, so that a newer relay's variable does not
    stop an older one."""
    settings = load_settings(flags, **overrides)
    relay_logging.configure(settings.log_level, settings.log_format)
    for name, near in unknown_variables():
        log.warning(
            "setting_unknown",
            variable=name,
            did_you_mean=near,
            message=f"{name} is not a relay setting; ignored"
            + (f" (did you mean {near}?)" if near else ""),
        )
    return settings


def check_listen(
    host: str, port: int, *, host_names: str = "RELAY_HOST or --host",
    port_names: str = "RELAY_PORT or --port",
) -> None:  # fmt: skip
    """Bind (and listen on) ``host:port`` as uvicorn will, then let go; a ConfigError saying
    why not, naming the setting to change (``host_names`` or ``port_names``), when it cannot:
    ``cannot listen on 0.0.0.0:8080: address already in use (RELAY_PORT or --port)``.

    Run before migrations and the server's start-up, which would otherwise go by first, and
    end in uvicorn's own lines (without the port, with several workers)."""
    where = f"{host}:{port}"
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {where}: {_why(exc)} ({host_names})") from exc
    probes: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in addresses:
            probe = socket.socket(family, kind, proto)
            probes.append(probe)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            if family == socket.AF_INET6:  # as asyncio's create_server does
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)
            probe.listen(1)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {where}: {_why(exc)} ({_names(exc, host_names, port_names)})"
        ) from exc
    finally:
        for probe in probes:
            probe.close()


def _why(exc: OSError) -> str:
    """The reason, in lower case as uvicorn logs it ("address already in use")."""
    reason = exc.strerror or str(exc)
    return reason[:1].lower() + reason[1:]


def _names(exc: OSError, host_names: str, port_names: str) -> str:
    """The setting to change: the port when it is taken or privileged, else the host."""
    if exc.errno in (errno.EADDRINUSE, errno.EACCES):
        return port_names
    return host_names


__all__ = ["Handler", "check_listen", "settings_from"]
