"""``relay knowledge`` names an unreachable Chroma server without the password its
``CHROMA_URL`` may carry."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.cli.main import main
from tests.knowledge.test_knowledge_server import free_port

REPO = Path(__file__).resolve().parents[2]


def test_an_unreachable_chroma_server_is_named_without_its_password(
    clean_env: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    (tmp_path / "data").mkdir()  # a data directory that does not exist is refused first
    monkeypatch.setenv("RELAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RELAY_PROMPTS_DIR", str(REPO / "prompts"))
    monkeypatch.setenv("CHROMA_URL", f"http://u:ChromaSecretPW@127.0.0.1:{port}")

    assert main(["knowledge", "list"]) == 1

    out, err = capsys.readouterr()
    assert "ChromaSecretPW" not in out + err
    assert err.startswith(
        f"relay knowledge: cannot reach the Chroma server at http://u:***@127.0.0.1:{port} "
        f"(CHROMA_URL): cannot open vector store at http://u:***@127.0.0.1:{port}: "
    )
