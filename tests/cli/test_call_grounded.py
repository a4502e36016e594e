"""``relay call`` on a first start: the first question is grounded in the shipped documents.

A newcomer's first call used to race the knowledge warm-up: the embedding model loading (and,
on a fresh data directory, the shipped documents loading) took longer than the turn's search
may wait, so the first answer had no passages, and the process could end before the default
agent's documents were loaded at all.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

from relay.storage import repository
from relay.storage.db import Database

REPO = Path(__file__).resolve().parents[2]


def test_the_first_question_of_a_first_start_is_grounded(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(REPO / "data", data, ignore=shutil.ignore_patterns("*.db*", "chroma", ".*"))
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RELAY_", "OPENAI_", "TWILIO_", "DATABASE_URL", "CHROMA_URL"))
    }
    environ.update(RELAY_DATA_DIR=str(data), RELAY_LOG_LEVEL="warning", RELAY_LOG_FORMAT="json")
    done = subprocess.run(
        [sys.executable, "-m", "relay", "call", "--fake-llm"],
        input="Do you move pianos on Sundays?\n/quit\n", capture_output=True, text=True,
        cwd=REPO, env=environ, timeout=180, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "retrieval_failed" not in done.stdout + done.stderr
    assert "agent> You said: Do you move pianos on Sundays. What else" in done.stdout

    async def first_answer() -> tuple[list[dict[str, object]], list[str]]:
        db = Database(f"sqlite+aiosqlite:///{data / 'relay.db'}")
        try:
            [call] = await repository.list_calls(db)
            turns = await repository.stored_turns(db, call.call_sid)
        finally:
            await db.close()
        [answer] = [t for t in turns if t.role == "assistant" and t.content.startswith("You said")]
        return answer.retrieval or [], [str(t.content) for t in turns]

    passages, said = asyncio.run(first_answer())
    assert passages, said  # grounded: the shipped documents were searched, not timed out
    assert {p["source"] for p in passages} <= {
        p.name for p in (REPO / "data" / "knowledge" / "piano-removals").iterdir()
    }
