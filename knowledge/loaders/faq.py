"""FAQ tables in CSV or JSON: every question-answer pair becomes its own section."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from typing import Any

from knowledge.encoding import decode_text
from knowledge.errors import DocumentError
from knowledge.loaders.sections import SectionBuilder, title_from_filename
from knowledge.models import Document

QUESTION_KEYS = ("question", "q", "questions", "frage", "pregunta", "prompt")
ANSWER_KEYS = ("answer", "a", "answers", "antwort", "respuesta", "response", "reply")
TOPIC_KEYS = ("category", "topic", "section", "heading")
_LIST_KEYS = ("faq", "faqs", "items", "questions", "entries", "data")


def _pick(keys: Iterable[str], wanted: tuple[str, ...]) -> str | None:
    by_lower = {k.strip().lower(): k for k in keys}
    for name in wanted:
        if name in by_lower:
            return by_lower[name]
    return None


def _build(filename: str, rows: Iterable[Mapping[str, Any]], columns: list[str]) -> Document:
    q_key, a_key = _pick(columns, QUESTION_KEYS), _pick(columns, ANSWER_KEYS)
    if q_key is None or a_key is None:
        raise DocumentError(
            filename,
            f"FAQ needs a question and an answer column (found: {', '.join(columns) or 'none'})",
        )
    topic_key = _pick(columns, TOPIC_KEYS)
    builder = SectionBuilder()
    for row in rows:
        question = str(row.get(q_key) or "").strip()
        answer = str(row.get(a_key) or "").strip()
        if not question or not answer:
            continue
        topic = str(row.get(topic_key) or "").strip() if topic_key else ""
        builder.section((topic,) if topic else (), f"Q: {question}\nA: {answer}")
    return builder.build(title_from_filename(filename))


def load_faq_csv(filename: str, data: bytes) -> Document:
    """Load a CSV FAQ: a header row naming question and answer columns (q/a, any case);
    comma, semicolon or tab separated."""
    text = decode_text(filename, data)
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(text[:4096], ",;\t")
    except csv.Error:
        dialect = csv.excel
    try:
        reader = csv.DictReader(io.StringIO(text), dialect=dialect)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    except csv.Error as exc:
        raise DocumentError(filename, f"unreadable CSV ({exc})") from exc
    return _build(filename, rows, columns)


def load_faq_json(filename: str, data: bytes) -> Document:
    """Load a JSON FAQ: a list of objects with question/answer keys (q/a, any case), or an
    object holding that list under ``faq``, ``faqs``, ``items``, ``questions`` or ``entries``."""
    try:
        value = json.loads(decode_text(filename, data))
    except json.JSONDecodeError as exc:
        raise DocumentError(filename, f"invalid JSON ({exc})") from exc
    if isinstance(value, dict):
        key = _pick(value.keys(), _LIST_KEYS)
        value = value.get(key) if key is not None else None
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise DocumentError(filename, "JSON FAQ must be a list of question/answer objects")
    columns: list[str] = []
    for item in value:
        columns.extend(k for k in item if k not in columns)
    return _build(filename, value, columns)
