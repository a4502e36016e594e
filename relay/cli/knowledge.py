"""``relay knowledge``: content editors load, update, inspect and search the documents."""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knowledge import (
    SUPPORTED_SUFFIXES,
    AsyncKnowledge,
    DocumentError,
    DocumentInfo,
    FileResult,
    Hit,
    IngestReport,
    KnowledgeError,
    KnowledgeStore,
)
from knowledge.backend import redact_url
from knowledge.errors import StoreUnavailable
from knowledge.ids import document_id, sha256_hex
from knowledge.manifest import Manifest
from knowledge.priority import run_on_idle_cpu
from knowledge.store import MANIFEST_FILE
from relay.cli.common import Handler, settings_from
from relay.errors import ConfigError

if TYPE_CHECKING:
    from relay.config import Settings

#: How long ``relay knowledge search`` waits for its answer (seconds): its first search also
#: loads the model and reads the collection's vectors.
SEARCH_TIMEOUT = 120.0


def add_parser(commands: Any) -> None:
    group = commands.add_parser("knowledge", help="load and search the agents' knowledge documents")
    sub = group.add_subparsers(title="knowledge commands", metavar="COMMAND")

    def collection(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--collection", "-c", help="the knowledge base (default: the default agent's)"
        )

    add = sub.add_parser(
        "add", help="add or update files or folders (Markdown, text, HTML, PDF, DOCX, FAQ CSV/JSON)"
    )
    add.add_argument("paths", nargs="+", type=Path)
    collection(add)
    add.set_defaults(handler=_reported(_add))

    sync = sub.add_parser(
        "sync", help="mirror a folder: add new, update changed, delete removed documents"
    )
    sync.add_argument("directory", type=Path)
    collection(sync)
    sync.set_defaults(handler=_reported(_sync))

    load = sub.add_parser(
        "load-shipped",
        help="add or update every agent's shipped documents from <data dir>/knowledge/<collection>/ "
        "(deletes nothing; keeps a document an editor changed since it was shipped)",
    )
    load.set_defaults(handler=_reported(_load_shipped))

    lst = sub.add_parser("list", help="list documents")
    collection(lst)
    lst.set_defaults(handler=_reported(_list))

    show = sub.add_parser("show", help="a document's versions and chunks")
    show.add_argument("doc")
    collection(show)
    show.set_defaults(handler=_reported(_show))

    remove = sub.add_parser("remove", help="delete a document")
    remove.add_argument("doc")
    collection(remove)
    remove.set_defaults(handler=_reported(_remove))

    drop = sub.add_parser(
        "drop",
        help="delete a whole knowledge base (e.g. to rebuild it after an embedding model change)",
    )
    collection(drop)
    drop.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    drop.set_defaults(handler=_reported(_drop))

    search = sub.add_parser(
        "search",
        help="the passages the agent would be given for a question (as a call's turn gets them)",
    )
    search.add_argument("question")
    search.add_argument(
        "-k",
        type=_positive,
        default=None,
        help="show only the first K of them (the agent gets RELAY_KNOWLEDGE_K passages)",
    )
    collection(search)
    search.set_defaults(handler=_reported(_search))


def _reported(handler: Handler) -> Handler:
    """``handler``, with a store that cannot be reached (a Chroma server down) or any other
    knowledge error reported in one line, exit 1, not as a traceback."""

    @functools.wraps(handler)
    def reported(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except KnowledgeError as exc:  # StoreUnavailable included
            print(f"relay knowledge: {exc}", file=sys.stderr)
            return 1

    return reported


def _positive(text: str) -> int:
    """``-k``: a whole number of at least 1."""
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"not a whole number of at least 1: {text!r}")
    return number


def _context(
    args: argparse.Namespace, *, existing_ok: bool = True
) -> tuple[Any, KnowledgeStore, str]:
    """Settings, the store and the collection, which must be one an agent uses (or, unless
    loading into it, one that exists already: an old collection can still be listed or dropped)."""
    from relay.agents import AgentRegistry

    settings = _settings(args)
    agents = AgentRegistry.load(settings.prompts_dir, default=settings.default_agent)
    name = getattr(args, "collection", None) or agents.default.knowledge_collection
    if not name:
        raise SystemExit(
            "relay knowledge: give --collection (the default agent has no knowledge_collection)"
        )
    from relay.services.retrieval import open_knowledge

    store = open_knowledge(settings).store
    _reachable(settings, store)
    known = sorted(
        {a.knowledge_collection for a in agents.agents.values() if a.knowledge_collection}
    )
    if name not in known and not (existing_ok and name in store.collections()):
        raise SystemExit(
            f"relay knowledge: no agent uses the collection {name!r} (the agents use: "
            f"{', '.join(known) or 'none'}); set knowledge_collection in the agent's profile first"
        )
    return settings, store, name


def _settings(args: argparse.Namespace) -> Settings:
    """The settings, refused (a ConfigError: one line, exit 2, as ``relay serve`` refuses a
    data directory it cannot read) when the data directory does not exist: the store would be
    a new, empty one there, which no server reads."""
    settings = settings_from(args, RELAY_LOG_LEVEL="warning")
    data = settings.data_dir
    if not data.is_dir():
        hint = (
            f", relative to {Path.cwd()}: run relay from the folder that holds data/, or set "
            "RELAY_DATA_DIR to it"
            if not data.is_absolute()
            else ""
        )
        raise ConfigError(f"the data directory {data} does not exist (RELAY_DATA_DIR{hint})")
    return settings


def _reachable(settings: Settings, store: KnowledgeStore) -> None:
    """With a Chroma server, raise StoreUnavailable naming it (and the setting) unless it
    answers: every command needs it, and without this some fail only after their first file."""
    server = _server(settings)
    if server is None:
        return
    try:
        store.ping()
    except StoreUnavailable as exc:
        where = "CHROMA_URL" if settings.chroma_url else "run by `relay serve --workers`"
        raise StoreUnavailable(
            f"cannot reach the Chroma server at {server} ({where}): {exc}"
        ) from exc


#: The marks of :class:`Progress`, one per file loaded.
MARKS = {"added": "+", "updated": "~", "unchanged": "=", "failed": "!"}
#: What the marks mean, for the line that starts a load.
LEGEND = "! = failed, + added, ~ updated, = unchanged"


class Progress:
    """One line per file given with a bar counting them:
    ``[##########----------]  5/10 + pricing.md  (12 chunks)``.

    The bar counts the files found under the paths given (as the store walks them). A sync's
    deletions, which come after the files (documents whose file is not in the folder), are
    not files given: each gets a line of its own, outside the count,
    ``deleted parking.md  (not in the folder; 3 chunks removed)``.
    """

    def __init__(self, paths: Sequence[Path]) -> None:
        self.total = sum(1 for _ in _files(paths))
        self.done = 0

    def __call__(self, result: FileResult, note: str | None = None) -> None:
        """Print ``result``'s line; ``note`` in place of its chunk count's parenthesis."""
        name = result.doc_id or result.path
        if result.status == "deleted":
            print(
                f"deleted {name}  (not in the folder; {result.chunks} chunks removed)",
                file=sys.stderr,
                flush=True,
            )
            return
        self.done += 1
        mark = MARKS.get(str(result.status), "?")
        detail = f"  {result.error}" if result.error else f"  ({note or f'{result.chunks} chunks'})"
        total = max(self.total, self.done)
        filled = round(20 * self.done / total) if total else 20
        bar = f"[{'#' * filled}{'-' * (20 - filled)}] {self.done:>{len(str(total))}}/{total}"
        print(f"{bar} {mark} {name}{detail}", file=sys.stderr, flush=True)


def _files(paths: Sequence[Path]) -> Iterator[Path]:
    """The files the store loads for ``paths`` (``knowledge.store``): every file under a folder
    but hidden ones and those in hidden folders, and a path given as a file even if missing
    (it is reported as failed)."""
    for path in paths:
        if path.is_dir():
            for folder, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                yield from (Path(folder) / f for f in files if not f.startswith("."))
        else:
            yield path


def _summary(report: IngestReport, kept: set[str] | None = None) -> int:
    """Print the counts; exit status 1 when a file failed. ``kept``: the documents
    ``load-shipped`` kept (counted as such, not as unchanged, and in place of deletions)."""
    counts: dict[str, int] = {}
    for result in report.files:
        status = "kept" if kept is not None and result.doc_id in kept else str(result.status)
        counts[status] = counts.get(status, 0) + 1
    fourth = "deleted" if kept is None else "kept"
    parts = [f"{counts.get(k, 0)} {k}" for k in ("added", "updated", "unchanged", fourth, "failed")]
    print(f"{', '.join(parts)} in {report.seconds:.1f}s")
    return 1 if counts.get("failed") else 0


def _add(args: argparse.Namespace) -> int:
    run_on_idle_cpu()  # on a box serving calls, this command takes only the idle cores
    _, store, name = _context(args, existing_ok=False)
    for path in args.paths:  # a folder with nothing to load is a mistake, not "0 added"
        if path.is_dir() and not any(_supported(f) for f in _files([path])):
            print(
                f"relay knowledge: no supported files found in {path} (the types: "
                f"{', '.join(SUPPORTED_SUFFIXES)})",
                file=sys.stderr,
            )
            return 1
    print(f"Loading into '{name}' ({LEGEND}):", file=sys.stderr)
    return _summary(store.add(name, args.paths, progress=Progress(args.paths)))


def _supported(file: Path) -> bool:
    return file.suffix.lower() in SUPPORTED_SUFFIXES


def _sync(args: argparse.Namespace) -> int:
    run_on_idle_cpu()
    _, store, name = _context(args, existing_ok=False)
    print(f"Mirroring {args.directory} into '{name}' ({LEGEND}):", file=sys.stderr)
    return _summary(store.sync(name, args.directory, progress=Progress([args.directory])))


def _load_shipped(args: argparse.Namespace) -> int:
    """Add or update each agent's shipped documents, as the first start loads them into an
    empty collection (``relay.services.retrieval``). Never deletes: the documents editors added
    stay (``sync`` is the command that mirrors a folder). Exit 1 when no agent has shipped
    documents, or a file failed."""
    from relay.agents import AgentRegistry
    from relay.services.retrieval import open_knowledge

    run_on_idle_cpu()
    settings = _settings(args)
    agents = AgentRegistry.load(settings.prompts_dir, default=settings.default_agent)
    store = open_knowledge(settings).store
    _reachable(settings, store)
    manifest = Manifest(settings.knowledge_path / MANIFEST_FILE)
    status, found, done = 0, False, set()
    for agent in agents.agents.values():
        name = agent.knowledge_collection
        if not name or name in done:
            continue
        done.add(name)
        folder = settings.documents_dir / name
        if not folder.is_dir() or not any(_files([folder])):
            print(
                f"relay knowledge: {agent.name}: no shipped documents at {folder}", file=sys.stderr
            )
            continue
        found = True
        print(f"{agent.name}: {folder} -> '{name}' ({LEGEND}):", file=sys.stderr)
        report, kept = _load_folder(store, manifest, name, folder)
        status |= _summary(report, kept)
    return status if found else 1


def _load_folder(
    store: KnowledgeStore, manifest: Manifest, collection: str, folder: Path
) -> tuple[IngestReport, set[str]]:
    """Load every file of ``folder`` into ``collection`` (ids relative to it, as ``add``
    names them) but for the documents an editor changed since they were shipped: the live
    version is another file, and this file's content was loaded before under that id (so it
    did not change since). A shipped file that is new, or changed since it was last loaded
    (a newer release), is loaded. Returns the report and the ids kept."""
    started = time.perf_counter()
    progress = Progress([folder])
    results: list[FileResult] = []
    kept: set[str] = set()
    seen: dict[str, str] = {}
    files = sorted((f.relative_to(folder).as_posix(), f) for f in _files([folder]))
    for relative, file in files:
        doc_id = document_id(relative)
        note = None
        try:
            if doc_id in seen:
                raise DocumentError(relative, f"same document id as {seen[doc_id]}")
            seen[doc_id] = relative
            try:
                size = file.stat().st_size
                if size > store.max_file_bytes:
                    raise DocumentError(
                        relative,
                        f"file is {size:,} bytes, over the {store.max_file_bytes:,}-byte limit",
                    )
                data = file.read_bytes()
            except OSError as exc:
                raise DocumentError(relative, f"unreadable: {exc.strerror or exc}") from exc
            edited = _edited(manifest, collection, doc_id, sha256_hex(data))
            if edited is not None:
                kept.add(doc_id)
                result = FileResult(
                    relative, doc_id, "unchanged", edited.chunks, version=edited.version
                )
                note = (
                    f"kept: changed since it was shipped, v{edited.version} loaded "
                    f"{edited.loaded_at}; `relay knowledge add` the file to load it again"
                )
            else:
                result = store.add_bytes(collection, relative, data)
        except DocumentError as exc:
            result = FileResult(relative, doc_id, "failed", error=exc.reason)
        results.append(result)
        progress(result, note)
    return IngestReport(tuple(results), time.perf_counter() - started), kept


def _edited(manifest: Manifest, collection: str, doc_id: str, sha: str) -> DocumentInfo | None:
    """The live version of ``doc_id`` when it is not the content ``sha`` but that content was
    loaded as an earlier version: changed since (by an editor), so kept. None: load it."""
    current = manifest.current(collection, doc_id)
    if current is None or current[0].sha256 == sha:
        return None
    if any(version.sha256 == sha for version in manifest.versions(collection, doc_id)):
        return current[0]
    return None


def _list(args: argparse.Namespace) -> int:
    settings, store, name = _context(args)
    docs = store.list_documents(name)
    server = _server(settings)
    if server is not None:
        _where(settings, server, store, name, sum(doc.chunks for doc in docs))
    if not docs:
        print(f"'{name}' has no documents.")
        return 0
    print(f"{'document':40} {'version':>7} {'chunks':>6}  loaded")
    for doc in docs:
        print(f"{doc.doc_id:40} {doc.version:>7} {doc.chunks:>6}  {doc.loaded_at}")
    return 0


def _server(settings: Settings | None) -> str | None:
    """The Chroma server holding the vectors (``CHROMA_URL``, or the one a running
    ``relay serve --workers N`` supervises for this data directory), its password masked for
    the messages that name it; None when embedded."""
    if settings is None:
        return None
    from relay.services.retrieval import running_chroma_server

    url = settings.chroma_url or running_chroma_server(settings.data_dir)
    return None if url is None else redact_url(url)


def _where(settings: Settings, server: str, store: KnowledgeStore, name: str, listed: int) -> None:
    """With a Chroma server: say that the list is this data directory's manifest, and when
    the server holds another number of chunks for the collection (documents loaded with
    another data directory), say that too. A server that cannot be reached raises
    StoreUnavailable."""
    manifest = settings.knowledge_path / MANIFEST_FILE
    print(
        f"Documents of '{name}' as this data directory's manifest records them ({manifest}); "
        f"their chunks are on the Chroma server at {server}.",
        file=sys.stderr,
    )
    held = store.count(name)
    if held != listed:
        print(
            f"The server holds {held} chunks of '{name}', the documents listed {listed}: "
            "documents loaded with another data directory (RELAY_DATA_DIR) are not listed "
            "here. Load and list documents from one data directory.",
            file=sys.stderr,
        )


def _show(args: argparse.Namespace) -> int:
    _, store, name = _context(args)
    try:
        detail = store.show(name, args.doc)
    except KnowledgeError as exc:
        print(f"relay knowledge: {exc}", file=sys.stderr)
        return 1
    info = detail.info
    print(f"{info.doc_id} (from {info.source}): version {info.version}, {info.chunks} chunks")
    for version in detail.versions:
        removed = f", removed {version.removed_at}" if version.removed_at else ""
        print(f"  v{version.version}: {version.chunks} chunks, loaded {version.loaded_at}{removed}")
    for chunk in detail.chunks:
        print(
            f"  #{chunk.position} [{' > '.join(chunk.heading_path)}] {chunk.tokens} tokens: {chunk.preview}"
        )
    return 0


def _remove(args: argparse.Namespace) -> int:
    _, store, name = _context(args)
    if store.remove(name, args.doc):
        print(f"Removed {args.doc} from '{name}'.")
        return 0
    print(f"relay knowledge: '{name}' has no document {args.doc!r}", file=sys.stderr)
    return 1


def _drop(args: argparse.Namespace) -> int:
    _, store, name = _context(args)
    if not args.yes:
        answer = input(f"Delete every document of '{name}'? Type the name to confirm: ")
        if answer.strip() != name:
            print("Nothing deleted.")
            return 1
    dropped = store.drop(name)
    print(f"Dropped '{name}'." if dropped else f"'{name}' did not exist.")
    return 0


def _search(args: argparse.Namespace) -> int:
    settings, store, name = _context(args)
    try:
        hits = asyncio.run(_passages(settings, store, name, args.question, args.k))
    except KnowledgeError as exc:
        print(f"relay knowledge: {exc}", file=sys.stderr)
        return 1
    if not hits:
        print(
            f"No passage scores {settings.knowledge_min_score:g} (RELAY_KNOWLEDGE_MIN_SCORE) or "
            "more: the agent would get no reference material for this."
        )
        return 0
    for number, hit in enumerate(hits, 1):
        where = " > ".join(hit.heading_path)
        print(f"{number}. {hit.score:.3f}  {hit.source} (v{hit.doc_version}) [{where}]")
        print("   " + hit.text.replace("\n", "\n   ")[:600])
    return 0


async def _passages(
    settings: Settings, store: KnowledgeStore, collection: str, question: str, limit: int | None
) -> list[Hit]:
    """What a call's turn asking ``question`` is given, by the calls' own path: the function
    behind the console's "Ask a question" and the admin API's search
    (:func:`relay.web.passages.ask`), with a retriever set up as ``relay serve`` sets up its
    calls' (the settings' k and threshold, the in-memory index)."""
    from relay.web.passages import ask, served_retriever

    knowledge = AsyncKnowledge(store)
    retriever = served_retriever(knowledge, settings)
    try:
        return await ask(retriever, collection, question, limit=limit, timeout=SEARCH_TIMEOUT)
    finally:
        await retriever.aclose()
        await knowledge.aclose()
