"""The benchmark script still runs (tiny sizes; the real figures come from a full run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from knowledge import LocalEmbedder
from knowledge.bench import main

MOVERS = Path(__file__).parent.parent / "fixtures" / "knowledge" / "movers"


@pytest.mark.slow
def test_bench_runs(
    capsys: pytest.CaptureFixture[str], model_cache: Path, local_embedder: LocalEmbedder
) -> None:
    # local_embedder has derived the model into model_cache already
    argv = ["--chunks", "20", "--sizes", "50", "120", "--queries", "5"]
    assert main([*argv, "--docs", str(MOVERS), "--cache-dir", str(model_cache)]) == 0
    out = capsys.readouterr().out
    assert "chunks/s" in out and "p95" in out
    assert "   120 chunks" in out
    assert "shipped docs (movers)" in out and "(cached model)" in out
