"""The benchmark script still runs (tiny sizes; the real figures come from a full run)."""

from __future__ import annotations

import pytest

from knowledge.bench import main


@pytest.mark.slow
def test_bench_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--chunks", "20", "--sizes", "50", "120", "--queries", "5"]) == 0
    out = capsys.readouterr().out
    assert "chunks/s" in out and "p95" in out
    assert "   120 chunks" in out
