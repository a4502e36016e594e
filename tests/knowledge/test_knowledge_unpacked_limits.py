"""Files that unpack to far more than their size ("zip bombs") are refused before they are
read: a DOCX by its package's declared sizes, a PDF by its unpacked page content."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import pytest

from knowledge.errors import DocumentError
from knowledge.loaders import load_document
from knowledge.loaders.pdf import MAX_CONTENT_BYTES
from knowledge.loaders.word import MAX_UNPACKED_BYTES, MAX_XML_BYTES
from tests.knowledge.conftest import Builder

# -- DOCX --------------------------------------------------------------------------------------


def repacked(docx: bytes, parts: dict[str, bytes]) -> bytes:
    """``docx`` with some parts replaced or added, deflated as Word does."""
    source = zipfile.ZipFile(io.BytesIO(docx))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in source.namelist():
            archive.writestr(name, parts.pop(name) if name in parts else source.read(name))
        for name, data in parts.items():
            archive.writestr(name, data)
    return out.getvalue()


def empty_paragraphs(docx: bytes, size: int) -> bytes:
    """``word/document.xml`` of ``docx`` with its body made of about ``size`` bytes of empty
    paragraphs: the bomb an editor uploaded, a few kB unpacking to megabytes."""
    xml = zipfile.ZipFile(io.BytesIO(docx)).read("word/document.xml")
    head = xml[: xml.index(b"<w:body>") + len(b"<w:body>")]
    return head + b"<w:p/>" * (size // 6) + b"</w:body></w:document>"


def test_a_docx_whose_xml_unpacks_over_the_limit_is_refused_unread(make_docx: Builder) -> None:
    docx = make_docx([("p", "Storage is heated.")])
    bomb = repacked(docx, {"word/document.xml": empty_paragraphs(docx, MAX_XML_BYTES)})
    assert len(bomb) < 100_000
    xml = sum(
        entry.file_size
        for entry in zipfile.ZipFile(io.BytesIO(bomb)).infolist()
        if entry.filename.endswith((".xml", ".rels"))
    )
    assert xml > MAX_XML_BYTES
    with pytest.raises(DocumentError) as caught:
        load_document("bomb.docx", bomb)
    # parsed, it would have been "no text found"
    assert caught.value.reason == (
        f"DOCX unpacks to {xml / 1_000_000:.1f} MB of XML, over the limit of 10.0 MB"
    )


def test_a_docx_whose_parts_unpack_over_the_limit_is_refused(make_docx: Builder) -> None:
    docx = make_docx([("p", "Storage is heated.")])
    bomb = repacked(docx, {"word/media/image1.bmp": bytes(MAX_UNPACKED_BYTES)})
    total = sum(e.file_size for e in zipfile.ZipFile(io.BytesIO(bomb)).infolist())
    with pytest.raises(DocumentError) as caught:
        load_document("pictures.docx", bomb)
    assert caught.value.reason == (
        f"DOCX unpacks to {total / 1_000_000:.1f} MB, over the limit of 64.0 MB"
    )


def test_a_docx_just_under_the_limits_loads(make_docx: Builder) -> None:
    docx = make_docx([("p", "Storage is heated.")])
    entries = zipfile.ZipFile(io.BytesIO(docx)).infolist()
    xml = sum(e.file_size for e in entries if e.filename.endswith((".xml", ".rels")))
    filler = MAX_XML_BYTES - xml  # a part the package does not use: counted, never parsed
    pictures = MAX_UNPACKED_BYTES - sum(e.file_size for e in entries) - filler
    big = repacked(
        docx,
        {
            "customXml/item9.xml": b"<a>" + b" " * (filler - 7) + b"</a>",
            "word/media/image1.bmp": bytes(pictures),
        },
    )
    total = sum(e.file_size for e in zipfile.ZipFile(io.BytesIO(big)).infolist())
    assert total == MAX_UNPACKED_BYTES
    loaded = load_document("big.docx", big)
    assert [s.text for s in loaded.sections] == ["Storage is heated."]
    with pytest.raises(DocumentError, match="of XML, over the limit"):
        load_document(
            "bigger.docx",
            repacked(
                big,
                {
                    "customXml/item9.xml": b" " * (filler + 1),
                    "word/media/image1.bmp": bytes(pictures - 1),
                },
            ),
        )


def test_a_docx_that_declares_smaller_parts_than_it_holds_is_corrupt(make_docx: Builder) -> None:
    """The check trusts the declared sizes because zipfile holds every part to its own."""
    docx = make_docx([("p", "Storage is heated.")])
    bomb = bytearray(repacked(docx, {"word/document.xml": empty_paragraphs(docx, 2_000_000)}))
    # the central directory's record of the part: its uncompressed size is at offset 24
    at = bomb.find(b"PK\x01\x02")
    while bomb[at + 46 : at + 46 + len(b"word/document.xml")] != b"word/document.xml":
        at = bomb.find(b"PK\x01\x02", at + 4)
    struct.pack_into("<I", bomb, at + 24, 1_000)
    assert zipfile.ZipFile(io.BytesIO(bomb)).getinfo("word/document.xml").file_size == 1_000
    with pytest.raises(DocumentError, match=r"corrupt DOCX .*Bad CRC-32"):
        load_document("liar.docx", bytes(bomb))


# -- PDF ---------------------------------------------------------------------------------------


def pdf(pages: list[bytes], forms: dict[str, bytes] | None = None) -> bytes:
    """A real PDF whose pages draw ``pages`` (content streams, FlateDecode), with ``forms``
    (form XObjects by name) in every page's resources."""
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    font = len(objects) + 1
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    xobjects = []
    for name, content in (forms or {}).items():
        data = zlib.compress(content, 9)
        header = (
            f"<< /Type /XObject /Subtype /Form /BBox [0 0 612 792] /Length {len(data)} "
            f"/Resources << /Font << /F1 {font} 0 R >> >> "
        )
        objects.append(
            header.encode() + b"/Filter /FlateDecode >>\nstream\n" + data + b"\nendstream"
        )
        xobjects.append(f"/{name} {len(objects)} 0 R")
    kids = []
    for content in pages:
        data = zlib.compress(content, 9)
        objects.append(
            f"<< /Length {len(data)} /Filter /FlateDecode >>\nstream\n".encode()
            + data
            + b"\nendstream"
        )
        resources = f"/Font << /F1 {font} 0 R >> /XObject << {' '.join(xobjects)} >>"
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << {resources} >> "
            f"/Contents {len(objects)} 0 R >>".encode()
        )
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>".encode()
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    out.write(b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets))
    out.write(
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out.getvalue()


TEXT = b"BT /F1 11 Tf 72 740 Td (Storage is heated.) Tj ET\n"


def test_a_pdf_whose_page_content_unpacks_over_the_limit_is_refused() -> None:
    page = TEXT + b" " * (MAX_CONTENT_BYTES * 2 // 3)  # each page under pypdf's own limit
    bomb = pdf([page, page, page])
    assert len(bomb) < 100_000
    with pytest.raises(DocumentError) as caught:
        load_document("bomb.pdf", bomb)
    # refused at the second page, before the third is unpacked
    assert caught.value.reason == (
        f"PDF content unpacks to at least {2 * len(page) / 1_000_000:.1f} MB, over the limit "
        "of 20.0 MB"
    )


def test_the_forms_a_page_draws_count_too() -> None:
    form = TEXT + b" " * MAX_CONTENT_BYTES
    bomb = pdf([b"/Fm1 Do\n" + TEXT], {"Fm1": form})
    with pytest.raises(DocumentError, match=r"PDF content unpacks to at least 20\.0 MB"):
        load_document("forms.pdf", bomb)


def test_a_pdf_under_the_limit_loads_with_its_forms_text() -> None:
    form = b"BT /F1 11 Tf 72 700 Td (Pianos are insured.) Tj ET\n"
    document = load_document("fine.pdf", pdf([b"/Fm1 Do\n" + TEXT, TEXT], {"Fm1": form}))
    text = " ".join(s.text for s in document.sections)
    assert "Storage is heated." in text
    assert "Pianos are insured." in text
