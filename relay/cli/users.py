"""``relay users``: the operator console's users (owners and editors).

Passwords are stored as salted scrypt hashes. ``add`` reads the password from
``--password-stdin`` or asks for it twice on the terminal; adding an existing user replaces
their password and role and ends their console sessions (as ``remove`` does).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import re
import sys
from typing import Any

from relay.errors import ConfigError
from relay.storage import console as store
from relay.storage.db import Database

_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MIN_PASSWORD = 10


def add_parser(commands: Any) -> None:
    users = commands.add_parser(
        "users", help="operator console users (relay users add/list/remove)"
    )
    sub = users.add_subparsers(title="user commands", metavar="COMMAND")
    users.set_defaults(handler=lambda _args: (users.print_help(), 2)[1])

    add = sub.add_parser(
        "add", help="add a console user, or change a user's password and role (signs them out)"
    )
    add.add_argument("username")
    add.add_argument("--role", choices=store.ROLES, default="owner",
                     help="owner: everything; editor: knowledge only (default owner)")  # fmt: skip
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input")  # fmt: skip
    add.set_defaults(handler=_add)

    listing = sub.add_parser("list", help="list console users")
    listing.set_defaults(handler=_list)

    remove = sub.add_parser("remove", help="remove a console user (signs them out)")
    remove.add_argument("username")
    remove.set_defaults(handler=_remove)


async def _database(args: argparse.Namespace) -> Database:
    from relay.cli.common import settings_from

    settings = settings_from(args, RELAY_LOG_LEVEL="warning")
    db = Database(settings.database)
    await db.migrate()
    return db


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise ConfigError("the two passwords differ")
    if len(password) < MIN_PASSWORD:
        raise ConfigError(f"the password must be at least {MIN_PASSWORD} characters")
    return password


def _add(args: argparse.Namespace) -> int:
    if not _NAME.match(args.username):
        raise ConfigError("a user name is 1-64 letters, digits or . _ @ -")
    password = _password(args)

    async def run() -> bool:
        db = await _database(args)
        try:
            return await store.add_user(db, args.username, password, args.role)
        finally:
            await db.close()

    if asyncio.run(run()):
        # The new password hash has a new salt: sessions carrying the old one's stamp end.
        print(f"Saved console user {args.username} ({args.role}); their sessions are ended.")
    else:
        print(f"Saved console user {args.username} ({args.role}).")
    return 0


def _list(args: argparse.Namespace) -> int:
    async def run() -> list[store.UserInfo]:
        db = await _database(args)
        try:
            return await store.list_users(db)
        finally:
            await db.close()

    users = asyncio.run(run())
    if not users:
        print("No console users. Add one with: relay users add NAME")
        return 0
    print(f"{'user':32} {'role':8} created")
    for user in users:
        print(f"{user.username:32} {user.role:8} {user.created_at:%Y-%m-%d %H:%M}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    async def run() -> bool:
        db = await _database(args)
        try:
            return await store.remove_user(db, args.username)
        finally:
            await db.close()

    if not asyncio.run(run()):
        print(f"relay: there is no console user {args.username}", file=sys.stderr)
        return 1
    print(f"Removed console user {args.username}.")
    return 0
