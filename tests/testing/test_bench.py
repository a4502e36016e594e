"""``relay bench``: a tiny real run (fake LLM, server and echo server as processes) and its helpers.

No timing is asserted: the figures depend on the machine. What must hold anywhere is that the
run completes, every reply arrives whole, and the report carries every field.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from relay.cli.main import main
from relay.testing.bench import (
    NAMES,
    PROMPTS,
    STAGES,
    SUBURBS,
    Baselines,
    Expectations,
    Stats,
    new_words,
    stages_of,
    tokens_lost,
)
from relay.testing.bench_console import Followed


def test_a_small_run_reports_every_figure_with_no_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", "--calls", "2", "--turns", "2", "--token-delay", "0", "--think", "0"]
    argv += ["--first-token-delay", "0.01", "--baseline-sampling", "turns"]

    argv += ["--partials", "2", "--new-words", "--console", "1"]
    upload = tmp_path / "warehouse-hours.md"  # a name the shipped documents do not use
    upload.write_text("# Storage\n\nWe keep pianos in a heated warehouse for 40 dollars a month.\n")
    argv += ["--upload", str(upload)]
    assert main([*argv, "--json", str(out), "--timeout", "120"]) == 0

    report = json.loads(out.read_text())
    for hop in ("ws_hop", "llm_hop", "relay"):
        assert set(report[hop]) == {"n", "p50", "p95", "p99", "mean", "max"}
        assert report[hop]["n"] > 0
    assert report["relay"]["n"] == 4  # 2 calls x 2 measured turns, each reply complete
    assert report["turns_measured"] == 4
    for key in ("overhead_p50_ms", "overhead_p95_ms", "overhead_p99_ms", "turns_per_s"):
        assert isinstance(report[key], float)
    assert report["rss_kb_no_calls"] > 0 and report["rss_kb_idle_calls"] > 0
    assert report["memory_per_call_kb"] is not None
    assert report["baseline_mode"] == "concurrent"
    # the LLM hop sampled as each measured turn started (one beside each of the 4 turns)
    assert report["options"]["baseline_sampling"] == "turns"
    assert report["llm_hop"]["n"] == 4
    # the fake LLM's own lateness: its first deltas to relay's turns and to those samples
    assert 4 <= report["model_late"]["n"] <= 8
    # and each of those turns against its own sample
    assert report["paired"]["n"] == 4
    assert report["errors"] == 0, report["error_samples"]
    assert report["frames_lost"] == 0
    assert report["unexpected_frames"] == 0
    assert report["unmeasured_errors"] == 0
    # knowledge on by default: every measured turn retrieved (or kept) reference material
    retrieval = report["retrieval"]
    assert retrieval["turns"] == 4 and retrieval["failures"] == 0
    assert retrieval["searched"] + retrieval["skipped"] == 4
    assert isinstance(retrieval["cpu_ms_per_turn"], float)
    assert report["options"]["knowledge"] is True and report["options"]["workers"] == 1
    assert isinstance(retrieval["prefetched"], int)  # interim prompts: answered by nothing
    # --new-words: no measured turn's words were heard before (by the warm-up call, or by the
    # other call), so each was embedded, from its interim prompt or on the turn's path
    assert report["options"]["new_words"] is True
    assert retrieval["query_embeddings"] >= 4 and retrieval["shed"] == 0
    printed = capsys.readouterr().out.splitlines()
    assert "knowledge on, new words each call;" in printed[0]
    assert any(
        x.startswith("baselines sampled concurrent, LLM hop as turns start;") for x in printed
    )
    assert any(x.startswith("fake LLM 1st delta late (its own clock)") for x in printed)
    [line] = [x for x in printed if x.startswith("retrieval (")]
    embedded = retrieval["query_embeddings"]
    each = (
        f"{embedded} query embeddings ({retrieval.get('embed_cpu_ms_per_embedding')} ms cpu each)"
    )
    assert (each in line) if embedded else (" 0 query embeddings, " in line), line
    assert report["connect"]["n"] == 2 and report["connect_failures"] == 0
    # the calls' whole lives hold the measured phase: 2 calls, 4 measured turns
    per_turn, per_call = report["server_cpu_ms_per_turn"], report["server_cpu_ms_per_call"]
    assert per_turn > 0 and per_call >= 2 * per_turn - 0.01
    assert f"server cpu per call, connect to post-call work done: {per_call} ms" in printed
    # where the time went inside relay: every measured turn, each stage from its own timings
    assert list(report["stages"]) == list(STAGES)
    assert all(stage["n"] == 4 for stage in report["stages"].values())
    assert isinstance(report["loop_lag"]["samples"], int)  # read from relay's /metrics
    # the collector's passes per generation while the turns were measured (young, middle, full)
    assert len(report["gc_passes"]) == 3 and all(n >= 0 for n in report["gc_passes"])
    assert any(x.startswith("garbage collections during the measured phase") for x in printed)
    # --console 1: an owner refreshed the live list (both calls live) and followed the first
    # call's transcript, where both of its measured prompts showed up
    console = report["console"]
    assert console["viewers"] == 1 and console["errors"] == []
    assert console["refreshes"] >= 1 and console["listed_max"] == 2
    assert console["words_seen"] == 2 and console["lines"] >= 2
    assert any(x.startswith("console (1 owner(s) watching): ") for x in printed)
    # --upload: an editor loaded the document through the console's upload form
    uploaded = report["upload"]
    assert (uploaded["file"], uploaded["status"], uploaded["chunks"]) == (
        "warehouse-hours.md",
        "added",
        1,
    )
    assert uploaded["error"] is None and uploaded["seconds"] > 0
    assert any(x.startswith("upload (an editor, 1 s into the measured phase): ") for x in printed)


def test_two_workers_without_knowledge(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", "--calls", "4", "--turns", "2", "--token-delay", "0", "--think", "0"]

    assert main([*argv, "--workers", "2", "--no-knowledge", "--json", str(out)]) == 0

    report = json.loads(out.read_text())
    assert report["relay"]["n"] == 8 and report["errors"] == 0 and report["frames_lost"] == 0
    assert report["options"]["baseline_sampling"] == "steady" and report["llm_hop"]["n"] > 0
    assert report["model_late"]["n"] == 0  # no first-token delay: nothing to be late for
    assert report["paired"] is None
    assert report["retrieval"] == {}
    assert report["options"]["workers"] == 2 and report["options"]["knowledge"] is False
    assert report["memory_per_call_kb"] is not None
    # the server's CPU over the calls' lives, over both workers: 4 calls, 8 measured turns
    assert report["server_cpu_ms_per_call"] >= 2 * report["server_cpu_ms_per_turn"] - 0.01


def test_new_words_give_every_call_its_own_caller() -> None:
    callers = len(NAMES) * len(SUBURBS)
    said = {new_words(prompt, call) for call in range(callers) for prompt in PROMPTS[:2]}
    assert len(said) == 2 * callers  # no two calls say the same words
    assert new_words(PROMPTS[1], 0) == f"{NAMES[0]} from {SUBURBS[0]}. {PROMPTS[1]}"
    assert new_words(PROMPTS[1], callers) == new_words(PROMPTS[1], 0)  # then they come round


class _Probe:
    """Stands in for the LLM probe: records what each sample was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[int, str]] = []

    async def sample(self, history: Sequence[tuple[str, str]], prompt: str) -> float:
        self.asked.append((len(history), prompt))
        return 0.3


