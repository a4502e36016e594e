"""Each loader on a real file of its format, and every way a file can be bad."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

import pytest

from knowledge.encoding import decode_text
from knowledge.errors import DocumentError
from knowledge.loaders import load_document
from knowledge.loaders.pdf import pypdf_messages
from knowledge.models import Section

Builder = Callable[..., bytes]


def sections(filename: str, data: bytes) -> list[Section]:
    return list(load_document(filename, data).sections)


# -- Markdown and text -------------------------------------------------------------------------


def test_markdown_heading_paths_and_inline_markup() -> None:
    data = b"""---
title: Piano moving guide
---
# Moving pianos

We move **upright** and [grand pianos](https://example.com/grand).

## Stairs
Each flight of stairs adds a fee.

### Spiral stairs
Spiral stairs need a survey first.

## Insurance
Cover is included.

Setext heading
==============
Under a setext heading.

```
# not a heading inside code
```
"""
    document = load_document("guide.md", data)
    assert document.title == "Piano moving guide"
    assert [(s.heading_path, s.text) for s in document.sections] == [
        (("Moving pianos",), "We move upright and grand pianos."),
        (("Moving pianos", "Stairs"), "Each flight of stairs adds a fee."),
        (("Moving pianos", "Stairs", "Spiral stairs"), "Spiral stairs need a survey first."),
        (("Moving pianos", "Insurance"), "Cover is included."),
        (("Setext heading",), "Under a setext heading.\n\n# not a heading inside code"),
    ]


def test_markdown_tables_lists_and_snake_case() -> None:
    data = b"# Prices\n\n| Piano | Price |\n|---|---:|\n| Upright | 250 |\n\n- one_two_three\n- *four*\n"
    (section,) = sections("prices.md", data)
    assert section.text == "Piano | Price\nUpright | 250\n\n- one_two_three\n- four"


def test_markdown_title_falls_back_to_first_h1_then_file_name() -> None:
    assert load_document("a.md", b"# Storage\ntext").title == "Storage"
    assert load_document("piano-storage_rates.md", b"just text").title == "Piano storage rates"


def test_plain_text_paragraphs() -> None:
    document = load_document("notes.txt", b"First line\nsecond line\n\n\n  Second   paragraph  \n")
    assert document.title == "Notes"
    assert [s.text for s in document.sections] == ["First line\nsecond line\n\nSecond paragraph"]


# -- encodings ---------------------------------------------------------------------------------


def test_utf8_with_bom_and_crlf() -> None:
    assert decode_text("a.txt", "\ufeffCafé\r\nline".encode()) == "Café\nline"


def test_utf16_with_bom() -> None:
    assert decode_text("a.txt", "Grand piano £300".encode("utf-16")) == "Grand piano £300"


def test_cp1252_fallback_for_windows_smart_quotes() -> None:
    text = "We\u2019re \u201ccareful\u201d \u2013 always \u20ac5"
    assert decode_text("a.txt", text.encode("cp1252")) == text


def test_latin1_fallback() -> None:
    # 0x81 is undefined in cp1252 but a (control) character in latin-1: rejected there too
    with pytest.raises(DocumentError, match="not decodable"):
        decode_text("a.txt", b"abc \x81 def")
    assert decode_text("a.txt", "Müller".encode("latin-1")) == "Müller"


@pytest.mark.parametrize(
    "data", [b"\x00\x01\x02binary", bytes(range(256)), b"\x8d\x8f\x90 \x9d\x81"]
)
def test_undecodable_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(DocumentError) as info:
        load_document("notes.txt", data)
    assert info.value.filename == "notes.txt"


# -- HTML --------------------------------------------------------------------------------------


PAGE = b"""<!doctype html>
<html><head><title>Storage | Keys Piano Movers</title>
<style>body { color: red }</style><script>trackVisitor("script text")</script></head>
<body>
<header><a href="/">Keys Piano Movers</a> site banner</header>
<nav><ul><li><a href="/prices">Prices</a></li><li>Menu item</li></ul></nav>
<div class="content">
  <h1>Piano storage</h1>
  <p>We keep pianos in a <b>heated</b>, dry warehouse.<br>Visits by appointment.</p>
  <h2>Rates</h2>
  <ul><li>Upright: 40 a month</li><li>Grand: 60 a month</li></ul>
  <table><tr><th>Term</th><th>Discount</th></tr><tr><td>6 months</td><td>10%</td></tr></table>
  <aside>Related: our blog</aside>
  <div hidden>hidden text</div>
  <script>more("script")</script><noscript>enable js</noscript>
  <!-- a comment -->
</div>
<footer>Copyright footer text</footer>
</body></html>"""


def test_html_keeps_main_text_and_headings_drops_chrome() -> None:
    document = load_document("storage.html", PAGE)
    assert document.title == "Storage | Keys Piano Movers"
    assert [(s.heading_path, s.text) for s in document.sections] == [
        (("Piano storage",), "We keep pianos in a heated, dry warehouse.\nVisits by appointment."),
        (
            ("Piano storage", "Rates"),
            "- Upright: 40 a month\n\n- Grand: 60 a month\n\nTerm | Discount\n6 months | 10%",
        ),
    ]
    text = " ".join(s.text for s in document.sections)
    for dropped in ("script", "color", "banner", "Menu", "blog", "hidden", "footer", "comment"):
        assert dropped not in text


def test_html_main_element_wins_and_keeps_its_own_header() -> None:
    page = b"""<html><body><div>sidebar junk</div>
    <main><header><h1>Areas we cover</h1></header><p>All of Kent.</p></main></body></html>"""
    document = load_document("areas.htm", page)
    assert [(s.heading_path, s.text) for s in document.sections] == [
        (("Areas we cover",), "All of Kent.")
    ]


def test_html_without_tags_is_text() -> None:
    assert sections("x.html", b"just words")[0].text == "just words"


# -- PDF ---------------------------------------------------------------------------------------


def test_pdf_text_from_every_page(make_pdf: Builder) -> None:
    data = make_pdf(
        [
            ["Piano insurance", "Every move is insured up to 50,000 pounds (new-for-old)."],
            ["Claims must be made within 14 days of the move."],
        ],
        title="Insurance policy",
    )
    document = load_document("insurance.pdf", data)
    assert document.title == "Insurance policy"
    text = document.sections[0].text
    assert "Piano insurance" in text
    assert "insured up to 50,000 pounds (new-for-old)." in text
    assert "Claims must be made within 14 days" in text


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"this is not a pdf at all", "no %PDF header"),
        (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog", "corrupt PDF"),
    ],
)
def test_corrupt_pdf(data: bytes, reason: str) -> None:
    with pytest.raises(DocumentError, match=reason):
        load_document("broken.pdf", data)


def test_truncated_pdf(make_pdf: Builder) -> None:
    with pytest.raises(DocumentError, match="corrupt PDF"):
        load_document("broken.pdf", make_pdf([["Truncated document text"]])[:200])


def test_pdf_without_text_layer(make_pdf: Builder) -> None:
    with pytest.raises(DocumentError, match="no text layer"):
        load_document("scan.pdf", make_pdf([[]]))


def test_a_truncated_pdf_names_what_pypdf_warned_and_logs_nothing(
    make_pdf: Builder, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """pypdf logs "EOF marker not found" for a cut-off file: that belongs to the file's
    reason, not to a log line of its own (which landed in ``relay knowledge add``'s progress)."""
    data = make_pdf([["Truncated document text"]])
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DocumentError) as failed:
        load_document("broken.pdf", data[: len(data) * 2 // 3])
    assert failed.value.reason.startswith("corrupt PDF (EOF marker not found; ")
    assert [r for r in caplog.records if r.name.startswith("pypdf")] == []
    out, err = capfd.readouterr()
    assert "EOF marker" not in out + err
    pypdf_logger = logging.getLogger("pypdf")
    assert pypdf_logger.propagate and pypdf_logger.handlers == []  # as it was


def test_a_pdf_pypdf_repairs_loads_and_its_warnings_are_logged_once_as_ours(
    make_pdf: Builder, caplog: pytest.LogCaptureFixture
) -> None:
    data = make_pdf([["Every move is insured."]]).replace(b"startxref\n", b"startxref\n1")
    caplog.set_level(logging.DEBUG)
    document = load_document("insurance.pdf", data)
    assert "Every move is insured." in document.sections[0].text
    assert [r for r in caplog.records if r.name.startswith("pypdf")] == []
    assert [r.getMessage() for r in caplog.records if r.name == "knowledge.loaders.pdf"] == [
        "pdf_repaired file=insurance.pdf warnings=incorrect startxref pointer(2); "
        "parsing for Object Streams"
    ]


def test_pypdf_messages_are_kept_per_thread_and_logged_again_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each thread loading a PDF keeps its own file's messages; once none is loading, pypdf
    logs as before."""
    caplog.set_level(logging.WARNING)  # the root logger's default
    pypdf_logger = logging.getLogger("pypdf._reader")
    inside, go_on = threading.Event(), threading.Event()
    other: list[str] = []

    def load_elsewhere() -> None:
        with pypdf_messages() as kept:
            pypdf_logger.warning("the other file's warning")
            inside.set()
            go_on.wait(10)
        other.extend(kept)

    thread = threading.Thread(target=load_elsewhere)
    thread.start()
    assert inside.wait(10)
    with pypdf_messages() as mine:
        pypdf_logger.warning("this file's warning %d", 1)
    go_on.set()
    thread.join(10)
    assert (mine, other) == (["this file's warning 1"], ["the other file's warning"])
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    try:
        pypdf_logger.warning("no file loading")
    finally:
        logging.getLogger().removeHandler(handler)
    assert seen == ["no file loading"]


def test_pypdf_messages_are_kept_whatever_the_process_log_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``RELAY_LOG_LEVEL=error`` puts the root logger at ERROR, which pypdf's loggers inherit:
    until 8 December its warnings then never reached the file's reason ("EOF marker not
    found" was missing from a corrupt PDF's), and the level is given back after."""
    caplog.set_level(logging.ERROR)
    data = b"%PDF-1.4\n" + b"\x00" * 64
    with pytest.raises(DocumentError) as failed:
        load_document("leaflet.pdf", data)
    assert failed.value.reason.startswith("corrupt PDF (EOF marker not found; "), (
        failed.value.reason
    )
    assert logging.getLogger("pypdf").level == logging.NOTSET
    assert [r for r in caplog.records if r.name.startswith("pypdf")] == []


# -- DOCX --------------------------------------------------------------------------------------


def test_docx_headings_lists_and_tables(make_docx: Builder) -> None:
    data = make_docx(
        [
            ("h1", "Cancellation"),
            ("p", "You can cancel free of charge up to 48 hours before the move."),
            ("h2", "Late cancellation"),
            ("list", "Within 48 hours: half the quote."),
            ("table", [["Notice", "Fee"], ["24 hours", "100%"]]),
            ("h1", "Rescheduling"),
            ("p", "Rescheduling is free once."),
        ],
        title="Cancellation policy",
    )
    document = load_document("cancellation.docx", data)
    assert document.title == "Cancellation policy"
    assert [(s.heading_path, s.text) for s in document.sections] == [
        (("Cancellation",), "You can cancel free of charge up to 48 hours before the move."),
        (
            ("Cancellation", "Late cancellation"),
            "- Within 48 hours: half the quote.\n\nNotice | Fee\n24 hours | 100%",
        ),
        (("Rescheduling",), "Rescheduling is free once."),
    ]


@pytest.mark.parametrize("data", [b"PK\x03\x04 not really a zip", b"plain text, not docx"])
def test_corrupt_docx(data: bytes) -> None:
    with pytest.raises(DocumentError, match="corrupt DOCX"):
        load_document("broken.docx", data)


def test_docx_that_is_a_zip_of_something_else() -> None:
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("hello.txt", "not a word document")
    with pytest.raises(DocumentError):
        load_document("other.docx", out.getvalue())


# -- FAQ tables --------------------------------------------------------------------------------


def test_faq_csv_each_pair_is_a_section() -> None:
    data = b'Q,A,Category\nDo you move grand pianos?,"Yes, every size.",Pianos\n,skipped,\nHow early should I book?,Two weeks ahead.,\n'
    assert sections("faq.csv", data) == [
        Section(("Pianos",), "Q: Do you move grand pianos?\nA: Yes, every size."),
        Section((), "Q: How early should I book?\nA: Two weeks ahead."),
    ]


def test_faq_csv_semicolons_and_any_case() -> None:
    data = "QUESTION;Answer\nIs storage heated?;Yes \u2013 always.\n".encode("cp1252")
    expected = Section((), "Q: Is storage heated?\nA: Yes \u2013 always.")
    assert sections("faq.csv", data) == [expected]


def test_faq_csv_without_question_column() -> None:
    with pytest.raises(DocumentError, match="question and an answer column"):
        load_document("faq.csv", b"name,price\nupright,250\n")


def test_faq_json_list_and_wrapped() -> None:
    items = [{"Q": "Do you work weekends?", "A": "Saturdays only."}]
    expected = [Section((), "Q: Do you work weekends?\nA: Saturdays only.")]
    assert sections("faq.json", json.dumps(items).encode()) == expected
    wrapped = {"faqs": [{"question": "Do you work weekends?", "answer": "Saturdays only."}]}
    assert sections("faq.json", json.dumps(wrapped).encode()) == expected


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"{not json", "invalid JSON"), (b'{"x": 1}', "list of question/answer objects")],
)
def test_faq_json_errors(data: bytes, reason: str) -> None:
    with pytest.raises(DocumentError, match=reason):
        load_document("faq.json", data)


# -- the general cases -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["setup.exe", "archive.zip", "README", "old.doc"])
def test_unsupported_types(name: str) -> None:
    with pytest.raises(DocumentError, match="unsupported file type"):
        load_document(name, b"MZ\x90\x00")


@pytest.mark.parametrize("name", ["empty.md", "empty.pdf", "empty.csv"])
def test_empty_files(name: str) -> None:
    with pytest.raises(DocumentError, match="empty file"):
        load_document(name, b"  \n\t ")


def test_a_file_of_headings_alone_is_text(make_docx: Builder) -> None:
    """Headings are text: an outline loads as one section of them."""
    expected = [Section((), "One\n\nTwo\n\nThree")]
    assert sections("headings.md", b"# One\n## Two\n\n### Three\n") == expected
    assert sections("headings.html", b"<h1>One</h1><h2>Two</h2><h3>Three</h3>") == expected
    docx = make_docx([("h1", "One"), ("h2", "Two"), ("h3", "Three")])
    assert sections("headings.docx", docx) == expected
    assert load_document("headings.md", b"# One\n## Two\n").title == "One"


def test_a_file_of_blank_headings_has_no_text() -> None:
    with pytest.raises(DocumentError, match="no text"):
        load_document("headings.md", b"#\n##   \n")
