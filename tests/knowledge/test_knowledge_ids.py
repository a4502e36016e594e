"""Document ids, upload names and chunk ids."""

from __future__ import annotations

import pytest

from knowledge.errors import DocumentError
from knowledge.ids import chunk_id, document_id, safe_relative_name
from knowledge.models import FileResult, IngestReport


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("pricing.md", "pricing.md"),
        ("Pricing.MD", "pricing.md"),
        ("docs\\FAQ\\Prices.csv", "docs/faq/prices.csv"),
        ("./docs//a.md", "docs/a.md"),
        ("Cafe\u0301.md", "caf\u00e9.md"),  # NFD and NFC spell the same id
    ],
)
def test_document_id_is_normalised(name: str, expected: str) -> None:
    assert document_id(name) == expected


def test_safe_relative_name_keeps_case_and_folders() -> None:
    assert safe_relative_name(" FAQ\\Prices.csv ") == "FAQ/Prices.csv"
    assert safe_relative_name("./a/./b.md") == "a/b.md"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../secret.md", "path traversal"),
        ("a/../../b.md", "path traversal"),
        ("/etc/passwd.md", "path traversal"),
        ("C:\\x.md", "path traversal"),
        ("c:x.md", "path traversal"),
        ("\\\\server\\share\\x.md", "path traversal"),
        ("", "empty"),
        ("./", "empty"),
        ("bad\nname.md", "control characters"),
    ],
)
def test_unsafe_upload_names(name: str, reason: str) -> None:
    with pytest.raises(DocumentError, match=reason):
        safe_relative_name(name)


def test_chunk_ids() -> None:
    first = chunk_id("faq.md", "Pricing\nText")
    assert first.startswith("faq.md#") and len(first) == len("faq.md#") + 16
    assert chunk_id("faq.md", "Pricing\nText") == first
    assert chunk_id("faq.md", "Pricing\nText", 1) == first + ".1"
    assert chunk_id("other.md", "Pricing\nText") != first


def test_report_totals() -> None:
    report = IngestReport(
        (
            FileResult("a.md", "a.md", "added", 3),
            FileResult("b.md", "b.md", "updated", 2),
            FileResult("c.md", "c.md", "unchanged", 5),
            FileResult("d.exe", "d.exe", "failed", error="unsupported"),
            FileResult("e.md", "e.md", "deleted", 1),
        ),
        seconds=1.5,
    )
    assert (report.added, report.updated, report.unchanged, report.failed, report.deleted) == (
        1, 1, 1, 1, 1,
    )  # fmt: skip
    assert report.chunks_written == 5 and not report.ok
    assert report.summary() == (
        "1 added, 1 updated, 1 unchanged, 1 deleted, 1 failed; 5 chunks written in 1.50s"
    )
