"""The ``relay`` command: one module per command group."""

from relay.cli.main import main

__all__ = ["main"]
