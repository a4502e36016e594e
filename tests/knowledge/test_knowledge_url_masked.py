"""A Chroma server URL may carry credentials (``http://user:password@host``): the messages that
name the server mask the password, since they reach logs, the CLI and the unauthenticated
``/readyz``."""

from __future__ import annotations

from pathlib import Path

import pytest

from knowledge import KnowledgeStore
from knowledge.backend import redact_url
from knowledge.errors import StoreUnavailable
from knowledge.testing import HashingEmbedder
from tests.knowledge.test_knowledge_server import free_port


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:ChromaSecretPW@db:8000", "http://u:***@db:8000"),
        ("https://u:pw@chroma.internal/api?x=1", "https://u:***@chroma.internal/api?x=1"),
        ("http://token@db:8000", "http://token@db:8000"),  # no password: nothing to mask
        ("http://u:p@ss@db:8000/a@b", "http://u:***@db:8000/a@b"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url_masks_only_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_an_unreachable_server_is_named_without_its_password(tmp_path: Path) -> None:
    url = f"http://u:ChromaSecretPW@127.0.0.1:{free_port()}"
    store = KnowledgeStore(url=url, path=tmp_path / "local", embedder=HashingEmbedder())
    with store, pytest.raises(StoreUnavailable) as caught:
        store.ping()
    message = str(caught.value)
    assert "ChromaSecretPW" not in message
    assert message.startswith(f"cannot open vector store at {redact_url(url)}: ")
