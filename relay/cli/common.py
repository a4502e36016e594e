"""What every command group shares: settings from the environment and flags, logging set up.

Only the command line and :mod:`relay.web.app` read settings; everything below them receives
explicit arguments.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from relay import logging as relay_logging
from relay.config import Settings, load_settings

Handler = Callable[[argparse.Namespace], int]


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from the environment, with command-line flags on top; logging configured."""
    settings = load_settings(**overrides)
    relay_logging.configure(settings.log_level, settings.log_format)
    return settings


__all__ = ["Handler", "settings_from"]
