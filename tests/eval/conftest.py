"""What the eval tests share."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def eval_env(clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The piano agent's profile in a scratch prompts folder (returned), the shipped data, no
    knowledge, a scratch database: what ``relay eval`` runs against."""
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    shutil.copy(REPO / "prompts" / "piano-removals.toml", prompts)
    monkeypatch.setenv("RELAY_PROMPTS_DIR", str(prompts))
    monkeypatch.setenv("RELAY_DATA_DIR", str(REPO / "data"))
    monkeypatch.setenv("RELAY_KNOWLEDGE", "false")
    monkeypatch.setenv("RELAY_LOG_LEVEL", "error")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'relay.db'}")
    return prompts
