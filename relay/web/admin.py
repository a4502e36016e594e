"""The HTTP admin API for knowledge documents, behind a bearer token.

Mounted only when ``RELAY_ADMIN_TOKEN`` is set; then every route answers 401 without the
token. Routes (``{collection}`` is an agent's knowledge base):

- ``GET    /admin/knowledge/{collection}/documents``            list documents
- ``POST   /admin/knowledge/{collection}/documents``            multipart upload (field ``file``, repeatable)
- ``GET    /admin/knowledge/{collection}/documents/{doc_id}``   versions and chunks
- ``DELETE /admin/knowledge/{collection}/documents/{doc_id}``   delete a document
- ``GET    /admin/knowledge/{collection}/search?q=…&k=4``        the passages a call's turn gets
  (``relay.web.passages``; ``k``: only the first k of them)
- ``GET    /admin/recorder/parked?limit=100``                    rows the recorder could not write

A ``{collection}`` no agent uses answers 404 (an upload never creates one by mistake). An
upload is refused with 413 once its request passes 100 MB, counted as the bytes arrive (with or
without ``Content-Length``), and each file over 20 MB fails on its own. A store in trouble (a
Chroma server down or not answering) answers 503 with its message, logged as one warning.
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from knowledge import (
    AsyncKnowledge,
    DocumentError,
    KnowledgeError,
    UnknownCollection,
    UnknownDocument,
)
from relay.web import limits
from relay.web.passages import ask

MAX_UPLOAD_BYTES = 20_000_000

log = structlog.get_logger("relay.web.admin")

Endpoint = Callable[[Request], Awaitable[Response]]


def routes() -> list[Route]:
    return [
        Route("/admin/knowledge/{collection}/documents", list_documents, methods=["GET"]),
        Route("/admin/knowledge/{collection}/documents", upload, methods=["POST"]),
        Route(
            "/admin/knowledge/{collection}/documents/{doc_id:path}", show_document, methods=["GET"]
        ),
        Route(
            "/admin/knowledge/{collection}/documents/{doc_id:path}",
            delete_document,
            methods=["DELETE"],
        ),
        Route("/admin/knowledge/{collection}/search", search, methods=["GET"]),
        Route("/admin/recorder/parked", parked, methods=["GET"]),
    ]


def _authorised(request: Request) -> bool:
    token: str | None = request.app.state.runtime.settings.admin_token
    if not token:
        return False
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def _denied() -> Response:
    return JSONResponse(
        {"error": "unauthorized: send Authorization: Bearer <RELAY_ADMIN_TOKEN>"},
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


def _knowledge(request: Request) -> AsyncKnowledge | None:
    knowledge: AsyncKnowledge | None = request.app.state.runtime.knowledge
    return knowledge


def _unknown_collection(request: Request) -> Response | None:
    """404 for a collection no agent uses (an upload must never create one by mistake)."""
    name = request.path_params["collection"]
    agents = request.app.state.runtime.deps.agents.agents.values()
    known = sorted({a.knowledge_collection for a in agents if a.knowledge_collection})
    if name in known:
        return None
    return JSONResponse(
        {"error": f"no knowledge collection {name!r}: the agents use {', '.join(known) or 'none'}"},
        status_code=404,
    )


def _collection_store(request: Request) -> AsyncKnowledge | Response:
    """The knowledge store for a request on ``{collection}``, or the answer that refuses it:
    401 without the admin token, 503 with the store off, 404 for a collection no agent uses."""
    if not _authorised(request):
        return _denied()
    knowledge = _knowledge(request)
    if knowledge is None:
        return _off()
    if (unknown := _unknown_collection(request)) is not None:
        return unknown
    return knowledge


def _off() -> Response:
    return JSONResponse(
        {"error": "the knowledge store is turned off (RELAY_KNOWLEDGE=false)"}, status_code=503
    )


def _unavailable(request: Request, exc: KnowledgeError) -> Response:
    """503 with the store's message (a Chroma server down or not answering, a timeout), logged
    once as a warning rather than a traceback."""
    log.warning(
        "admin_knowledge_store_failed",
        method=request.method,
        path=request.url.path,
        error=str(exc)[:300],
    )
    return JSONResponse({"error": str(exc)}, status_code=503)


def _store_errors(endpoint: Endpoint) -> Endpoint:
    """``endpoint``, a knowledge error its own handling left answered with 503."""

    @functools.wraps(endpoint)
    async def answered(request: Request) -> Response:
        try:
            return await endpoint(request)
        except KnowledgeError as exc:
            return _unavailable(request, exc)

    return answered


def _json(value: Any) -> Any:
    return (
        dataclasses.asdict(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type)
        else value
    )


@_store_errors
async def list_documents(request: Request) -> Response:
    knowledge = _collection_store(request)
    if isinstance(knowledge, Response):
        return knowledge  # refused: no token, store off, or a collection no agent uses
    docs = await knowledge.list_documents(request.path_params["collection"])
    return JSONResponse({"documents": [_json(d) for d in docs]})


@_store_errors
async def upload(request: Request) -> Response:
    knowledge = _collection_store(request)
    if isinstance(knowledge, Response):  # refused: no token, store off, or an unused collection
        knowledge.headers["Connection"] = "close"  # its body unread, rather than received
        return knowledge
    limit = MAX_UPLOAD_BYTES * 5  # the whole request, counted as it arrives (chunked too)
    try:
        form = await limits.read_form(
            request, limit=limit, accept=(limits.MULTIPART,), max_files=50
        )
    except limits.BodyRefused as refused:
        if refused.status_code == 413:
            message = f"upload larger than {limit} bytes"
        elif refused.status_code == 415:
            message = "send the documents as multipart/form-data, field 'file'"
        else:
            message = refused.message
        return JSONResponse(
            {"error": message}, status_code=refused.status_code, headers={"Connection": "close"}
        )
    files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    if not files:
        await form.close()
        return JSONResponse(
            {"error": "send the documents as multipart form field 'file'"}, status_code=400
        )
    collection = request.path_params["collection"]
    results = []
    for item in files:
        data = await item.read(MAX_UPLOAD_BYTES + 1)
        name = item.filename or "upload"
        if len(data) > MAX_UPLOAD_BYTES:
            results.append(
                {
                    "path": name,
                    "doc_id": "",
                    "status": "failed",
                    "chunks": 0,
                    "error": f"over the size limit of {MAX_UPLOAD_BYTES} bytes",
                }
            )
            continue
        try:
            result = await knowledge.add_bytes(collection, name, data)
        except DocumentError as exc:
            results.append(
                {"path": name, "doc_id": "", "status": "failed", "chunks": 0, "error": str(exc)}
            )
            continue
        except KnowledgeError as exc:  # the store, not the file: the rest would fail too
            await form.close()
            _unavailable(request, exc)  # logged; the answer also says which files were done
            return JSONResponse(
                {"error": str(exc), "results": results,
                 "not_loaded": [f.filename or "upload" for f in files[len(results):]]},
                status_code=503,
            )  # fmt: skip
        results.append(_json(result))
    await form.close()
    failed = sum(1 for r in results if str(r.get("status")) == "failed")
    status = 200 if failed == 0 else (207 if failed < len(results) else 422)
    return JSONResponse({"results": results, "failed": failed}, status_code=status)


@_store_errors
async def show_document(request: Request) -> Response:
    knowledge = _collection_store(request)
    if isinstance(knowledge, Response):
        return knowledge  # refused: no token, store off, or a collection no agent uses
    try:
        detail = await knowledge.show(
            request.path_params["collection"], request.path_params["doc_id"]
        )
    except (UnknownDocument, UnknownCollection) as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    return JSONResponse(_json(detail))


@_store_errors
async def delete_document(request: Request) -> Response:
    knowledge = _collection_store(request)
    if isinstance(knowledge, Response):
        return knowledge  # refused: no token, store off, or a collection no agent uses
    removed = await knowledge.remove(
        request.path_params["collection"], request.path_params["doc_id"]
    )
    if not removed:
        return JSONResponse({"error": "no such document"}, status_code=404)
    return JSONResponse({"removed": request.path_params["doc_id"]})


@_store_errors
async def search(request: Request) -> Response:
    """The passages a call's turn asking ``q`` is given, as the console's "Ask a question"
    shows them (:func:`relay.web.passages.ask`: the calls' retriever, its k and threshold);
    ``k`` keeps only the first k of them."""
    knowledge = _collection_store(request)
    if isinstance(knowledge, Response):
        return knowledge  # refused: no token, store off, or a collection no agent uses
    query = request.query_params.get("q", "").strip()
    if not query:
        return JSONResponse({"error": "give the question as ?q="}, status_code=400)
    limit = None
    if "k" in request.query_params:
        try:
            limit = max(1, int(request.query_params["k"]))
        except ValueError:
            return JSONResponse({"error": "k must be a number"}, status_code=400)
    retriever = request.app.state.runtime.retriever  # the calls' own (the store is on)
    try:
        hits = await ask(
            retriever, request.path_params["collection"], query, limit=limit, timeout=5.0
        )
    except UnknownCollection as exc:  # no document was ever loaded into it
        return JSONResponse({"error": str(exc)}, status_code=404)
    return JSONResponse({"hits": [_json(h) for h in hits]})


async def parked(request: Request) -> Response:
    """The rows the recorder parked (the database refused them), newest first, with errors."""
    if not _authorised(request):
        return _denied()
    from relay.storage import repository

    try:
        limit = max(1, min(1000, int(request.query_params.get("limit", "100"))))
    except ValueError:
        return JSONResponse({"error": "limit must be a number"}, status_code=400)
    recorder = request.app.state.runtime.deps.recorder
    rows = await repository.parked_records(request.app.state.runtime.deps.db, limit=limit)
    return JSONResponse(
        {
            "parked_total": recorder.parked,
            "lost_total": recorder.lost,
            "dropped_events_total": recorder.dropped_events,
            "records": [
                {"id": r.id, "table": r.table_name, "call_sid": r.call_sid, "error": r.error,
                 "parked_at": r.parked_at.isoformat(), "record": r.record}
                for r in rows
            ],
        }
    )  # fmt: skip