async def test_the_llm_hop_is_sampled_beside_a_share_of_the_turns() -> None:
    probe = _Probe()
    baselines = Baselines(cast(Any, None), cast(Any, probe), Expectations(4))

    baselines.at_turn(3)  # turn_share 0: no sample
    await baselines.settle()
    assert probe.asked == [] and baselines.llm_hop == []

    baselines.turn_share = 1.0
    for history in (1, 2, 7):
        baselines.at_turn(history)
    await baselines.settle()

    # each sample has the history length of its turn, and the prompt that length picks
    assert sorted(probe.asked) == [(n, PROMPTS[n % len(PROMPTS)]) for n in (1, 2, 7)]
    assert baselines.llm_hop == [0.3, 0.3, 0.3] and sorted(baselines.llm_history) == [1, 2, 7]

    random.seed(7)
    baselines.turn_share = 0.25
    for _ in range(400):
        baselines.at_turn(1)
    await baselines.settle()
    assert 60 <= len(probe.asked) - 3 <= 140  # about a quarter of 400


def test_lost_tokens_are_counted_from_the_first_missing_one() -> None:
    pieces = Expectations(6).pieces("Hello there, how are you?")
    text = "".join(pieces)

    assert tokens_lost(pieces, text) == 0
    assert tokens_lost(pieces, text[: -len(pieces[-1])]) == 1
    assert tokens_lost(pieces, "") == len(pieces)
    assert tokens_lost(pieces, pieces[0] + "".join(pieces[2:])) == len(pieces) - 1


