"""``relay sessions purge`` and ``relay sessions delete``: retention and a caller's request.

Both work on the database the settings name (``DATABASE_URL`` or the SQLite file in the data
directory) and print what they changed, table by table. See :mod:`relay.services.retention`.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from relay.cli.common import settings_from
from relay.errors import ConfigError
from relay.services import retention
from relay.storage.db import Database


def add_subcommands(sub: Any) -> None:
    """Add ``purge`` and ``delete`` to the ``relay sessions`` sub-parsers."""
    purge = sub.add_parser(
        "purge",
        help="delete transcripts, events and model bodies older than DAYS (RELAY_RETENTION_DAYS)",
    )
    purge.add_argument(
        "--older-than",
        type=_days,
        metavar="DAYS",
        help="age in days (default: RELAY_RETENTION_DAYS)",
    )
    purge.add_argument(
        "--mask-numbers",
        action="store_true",
        help="also mask the phone numbers of those calls (keeps the aggregates)",
    )
    purge.set_defaults(handler=_purge)

    delete = sub.add_parser("delete", help="delete everything recorded about one call")
    delete.add_argument("call", metavar="CALLSID")
    delete.set_defaults(handler=_delete)


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from exc
    if days < 0:
        raise argparse.ArgumentTypeError("the number of days cannot be negative")
    return days


async def _open(args: argparse.Namespace) -> Database:
    settings = settings_from(args, RELAY_LOG_LEVEL="warning")
    db = Database(settings.database)
    await db.migrate()
    return db


def _print(report: retention.Report) -> None:
    for table, count in sorted(report.rows.items()):
        print(f"{table}: {count}")


def _purge(args: argparse.Namespace) -> int:
    settings = settings_from(args, RELAY_LOG_LEVEL="warning")
    days = args.older_than if args.older_than is not None else settings.retention_days
    if days is None:
        raise ConfigError("say how old: --older-than DAYS, or set RELAY_RETENTION_DAYS")

    async def run() -> int:
        db = await _open(args)
        try:
            report = await retention.purge(db, older_than_days=days)
            if args.mask_numbers:
                masked = await retention.mask_numbers(db, older_than_days=days)
                for table, count in masked.rows.items():
                    report.rows[f"masked_{table}"] = count
        finally:
            await db.close()
        _print(report)
        return 0

    return asyncio.run(run())


def _delete(args: argparse.Namespace) -> int:
    async def run() -> int:
        db = await _open(args)
        try:
            report = await retention.delete_call(db, args.call)
        finally:
            await db.close()
        if not report.rows.get("calls"):
            print(f"relay: no call {args.call} in the database")
            _print(report)
            return 1
        _print(report)
        return 0

    return asyncio.run(run())
