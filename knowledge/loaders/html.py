"""HTML: the main text of a page, with its headings; navigation and page chrome dropped."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from knowledge.encoding import decode_text
from knowledge.loaders.sections import SectionBuilder, title_from_filename
from knowledge.models import Document

if TYPE_CHECKING:
    from bs4.element import Tag

_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
# Never content: code, styling, page chrome, form controls, embedded media.
_DROPPED = frozenset(
    {
        "script", "style", "noscript", "template", "nav", "aside", "iframe", "svg", "canvas",
        "object", "embed", "form", "button", "select", "option", "input", "textarea", "head",
        "title", "meta", "link",
    }
)  # fmt: skip
# Page chrome, dropped unless it sits inside the page's own article or main element
# (an article's <header> holds its title).
_CHROME = frozenset({"header", "footer"})
_CHROME_ROLES = frozenset({"navigation", "banner", "contentinfo", "complementary", "search"})
_BLOCKS = frozenset(
    {
        "p", "div", "section", "article", "main", "li", "ul", "ol", "dl", "dt", "dd", "table",
        "thead", "tbody", "tfoot", "tr", "pre", "blockquote", "figure", "figcaption", "caption",
        "address", "hr", "details", "summary", "body", "html", "header", "footer",
    }
)  # fmt: skip
_XML_DECLARATION = re.compile(r"\A\s*<\?xml[^>]*\?>")
_WHITESPACE = re.compile(r"\s+")


class _Walker:
    """Walks the element tree in document order, buffering inline text into paragraphs."""

    def __init__(self, builder: SectionBuilder) -> None:
        self.builder = builder
        self.buffer: list[str] = []

    def flush(self) -> None:
        text = "".join(self.buffer)
        self.buffer = []
        lines = (line.strip(" |") for line in text.split("\n"))
        paragraph = "\n".join(line for line in lines if line)
        if paragraph:
            self.builder.paragraph(paragraph)

    def walk(self, element: Tag, *, in_content: bool) -> None:
        from bs4.element import Comment, NavigableString, Tag

        for child in element.children:
            if isinstance(child, NavigableString):
                if type(child) is NavigableString:  # not a Comment, Doctype, CData, ...
                    self.buffer.append(_WHITESPACE.sub(" ", str(child)))
                continue
            if not isinstance(child, Tag) or isinstance(child, Comment):
                continue
            name = child.name.lower()
            if name in _DROPPED or _hidden(child):
                continue
            if name in _CHROME and not in_content:
                continue
            if name in _HEADINGS:
                self.flush()
                self.builder.heading(_HEADINGS[name], child.get_text(" "))
            elif name == "br":
                self.buffer.append("\n")
            elif name == "pre":
                self.flush()
                self.builder.paragraph(child.get_text())
            elif name in ("td", "th"):
                self.buffer.append(" | ")
                self.walk(child, in_content=in_content)
            elif name == "tr":
                # a row is a line: the table is one paragraph, its header row first, as the
                # chunker expects (knowledge.chunking)
                self.buffer.append("\n")
                self.walk(child, in_content=in_content)
                self.buffer.append("\n")
            elif name in ("thead", "tbody", "tfoot"):
                self.walk(child, in_content=in_content)
            elif name in _BLOCKS:
                self.flush()
                if name == "li":
                    self.buffer.append("- ")
                self.walk(child, in_content=in_content or name in ("article", "main"))
                self.flush()
            else:
                self.walk(child, in_content=in_content)


def _hidden(tag: Tag) -> bool:
    role = str(tag.get("role") or "").lower()
    return (
        tag.has_attr("hidden")
        or str(tag.get("aria-hidden") or "").lower() == "true"
        or role in _CHROME_ROLES
    )


def parse_html(filename: str, text: str) -> Document:
    """Parse an HTML page (pure function; see :func:`load_html`)."""
    from bs4 import BeautifulSoup

    builder = SectionBuilder()
    if "<" not in text:
        builder.paragraph(text)  # a page without a single tag is plain text
        return builder.build(title_from_filename(filename))
    soup = BeautifulSoup(_XML_DECLARATION.sub("", text), "html.parser")
    page_title = soup.title.get_text(" ", strip=True) if soup.title else ""
    root = soup.find("main") or soup.select_one('[role="main"]')
    articles = soup.find_all("article")
    if root is None and len(articles) == 1:
        root = articles[0]
    in_content = root is not None
    if root is None:
        root = soup.body or soup
    walker = _Walker(builder)
    walker.walk(root, in_content=in_content)
    walker.flush()
    return builder.build(page_title or builder.first_title or title_from_filename(filename))


def load_html(filename: str, data: bytes) -> Document:
    """Load an ``.html`` page."""
    return parse_html(filename, decode_text(filename, data))