def test_two_workers_recording_to_postgresql(postgres_server: str, tmp_path: Path) -> None:
    """--database-url: the server records to PostgreSQL, and the stages are read from there."""
    import asyncio

    import asyncpg

    from relay.testing import postgres

    url = asyncio.run(postgres.create_database(postgres_server))
    try:
        out = tmp_path / "bench.json"
        argv = ["bench", "--calls", "4", "--turns", "2", "--token-delay", "0", "--think", "0"]
        argv += ["--workers", "2", "--no-knowledge", "--database-url", url, "--json", str(out)]
        assert main(argv) == 0
        report = json.loads(out.read_text())
        assert report["relay"]["n"] == 8 and report["errors"] == 0 and report["frames_lost"] == 0
        assert list(report["stages"]) == list(STAGES)[1:]  # no knowledge: no passages stage
        assert all(stage["n"] == 8 for stage in report["stages"].values())

        async def answered() -> int:
            db = await asyncpg.connect(postgres.asyncpg_dsn(url))
            try:
                count: int = await db.fetchval(
                    "SELECT count(*) FROM turns WHERE role = 'assistant' AND first_frame_ms > 0"
                )
                return count
            finally:
                await db.close()

        # every turn: 4 calls x (1 unmeasured + 2 measured), and the warm-up call's 3
        assert asyncio.run(answered()) == 4 * 3 + 3
    finally:
        asyncio.run(postgres.drop_database(postgres_server, url))


def test_a_database_url_must_be_postgresql_and_for_a_started_server(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bench", "--database-url", "sqlite:///relay.db"]) == 2
    assert "--database-url must be a postgresql:// URL" in capsys.readouterr().err
    argv = ["bench", "--database-url", "postgresql://u:secret@db/relay", "--url", "ws://x/ws"]
    assert main(argv) == 2
    assert "--database-url is for the server the bench starts" in capsys.readouterr().err


def test_the_report_masks_the_database_password() -> None:
    from relay.testing.bench import BenchOptions, _reported

    options = BenchOptions(database_url="postgresql://relay:secret@db.internal:5432/relay")
    assert _reported(options)["database_url"] == "postgresql://relay:***@db.internal:5432/relay"
    assert _reported(BenchOptions())["database_url"] is None


async def test_the_stages_come_from_the_turns_each_turn_recorded(tmp_path: Path) -> None:
    import sqlite3

    database = tmp_path / "relay.db"
    with sqlite3.connect(database) as db:
        db.execute(
            "CREATE TABLE turns (role TEXT, retrieval_done_at REAL, llm_request_at REAL, "
            "first_token_at REAL, first_frame_at REAL, first_frame_ms REAL)"
        )
        db.executemany(
            "INSERT INTO turns VALUES (?, ?, ?, ?, ?, ?)",
            [
                # prompt at 100.000: passages 2 ms later, request 3 ms, token 303, frame 304
                ("assistant", 100.002, 100.003, 100.303, 100.304, 304.0),
                # no knowledge: no passages
                ("assistant", None, 200.001, 200.301, 200.303, 303.0),
                ("user", None, None, None, None, None),
                ("assistant", 900.0, 900.0, 900.0, 900.1, 100.0),  # outside the phase
            ],
        )
    stages = await stages_of(database, 50.0, 500.0, 2)

    def ms(stats: Stats) -> list[float | None]:
        return [round(v, 3) if v is not None else None for v in (stats.p50, stats.max)]

    assert list(stages) == list(STAGES)
    assert stages["prompt -> passages ready"].n == 1
    assert ms(stages["prompt -> passages ready"]) == [2.0, 2.0]
    assert ms(stages["prompt -> model request"]) == [2.0, 3.0]
    assert ms(stages["model request -> 1st token"]) == [300.0, 300.0]
    assert ms(stages["1st token -> 1st frame sent"]) == [1.5, 2.0]


def test_console_viewers_need_the_started_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--console", "1", "--url", "ws://127.0.0.1:9/ws"]) == 2
    assert "--console needs the server the bench starts" in capsys.readouterr().err
    assert main(["bench", "--console", "-1"]) == 2
    assert "--console must not be negative" in capsys.readouterr().err
    assert main(["bench", "--upload", str(tmp_path / "none.md")]) == 2
    assert "--upload: no such file: " in capsys.readouterr().err
    (tmp_path / "doc.md").write_text("# Doc\n")
    assert main(["bench", "--upload", str(tmp_path / "doc.md"), "--no-knowledge"]) == 2
    assert "--upload needs the server the bench starts, with knowledge on" in (
        capsys.readouterr().err
    )


def test_a_followed_call_matches_each_shown_prompt_to_when_it_was_said() -> None:
    followed = Followed("CA1")
    followed.said("Hello there", 10.0)
    followed.said("Is it insured?", 11.0)
    followed.said("Hello there", 12.0)
    assert followed.claim("Hello there", since=5.0) == 10.0  # the earliest one first
    assert followed.claim("Hello there", since=5.0) == 12.0
    assert followed.claim("Hello there", since=5.0) is None  # said twice, shown twice
    assert followed.claim("Is it insured?", since=11.5) is None  # said before the viewer looked
    assert followed.sent == []
