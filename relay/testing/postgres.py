"""A throwaway PostgreSQL cluster for tests: ``initdb`` into a temporary directory, a server on
a loopback port, a fresh database per test.

``RELAY_TEST_POSTGRES_URL`` (``postgresql://user@127.0.0.1:PORT/postgres``, as ``.ci/run``
exports it) names a running server to use instead. PostgreSQL refuses to run as root, so when
root starts the cluster it runs as the ``postgres`` user (or ``nobody``) through ``su``.

    python -m relay.testing.postgres      # start one, print its URL, stop on Ctrl-C
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ENV = "RELAY_TEST_POSTGRES_URL"
USER = "relay"


def binaries() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl`` (PostgreSQL 15 preferred), or None."""
    root = Path("/usr/lib/postgresql")
    candidates = sorted(root.glob("*/bin"), key=lambda p: p.parent.name, reverse=True)
    preferred = [p for p in candidates if p.parent.name == "15"] + candidates
    for folder in preferred:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as(user: str | None, argv: list[str]) -> None:
    if user is None:
        subprocess.run(argv, check=True, capture_output=True)
    else:
        command = " ".join(_quote(a) for a in argv)
        subprocess.run(
            ["su", user, "-s", "/bin/sh", "-c", command], check=True, capture_output=True
        )


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def _service_user() -> str | None:
    """Who runs the server: ourselves, unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


@contextlib.contextmanager
def cluster() -> Iterator[str]:
    """Start a throwaway cluster; yields ``postgresql://relay@127.0.0.1:PORT/postgres``."""
    folder = binaries()
    if folder is None:
        raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) are not installed")
    user = _service_user()
    root = Path(tempfile.mkdtemp(prefix="relay-pg-"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    data, port = root / "data", _free_port()
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=200"
    )
    try:
        _run_as(user, [str(folder / "initdb"), "-D", str(data), "-U", USER, "--auth=trust",
                       "-E", "UTF8", "--no-sync"])  # fmt: skip
        _run_as(user, [str(folder / "pg_ctl"), "-D", str(data), "-o", options,
                       "-l", str(root / "log"), "-w", "start"])  # fmt: skip
        try:
            yield f"postgresql://{USER}@127.0.0.1:{port}/postgres"
        finally:
            _run_as(user, [str(folder / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                           "stop"])  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


def asyncpg_dsn(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL (``postgresql+asyncpg://``) as asyncpg itself takes it."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def create_database(server_url: str) -> str:
    """A new, empty database on the server; returns its SQLAlchemy URL (asyncpg driver)."""
    import asyncpg

    name = "relay_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = asyncpg_dsn(server_url).rsplit("/", 1)[0]
    return base.replace("postgresql://", "postgresql+asyncpg://", 1) + "/" + name


async def drop_database(server_url: str, database_url: str) -> None:
    """Drop a database made by :func:`create_database` (closing whatever still uses it)."""
    import asyncpg

    name = database_url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


if __name__ == "__main__":  # pragma: no cover
    with cluster() as url:
        print(url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
