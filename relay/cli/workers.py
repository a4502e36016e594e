"""``relay serve --workers N``: several uvicorn worker processes on one port.

The parent process prepares what the workers share, then hands over to uvicorn's process
manager, which starts each worker on ``relay.web.app:app_from_env`` (settings from the
environment, which the parent completes):

1. Migrations run once, here, under the migration lock (``Database.migrate``), before any
   worker takes a call; each worker's own ``migrate()`` then finds the schema current.
2. Unless ``CHROMA_URL`` names a Chroma server, the parent runs one over the embedded store's
   files (:class:`~relay.services.chroma_server.ChromaServer`, supervised, stopped at exit)
   and every worker, the CLI and the admin API use it.
3. Every setting given on the command line is passed on as its environment variable.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

import structlog
import uvicorn

from relay import metrics
from relay.config import Settings

log = structlog.get_logger("relay.cli.workers")

APP_FACTORY = "relay.web.app:app_from_env"


async def migrate_once(url: str) -> None:
    """Bring the database to the newest schema (under the migration lock)."""
    from relay.storage.db import Database

    db = Database(url)
    try:
        await db.migrate()
    finally:
        await db.close()


def serve_workers(
    settings: Settings, overrides: Mapping[str, Any], options: Mapping[str, Any]
) -> int:
    """Run ``settings.workers`` workers with uvicorn ``options`` (host, port, limits...)."""
    from relay.services.chroma_server import ChromaServer

    for name, value in overrides.items():
        os.environ[name] = str(value)
    os.environ["RELAY_WORKERS"] = str(settings.workers)
    asyncio.run(migrate_once(settings.database))
    chroma: ChromaServer | None = None
    if settings.knowledge_enabled and not settings.chroma_url:
        chroma = ChromaServer(
            settings.knowledge_path, data_dir=settings.data_dir, port=settings.chroma_port
        )
        os.environ["CHROMA_URL"] = chroma.start()
    log.info("workers_starting", workers=settings.workers, chroma=os.environ.get("CHROMA_URL"))
    clear_metrics = metrics.prepare_multiprocess(settings.workers)  # /metrics sums the workers
    try:
        uvicorn.run(APP_FACTORY, factory=True, workers=settings.workers, **options)
    finally:
        clear_metrics()
        if chroma is not None:
            chroma.stop()
    return 0
