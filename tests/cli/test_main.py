"""The ``relay`` command as a user runs it: a separate process, real stdin and stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(
    args: list[str],
    tmp_path: Path,
    *,
    stdin: str = "",
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RELAY_", "OPENAI_", "TWILIO_", "DATABASE_URL", "CHROMA_URL"))
    }
    environ.update(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'relay.db'}",
            "RELAY_LOG_LEVEL": "error",
            **(env or {}),
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "relay", *args], input=stdin, capture_output=True, text=True,
        cwd=REPO, env=environ, timeout=timeout, check=False,
    )  # fmt: skip


def test_relay_call_talks_to_the_agent_in_process(tmp_path: Path) -> None:
    done = run(
        ["call", "--fake-llm"],
        tmp_path,
        stdin="hello there\n/dtmf 9\n/quit\n",
        env={"RELAY_KNOWLEDGE": "false"},
    )

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Connected to Keystone Piano Movers (piano-removals)")
    assert "agent> You said: hello there. What else can I do for you?" in lines
    assert (
        "agent> To speak with our office, press zero. For a quote, press one, or just tell me about your piano."
        in lines
    )


def test_python_dash_m_relay_is_the_relay_command_without_warnings(tmp_path: Path) -> None:
    done = run(["--help"], tmp_path)
    assert done.returncode == 0
    assert done.stdout.startswith("usage: relay ")
    assert done.stderr == ""  # runpy's "found in sys.modules" warning would land here


def test_a_missing_setting_fails_at_start_naming_it(tmp_path: Path) -> None:
    done = run(["serve"], tmp_path, env={"RELAY_PORT": "not-a-port"})
    assert done.returncode == 2
    assert "RELAY_PORT" in done.stderr

    no_key = run(["serve"], tmp_path)
    assert no_key.returncode == 2
    assert "OPENAI_API_KEY is not set" in no_key.stderr


def test_a_bad_setting_or_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    # --fake-llm: the settings are checked before the scripted model starts (whose shutdown
    # lines used to come first).
    agent = run(["serve", "--fake-llm"], tmp_path, env={"RELAY_DEFAULT_AGENT": "nosuch"})
    assert agent.returncode == 2
    assert agent.stderr == (
        "relay: configuration error: RELAY_DEFAULT_AGENT: no agent named 'nosuch' "
        "(have: car-service, piano-removals, reminders)\n"
    )

    closed = "postgresql+asyncpg://relay:s3cret@127.0.0.1:9/relay"
    line = (
        "relay: cannot connect to the database (DATABASE_URL "
        "postgresql+asyncpg://relay:***@127.0.0.1:9/relay): ConnectionRefusedError: "
        "[Errno 111] Connect call failed ('127.0.0.1', 9)\n"
    )
    for args in (["serve", "--fake-llm"], ["sessions", "list"]):
        done = run(args, tmp_path, env={"DATABASE_URL": closed, "RELAY_KNOWLEDGE": "false"})
        assert (done.returncode, done.stderr) == (1, line), args


def test_relay_fake_llm_logs_through_relays_logging(tmp_path: Path) -> None:
    """``relay fake-llm`` honours RELAY_LOG_FORMAT like ``relay serve``: with ``json`` even
    uvicorn's own start-up lines are JSON objects, not uvicorn's plain text."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    environ.update({"RELAY_LOG_FORMAT": "json", "RELAY_LOG_LEVEL": "info"})
    lines = []
    with subprocess.Popen(
        [sys.executable, "-m", "relay", "fake-llm", "--port", "0"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO, env=environ,
    ) as process:  # fmt: skip
        try:
            assert process.stderr is not None
            for line in process.stderr:
                lines.append(line)
                if "startup complete" in line:
                    break
        finally:
            process.terminate()
    assert lines, "relay fake-llm wrote nothing"
    records = [json.loads(line) for line in lines]
    assert records[-1]["event"] == "Application startup complete."
    assert {record["logger"] for record in records} == {"uvicorn.error"}


def test_relay_agents_check_reports_each_profile_or_the_first_problem(tmp_path: Path) -> None:
    done = run(["agents", "check"], tmp_path)  # no model key, no database needed
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [
        "ok  car-service  (prompts/car-service.toml): numbers +61390005678; 12 tools; "
        "knowledge car-service",
        "ok  piano-removals  (prompts/piano-removals.toml): default; numbers +61390001234; "
        "10 tools; knowledge piano-removals",
        "ok  reminders  (prompts/reminders.toml): no numbers; 7 tools",
        "3 agent profile(s) in prompts: ok",
    ]

    prompts = tmp_path / "prompts"
    prompts.mkdir()
    shipped = (REPO / "prompts" / "piano-removals.toml").read_text(encoding="utf-8")
    (prompts / "piano-removals.toml").write_text(
        shipped.replace('"take_message"', '"take_mesage"', 1), encoding="utf-8"
    )
    bad = run(["agents", "check"], tmp_path, env={"RELAY_PROMPTS_DIR": str(prompts)})
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr.startswith(
        f"relay: configuration error: {prompts / 'piano-removals.toml'}: invalid agent profile: "
        "tools: unknown tool 'take_mesage' (did you mean take_message?) (known: "
    )


NO_KEY = (
    "relay: configuration error: OPENAI_API_KEY is not set. Set it, or point OPENAI_BASE_URL at "
    "another OpenAI-compatible server (vLLM, Ollama, llama.cpp). "
)
FAKE_LLM = "start `relay fake-llm --port 8081` and set OPENAI_BASE_URL=http://127.0.0.1:8081/v1."


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (
            ["serve"],
            "To try relay offline, start it with `relay serve --fake-llm` (the built-in scripted model).",
        ),
        (["call"], "To talk to the built-in scripted model instead, run `relay call --fake-llm`."),
        (
            ["replay", "--mode", "live", str(REPO / "tests" / "sessions" / "handoff.jsonl")],
            f"To replay live against the scripted model, {FAKE_LLM}",
        ),
        (["eval"], f"To run the scenarios against the scripted model, {FAKE_LLM}"),
    ],
    ids=["serve", "call", "replay-live", "eval"],
)
def test_without_a_key_each_command_says_how_to_run_it_offline(
    args: list[str], hint: str, tmp_path: Path
) -> None:
    done = run(args, tmp_path, stdin="/quit\n", env={"RELAY_KNOWLEDGE": "false"})

    assert done.returncode == 2
    assert done.stderr == NO_KEY + hint + "\n"


