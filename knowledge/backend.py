"""The Chroma adapter: one place that knows chromadb's API and converts its errors.

Embedded ``chromadb.PersistentClient`` by default, ``chromadb.HttpClient`` for a server URL.
Telemetry is off and no collection ever gets Chroma's default embedding function (it would
download a model): vectors always come from our :class:`~knowledge.embedders.Embedder`.

A server gets a deadline per HTTP request (chromadb's own client has none: a server that accepts
connections but never answers, e.g. stopped with SIGSTOP, would hang every call), and the user
and password of its URL as HTTP Basic credentials.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from knowledge.errors import (
    EmbeddingMismatch,
    KnowledgeError,
    StoreUnavailable,
    UnknownCollection,
)

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]$")
MODEL_KEY = "embedding_model"
DIMENSIONS_KEY = "embedding_dimensions"
SCHEMA_KEY = "knowledge_schema"

Metadata = Mapping[str, str | int | float | bool]

#: Seconds a Chroma server gets to accept a connection.
CONNECT_TIMEOUT = 5.0
#: Seconds a Chroma server gets to answer each HTTP request (between two pieces of its answer):
#: per request, not per command, so a big upload of many batches is not cut short. A batch of
#: 64 chunks is written in well under a second, and a whole collection's vectors start coming
#: back at once; 30 s is a server that has stopped answering.
REQUEST_TIMEOUT = 30.0
#: Seconds a heartbeat gets: opening the client and every ``ping`` (a command's first look).
PING_TIMEOUT = 5.0


def check_collection_name(name: str) -> str:
    """Chroma's rule: 3-512 characters of letters, digits, ``.``, ``_``, ``-``, starting and
    ending with a letter or digit."""
    if not _NAME.match(name) or ".." in name:
        raise KnowledgeError(
            f"invalid collection name {name!r}: use 3-512 letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return name


@contextmanager
def converted_errors(
    collection: str | None = None, *, server: str | None = None, timeout: float | None = None
) -> Iterator[None]:
    """Turn chromadb and transport errors into ours. ``server`` (masked) and ``timeout``: the
    Chroma server and its deadline, named when it did not answer in time."""
    from chromadb.errors import ChromaError, NotFoundError

    try:
        yield
    except KnowledgeError:
        raise
    except NotFoundError as exc:
        raise UnknownCollection(f"no collection {collection!r}") from exc
    except ChromaError as exc:
        raise KnowledgeError(f"vector store error: {exc}") from exc
    except (OSError, ConnectionError) as exc:
        raise StoreUnavailable(f"vector store unavailable: {exc}") from exc
    except Exception as exc:
        import httpx

        if isinstance(exc, httpx.TimeoutException):
            raise StoreUnavailable(_no_answer(server, timeout)) from exc
        if isinstance(exc, httpx.TransportError):
            raise StoreUnavailable(f"vector store unavailable: {exc}") from exc
        raise


def _no_answer(server: str | None, timeout: float | None) -> str:
    where = f"the Chroma server at {server}" if server else "the Chroma server"
    within = f" within {timeout:g} s" if timeout is not None else " in time"
    return f"{where} did not answer{within}"


def redact_url(url: str) -> str:
    """``url`` with the password of its user part masked (``http://u:***@host:8000``), to be
    shown in messages, logs and ``/readyz``: a server URL may carry credentials."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return url
    user, colon, _password = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}{slash}{path}"


def _credentials(url: str) -> dict[str, str]:
    """The HTTP Basic ``Authorization`` header for the user and password of ``url`` (none
    without a user): what Chroma's ``BasicAuthenticationServerProvider`` reads."""
    parts = urlsplit(url)
    if parts.username is None:
        return {}
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode("ascii")}


def _set_timeout(client: ClientAPI, timeout: Any) -> bool:
    """Give an HTTP client's requests ``timeout``; False if this chromadb keeps its
    ``httpx.Client`` elsewhere (chromadb 1.5 builds it with ``timeout=None`` and no setting
    changes that, but httpx lets a client's timeout be set afterwards). Guarded: internals."""
    session = getattr(getattr(client, "_server", None), "_session", None)
    if session is None or not hasattr(session, "timeout"):
        return False
    session.timeout = timeout
    return True


