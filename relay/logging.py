"""structlog, configured once: JSON when not on a terminal, readable console output on one.

Every line of a call carries ``call_sid`` (bound in the session's context). Phone numbers,
e-mail and street addresses are masked at info level and above, by the same masker as
``relay sessions export --redact`` (:mod:`relay.privacy`).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import orjson
import structlog

from relay.privacy import mask_text


def _mask_processor(
    _logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if method == "debug":
        return event
    for key, value in event.items():
        if isinstance(value, str) and key not in ("call_sid", "timestamp", "level", "logger"):
            event[key] = mask_text(value)
    return event


#: A ``name=%s`` pair in a standard-library message (the ``knowledge`` package logs that way).
_PAIR = re.compile(r"(?<![\w%])(\w+)=(%[-#0 +]*\d*(?:\.\d+)?[sdirf])")
#: Any %-placeholder (``%%`` is a literal percent sign, not one).
_SPEC = re.compile(r"%%|%[-#0 +]*\d*(?:\.\d+)?[sdirf]")


def _key_value_fields(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A ``knowledge`` record logged as ``"document_added collection=%s doc_id=%s", a, b``
    becomes ``event="document_added", collection=a, doc_id=b`` (its values as given, not as
    text), so that its fields are JSON fields like structlog's own events. A message that is not
    one word then ``name=%s`` pairs (a note after them, such as ``"; rebuilding"``, is kept as
    ``note``) is left as it was."""
    given = event.pop("positional_args", ())  # the record's (ProcessorFormatter empties them)
    record = event.get("_record")
    if record is None or not record.name.startswith("knowledge") or not isinstance(record.msg, str):
        return event
    args = given if isinstance(given, tuple) else ()
    specs = [m for m in _SPEC.finditer(record.msg) if m.group() != "%%"]
    if len(specs) != len(args):
        return event
    head, _, rest = record.msg.partition(" ")
    head_specs = len(_SPEC.findall(head))
    fields: dict[str, Any] = {}
    position = head_specs
    end = 0
    for pair in _PAIR.finditer(rest):
        if rest[end : pair.start()].strip():
            return event  # words between the pairs: a sentence, not fields
        value = args[position]
        fields[pair.group(1)] = repr(value) if pair.group(2).endswith("r") else value
        position += 1
        end = pair.end()
    if position != len(args):
        return event
    try:
        name = head % args[:head_specs] if head_specs else head
    except (TypeError, ValueError):
        return event
    note = rest[end:].strip(" ;,")
    event["event"] = name
    event.update(
        {
            k: v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
            for k, v in fields.items()
        }
    )
    if note:
        event["note"] = note
    return event


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written (tests swap it; cached loggers keep this)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


#: Loggers of libraries (and of ``knowledge``) that talk too much below WARNING.
_NOISY = ("httpx", "httpcore", "chromadb", "alembic", "onnxruntime", "urllib3")


def _orjson_dumps(value: Any, **kwargs: Any) -> str:
    """JSONRenderer's serializer: orjson, with structlog's fallback for other objects."""
    return orjson.dumps(
        value, default=kwargs.get("default"), option=orjson.OPT_NON_STR_KEYS
    ).decode()


class _StructlogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one root handler relay installs: standard-library records, rendered by structlog."""


def configure(level: str = "info", fmt: Literal["auto", "json", "console"] = "auto") -> None:
    """Configure structlog, and route the standard library's records through it.

    structlog's own loggers render directly (fast path). Records of every other logger (uvicorn,
    chromadb, alembic, ``knowledge``, Python warnings) reach one root handler whose
    :class:`structlog.stdlib.ProcessorFormatter` runs the same processors and renderer, so in
    JSON mode every line on stderr is one JSON object (rendered with orjson).
    """
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    numeric = logging.getLevelName(level.upper())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _mask_processor,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line (WriteLogger), not print()'s message-then-newline: workers share stderr,
        # and two writes let another process's line land between them.
        logger_factory=structlog.WriteLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, _key_value_fields, *processors],
        pass_foreign_args=True,  # for _key_value_fields, which takes them out again
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = _StructlogHandler(_Stderr())
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StructlogHandler)]:
        root.removeHandler(old)
    if as_json:  # a plain handler someone else installed would print non-JSON lines
        for other in [h for h in root.handlers if type(h) is logging.StreamHandler]:
            root.removeHandler(other)
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.captureWarnings(as_json)  # warnings.warn() output as log records, not raw lines
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "knowledge"):
        library = logging.getLogger(name)  # uvicorn may have given them handlers of their own
        library.handlers.clear()
        library.propagate = True