@pytest.mark.slow
def test_knowledge_commands_for_content_editors(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "insurance.md").write_text(
        "# Insurance\n\nEvery move is insured up to $50,000 per piano.\n", encoding="utf-8"
    )
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    env = {"RELAY_DATA_DIR": str(tmp_path / "data")}
    (tmp_path / "data").mkdir()
    for business in ("piano-removals", "car-service"):
        (tmp_path / "data" / business).symlink_to(REPO / "data" / business)

    added = run(["knowledge", "add", str(docs), "-c", "piano-removals"], tmp_path, env=env)
    assert added.returncode == 1, added.stderr  # one file failed, the other loaded
    assert "1 added, 0 updated, 0 unchanged, 0 deleted, 1 failed" in added.stdout
    assert "broken.pdf" in added.stderr

    again = run(
        ["knowledge", "add", str(docs / "insurance.md"), "-c", "piano-removals"], tmp_path, env=env
    )
    assert "0 added, 0 updated, 1 unchanged" in again.stdout

    listed = run(["knowledge", "list", "-c", "piano-removals"], tmp_path, env=env)
    assert "insurance.md" in listed.stdout
    found = run(
        ["knowledge", "search", "is my piano insured", "-c", "piano-removals"], tmp_path, env=env
    )
    assert found.returncode == 0 and "insurance.md (v1)" in found.stdout
    removed = run(
        ["knowledge", "remove", "insurance.md", "-c", "piano-removals"], tmp_path, env=env
    )
    assert removed.returncode == 0
    assert (
        "has no documents"
        in run(["knowledge", "list", "-c", "piano-removals"], tmp_path, env=env).stdout
    )