def _close_client(client: ClientAPI) -> None:
    """Close a Chroma client, and its HTTP connections once no other client shares them.

    chromadb 1.5's ``close()`` stops the client's System (and its internal admin client's)
    when their last user closes, but an HTTP client's ``httpx.Client`` is never closed (open
    sockets, ResourceWarnings), so we close those ourselves. Guarded: chromadb internals.
    """
    from chromadb.api.shared_system_client import SharedSystemClient

    parts = [client, getattr(client, "_admin_client", None)]
    servers = [(getattr(p, "_identifier", None), getattr(p, "_server", None)) for p in parts]
    close = getattr(client, "close", None)
    if callable(close):
        close()
    running = getattr(SharedSystemClient, "_identifier_to_system", {})
    for identifier, server in servers:
        session = getattr(server, "_session", None)
        if identifier not in running and session is not None and hasattr(session, "close"):
            session.close()


class ChromaBackend:
    """A lazily opened Chroma client and its collections.

    Args:
        path: Directory of an embedded store.
        url: A Chroma server, e.g. ``http://localhost:8000`` (wins over ``path``); a user and
            password in it (``http://user:pass@host:8000``) are sent as HTTP Basic credentials.
        timeout: Seconds a server gets to answer each HTTP request (``REQUEST_TIMEOUT``).
        ping_timeout: Seconds a server gets to answer a heartbeat (``PING_TIMEOUT``).
    """

    def __init__(
        self,
        *,
        path: Path | None = None,
        url: str | None = None,
        timeout: float = REQUEST_TIMEOUT,
        ping_timeout: float = PING_TIMEOUT,
    ) -> None:
        if path is None and url is None:
            raise ValueError("give a path for an embedded store or a url for a Chroma server")
        self.path = path
        self.url = url
        self.timeout = timeout
        self.ping_timeout = ping_timeout
        self._client: ClientAPI | None = None
        self._collections: dict[str, Collection] = {}
        self._lock = threading.Lock()

    @property
    def client(self) -> ClientAPI:
        """The Chroma client, opened on first use."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._open()
                client = self._client
        return client

    def _open(self) -> ClientAPI:
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False, allow_reset=False)
        try:
            if self.url is not None:
                parts = urlsplit(self.url)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise ValueError(f"not an http(s) URL: {redact_url(self.url)!r}")
                import httpx

                ssl = parts.scheme == "https"
                self._heartbeat()  # the client's constructor asks the server without a deadline
                client = chromadb.HttpClient(
                    host=parts.hostname,
                    port=parts.port or (443 if ssl else 8000),
                    ssl=ssl,
                    headers=_credentials(self.url),
                    settings=settings,
                )
                _set_timeout(client, httpx.Timeout(self.timeout, connect=CONNECT_TIMEOUT))
                return client
            assert self.path is not None
            self.path.mkdir(parents=True, exist_ok=True)
            return chromadb.PersistentClient(path=str(self.path), settings=settings)
        except StoreUnavailable:
            raise
        except Exception as exc:  # chromadb raises ValueError/ConnectError when it can't connect
            if self.url is None:
                where, reason = str(self.path), str(exc)
            else:  # masked: the message reaches logs, the CLI and the unauthenticated /readyz
                where, reason = (
                    redact_url(self.url),
                    str(exc).replace(self.url, redact_url(self.url)),
                )
            raise StoreUnavailable(f"cannot open vector store at {where}: {reason}") from exc

    def close(self) -> None:
        """Release the client (its HTTP connections or its files); reopened on next use."""
        with self._lock:  # held while closing: a client reopened meanwhile would get the
            client, self._client = self._client, None  # old System from chromadb's cache
            self._collections.clear()
            if client is not None:
                _close_client(client)

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store answers (a server: within
        ``ping_timeout`` s)."""
        if self.url is not None:
            self._heartbeat()
        with self._errors():
            self.client.heartbeat()

    @property
    def server(self) -> str | None:
        """The server's URL, its password masked; None when embedded."""
        return None if self.url is None else redact_url(self.url)

    def _errors(self, collection: str | None = None) -> Any:
        return converted_errors(collection, server=self.server, timeout=self.timeout)

    def _heartbeat(self) -> None:
        """Ask the server's heartbeat with a deadline of ``ping_timeout`` s, by a request of
        our own: chromadb's client has no deadline, and its constructor asks the server."""
        import httpx
        from chromadb.config import Settings

        assert self.url is not None
        parts = urlsplit(self.url)
        host = parts.netloc.rpartition("@")[2]  # as chromadb's client: the default port 8000
        host += "" if parts.port else (":443" if parts.scheme == "https" else ":8000")
        version = getattr(Settings().chroma_server_api_default_path, "value", None) or "/api/v2"
        url = f"{parts.scheme}://{host}{version}/heartbeat"
        try:
            with httpx.Client(
                timeout=httpx.Timeout(self.ping_timeout, connect=CONNECT_TIMEOUT),
                headers=_credentials(self.url),
            ) as http:
                http.get(url)  # any answer: the client's own requests say what is wrong
        except httpx.TimeoutException as exc:
            raise StoreUnavailable(_no_answer(self.server, self.ping_timeout)) from exc
        except httpx.HTTPError as exc:
            raise StoreUnavailable(
                f"cannot open vector store at {self.server}: {exc}".replace(
                    self.url, redact_url(self.url)
                )
            ) from exc

    def names(self) -> list[str]:
        """Names of all collections, sorted."""
        with self._errors():
            return sorted(c.name for c in self.client.list_collections())

    def collection(
        self, name: str, *, model: str, dimensions: int, create: bool
    ) -> Collection | None:
        """The named collection, checked to have been built with ``model``.

        Creates it (cosine space, model recorded in its metadata) when ``create`` is true;
        otherwise returns None when it does not exist. Raises :class:`EmbeddingMismatch`
        when it was built with another model.
        """
        check_collection_name(name)
        collection = self._collections.get(name)
        if collection is None:
            from chromadb.errors import NotFoundError

            with self._errors(name):
                try:
                    collection = self.client.get_collection(name, embedding_function=None)
                except NotFoundError:
                    if not create:
                        return None
                    collection = self.client.get_or_create_collection(
                        name,
                        embedding_function=None,
                        configuration={"hnsw": {"space": "cosine"}},
                        metadata={MODEL_KEY: model, DIMENSIONS_KEY: dimensions, SCHEMA_KEY: 1},
                    )
        stored = (collection.metadata or {}).get(MODEL_KEY)
        if stored != model:
            raise EmbeddingMismatch(name, str(stored or "<unrecorded>"), model)
        self._collections[name] = collection
        return collection

    def drop(self, name: str) -> bool:
        """Delete a collection; False if it did not exist."""
        from chromadb.errors import NotFoundError

        check_collection_name(name)
        self._collections.pop(name, None)
        with self._errors(name):
            try:
                self.client.delete_collection(name)
            except NotFoundError:
                return False
        return True

    def forget(self, name: str) -> None:
        """Drop a cached collection handle (after it vanished under us)."""
        self._collections.pop(name, None)

    def forget_all(self) -> None:
        """Drop every cached collection handle (collections may have changed elsewhere)."""
        self._collections.clear()

    def upsert(
        self,
        collection: Collection,
        ids: Sequence[str],
        embeddings: Sequence[Sequence[float]],
        documents: Sequence[str],
        metadatas: Sequence[Metadata],
    ) -> None:
        """Write records (replacing any with the same id)."""
        vectors: list[Sequence[float] | Sequence[int]] = [list(e) for e in embeddings]
        with self._errors(collection.name):
            collection.upsert(
                ids=list(ids),
                embeddings=vectors,
                documents=list(documents),
                metadatas=[dict(m) for m in metadatas],
            )

    def update_metadata(
        self, collection: Collection, ids: Sequence[str], metadatas: Sequence[Metadata]
    ) -> None:
        """Replace the metadata of existing records, leaving their vectors alone."""
        if not ids:
            return
        with self._errors(collection.name):
            collection.update(ids=list(ids), metadatas=[dict(m) for m in metadatas])

    def get(
        self,
        collection: Collection,
        *,
        where: dict[str, Any] | None = None,
        ids: Sequence[str] | None = None,
        include: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Records by filter or ids (``include`` picks metadatas, documents, embeddings)."""
        with self._errors(collection.name):
            result = collection.get(
                ids=list(ids) if ids is not None else None,
                where=where,
                include=list(include),  # type: ignore[arg-type]
            )
        return dict(result)

    def delete(
        self,
        collection: Collection,
        *,
        ids: Sequence[str] | None = None,
        where: dict[str, Any] | None = None,
    ) -> None:
        """Delete records by id or filter."""
        if ids is not None and not ids:
            return
        with self._errors(collection.name):
            collection.delete(ids=list(ids) if ids is not None else None, where=where)

    def query(self, collection: Collection, vector: Sequence[float], k: int) -> dict[str, Any]:
        """The ``k`` nearest records to ``vector`` with documents, metadatas and distances."""
        vectors: list[Sequence[float] | Sequence[int]] = [list(vector)]
        with self._errors(collection.name):
            result = collection.query(
                query_embeddings=vectors,
                n_results=k,
                include=["documents", "metadatas", "distances"],
            )
        return dict(result)

    def count(self, collection: Collection) -> int:
        """Records in a collection."""
        with self._errors(collection.name):
            return collection.count()
