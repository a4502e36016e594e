"""``relay knowledge``: content editors load, update, inspect and search the documents."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from knowledge import FileResult, IngestReport, KnowledgeError, KnowledgeStore
from knowledge.priority import run_on_idle_cpu
from relay.cli.common import settings_from


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
    add.set_defaults(handler=_add)

    sync = sub.add_parser(
        "sync", help="mirror a folder: add new, update changed, delete removed documents"
    )
    sync.add_argument("directory", type=Path)
    collection(sync)
    sync.set_defaults(handler=_sync)

    load = sub.add_parser(
        "load-shipped", help="sync every agent's documents from <data dir>/knowledge/<collection>/"
    )
    load.set_defaults(handler=_load_shipped)

    lst = sub.add_parser("list", help="list documents")
    collection(lst)
    lst.set_defaults(handler=_list)

    show = sub.add_parser("show", help="a document's versions and chunks")
    show.add_argument("doc")
    collection(show)
    show.set_defaults(handler=_show)

    remove = sub.add_parser("remove", help="delete a document")
    remove.add_argument("doc")
    collection(remove)
    remove.set_defaults(handler=_remove)

    drop = sub.add_parser(
        "drop",
        help="delete a whole knowledge base (e.g. to rebuild it after an embedding model change)",
    )
    collection(drop)
    drop.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    drop.set_defaults(handler=_drop)

    search = sub.add_parser("search", help="the passages the agent would be given for a question")
    search.add_argument("question")
    search.add_argument("-k", type=int, default=4)
    collection(search)
    search.set_defaults(handler=_search)


def _context(
    args: argparse.Namespace, *, existing_ok: bool = True
) -> tuple[Any, KnowledgeStore, str]:
    """Settings, the store and the collection, which must be one an agent uses (or, unless
    loading into it, one that exists already: an old collection can still be listed or dropped)."""
    from relay.agents import AgentRegistry

    settings = settings_from(args, RELAY_LOG_LEVEL="warning")
    agents = AgentRegistry.load(settings.prompts_dir, default=settings.default_agent)
    name = getattr(args, "collection", None) or agents.default.knowledge_collection
    if not name:
        raise SystemExit(
            "relay knowledge: give --collection (the default agent has no knowledge_collection)"
        )
    from relay.services.retrieval import open_knowledge

    store = open_knowledge(settings).store
    known = sorted(
        {a.knowledge_collection for a in agents.agents.values() if a.knowledge_collection}
    )
    if name not in known and not (existing_ok and name in store.collections()):
        raise SystemExit(
            f"relay knowledge: no agent uses the collection {name!r} (the agents use: "
            f"{', '.join(known) or 'none'}); set knowledge_collection in the agent's profile first"
        )
    return settings, store, name


class Progress:
    """One line per file with a bar: ``[#####-----]  5/10 + pricing.md (12 chunks)``."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.total = sum(1 for _ in _files(paths))
        self.done = 0

    def __call__(self, result: FileResult) -> None:
        self.done += 1
        mark = {"added": "+", "updated": "~", "unchanged": "=", "failed": "!", "deleted": "-"}.get(
            str(result.status), "?"
        )
        detail = f"  {result.error}" if result.error else f"  ({result.chunks} chunks)"
        total = max(self.total, self.done)
        filled = round(20 * self.done / total) if total else 20
        bar = f"[{'#' * filled}{'-' * (20 - filled)}] {self.done:>{len(str(total))}}/{total}"
        print(f"{bar} {mark} {result.doc_id or result.path}{detail}", file=sys.stderr, flush=True)


def _files(paths: Sequence[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            for found in path.rglob("*"):
                hidden = any(part.startswith(".") for part in found.relative_to(path).parts)
                if found.is_file() and not hidden:
                    yield found
        elif path.exists():
            yield path


def _summary(report: IngestReport) -> int:
    counts: dict[str, int] = {}
    for result in report.files:
        counts[str(result.status)] = counts.get(str(result.status), 0) + 1
    parts = [
        f"{counts.get(k, 0)} {k}" for k in ("added", "updated", "unchanged", "deleted", "failed")
    ]
    print(f"{', '.join(parts)} in {report.seconds:.1f}s")
    return 1 if counts.get("failed") else 0


def _add(args: argparse.Namespace) -> int:
    run_on_idle_cpu()  # on a box serving calls, this command takes only the idle cores
    _, store, name = _context(args, existing_ok=False)
    print(f"Loading into '{name}' (! = failed, + added, ~ updated, = unchanged):", file=sys.stderr)
    return _summary(store.add(name, args.paths, progress=Progress(args.paths)))


def _sync(args: argparse.Namespace) -> int:
    run_on_idle_cpu()
    _, store, name = _context(args, existing_ok=False)
    print(f"Mirroring {args.directory} into '{name}':", file=sys.stderr)
    return _summary(store.sync(name, args.directory, progress=Progress([args.directory])))


def _load_shipped(args: argparse.Namespace) -> int:
    from relay.agents import AgentRegistry
    from relay.services.retrieval import open_knowledge

    run_on_idle_cpu()
    settings = settings_from(args, RELAY_LOG_LEVEL="warning")
    agents = AgentRegistry.load(settings.prompts_dir, default=settings.default_agent)
    store = open_knowledge(settings).store
    status = 0
    for agent in agents.agents.values():
        name = agent.knowledge_collection
        if not name or not (settings.documents_dir / name).is_dir():
            continue
        folder = settings.documents_dir / name
        print(f"{agent.name}: {folder} -> '{name}'", file=sys.stderr)
        status |= _summary(store.sync(name, folder, progress=Progress([folder])))
    return status


def _list(args: argparse.Namespace) -> int:
    _, store, name = _context(args)
    docs = store.list_documents(name)
    if not docs:
        print(f"'{name}' has no documents.")
        return 0
    print(f"{'document':40} {'version':>7} {'chunks':>6}  loaded")
    for doc in docs:
        print(f"{doc.doc_id:40} {doc.version:>7} {doc.chunks:>6}  {doc.loaded_at}")
    return 0


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
    _, store, name = _context(args)
    hits = store.search(name, args.question, k=args.k)
    if not hits:
        print("No passages found.")
        return 0
    for number, hit in enumerate(hits, 1):
        where = " > ".join(hit.heading_path)
        print(f"{number}. {hit.score:.3f}  {hit.source} (v{hit.doc_version}) [{where}]")
        print("   " + hit.text.replace("\n", "\n   ")[:600])
    return 0
