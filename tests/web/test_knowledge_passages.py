"""``relay knowledge search``, ``GET /admin/knowledge/{collection}/search`` and the console's
"Ask a question" show what a call's turn is given: the same passages, scores and order as the
retriever's provenance, for the same words (``relay.web.passages``).

Uses the real local embedding model and the shipped piano-removals documents. The command line
and the admin API searched the store with the words as typed, without the threshold: "do you
move pianos on Sundays?" then scored 0.828 at the top, and its fourth passage was another.
"""

from __future__ import annotations

import asyncio
import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, SHIPPED_PROMPTS
from tests.web.console.conftest import ADMIN_TOKEN, sign_in

pytestmark = pytest.mark.slow

QUESTION = "do you move pianos on Sundays?"
SHIPPED_DOCS = REPO / "data" / "knowledge" / "piano-removals"
#: One passage of ``relay knowledge search``: ``1. 0.894  faq.csv (v1) [A > B]``.
_CLI_PASSAGE = re.compile(r"^\d+\. (\d\.\d{3})  (.+) \(v\d+\) \[(.*)\]$", re.M)
#: Between a passage's headings on the console (U+203A, a single right angle quote).
_CONSOLE_SEPARATOR = " \u203a "
#: One passage of the console's answer (``templates/knowledge.html``).
_CONSOLE_PASSAGE = re.compile(
    rf"<li><p><strong>(.*?)</strong>(?:{_CONSOLE_SEPARATOR}(.*?))? "
    r'<span class="note">score (\d\.\d{3}) '
)

Passage = tuple[str, str, str]  # source, headings joined by " > ", score to three places


def relay_knowledge_search(data: Path, prompts: Path, question: str) -> str:
    """``relay knowledge search`` as an editor runs it, on the same data directory."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RELAY_", "OPENAI_", "TWILIO_", "DATABASE_URL", "CHROMA_URL"))
    }
    environ.update(RELAY_DATA_DIR=str(data), RELAY_PROMPTS_DIR=str(prompts))
    done = subprocess.run(
        [sys.executable, "-m", "relay", "knowledge", "search", question],
        capture_output=True, text=True, cwd=REPO, env=environ, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_the_command_line_the_admin_api_and_the_console_show_what_a_call_gets(
    start_relay: Any, data_dir: Path, tmp_path: Path
) -> None:
    prompts = tmp_path / "shipped-prompts"
    prompts.mkdir()
    for name in ("piano-removals.toml", "car-service.toml"):
        shutil.copy(SHIPPED_PROMPTS / name, prompts / name)
    folder = data_dir / "knowledge" / "piano-removals"
    shutil.copytree(SHIPPED_DOCS, folder)
    async with start_relay(
        RELAY_PROMPTS_DIR=str(prompts),
        RELAY_ADMIN_TOKEN=ADMIN_TOKEN,
        RELAY_KNOWLEDGE="true",
        RELAY_KNOWLEDGE_AUTOLOAD="false",
    ) as relay:
        runtime = relay.runtime
        report = await runtime.knowledge.sync("piano-removals", folder)
        assert report.ok and report.added == len(list(SHIPPED_DOCS.iterdir()))
        # the call: a turn's retrieval and the provenance it records
        agent = runtime.deps.agents.get("piano-removals")
        retrieved = await runtime.retriever.retrieve(agent, QUESTION)
        assert retrieved is not None and retrieved.error is None
        admin = await relay.http.get(
            relay.base_url + "/admin/knowledge/piano-removals/search",
            params={"q": QUESTION},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        first_two = await relay.http.get(
            relay.base_url + "/admin/knowledge/piano-removals/search",
            params={"q": QUESTION, "k": "2"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        browser = await sign_in(relay.base_url)
        try:
            page = await browser.http.get(
                "/console/knowledge", params={"agent": "piano-removals", "ask": QUESTION}
            )
        finally:
            await browser.http.aclose()
        cli = await asyncio.to_thread(relay_knowledge_search, data_dir, prompts, QUESTION)

    provenance = retrieved.provenance
    assert len(provenance) == relay.settings.knowledge_k  # the shipped documents cover it
    assert admin.status_code == 200, admin.text
    hits = admin.json()["hits"]
    # the same chunks in the same order with the same scores (provenance keeps four places)
    assert [
        (h["chunk_id"], h["source"], h["heading_path"], round(h["score"], 4)) for h in hits
    ] == [(p["chunk_id"], p["source"], p["heading"], p["score"]) for p in provenance]
    assert first_two.json()["hits"] == hits[:2]
    shown: list[Passage] = [
        (h["source"], " > ".join(h["heading_path"]), f"{h['score']:.3f}") for h in hits
    ]

    assert page.status_code == 200, page.text
    assert '<option value="piano-removals" selected>' in page.text
    console = [
        (
            html.unescape(source),
            html.unescape(heading or "").replace(_CONSOLE_SEPARATOR, " > "),
            score,
        )
        for source, heading, score in _CONSOLE_PASSAGE.findall(page.text)
    ]
    assert console == shown

    cli_shown = [(source, heading, score) for score, source, heading in _CLI_PASSAGE.findall(cli)]
    assert cli_shown == shown, cli
