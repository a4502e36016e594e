"""What ``relay bench`` needs to measure relay as it is served: knowledge on, several workers.

* :func:`copy_documents`: the shipped documents of the bench agent's collection, copied into
  the throwaway data directory so that the server loads them at start (autoload), as a fresh
  install does;
* :func:`worker_metrics`: ``/metrics.json`` of every worker (each answers for its own process;
  fresh connections reach them in turn), so that memory and the retrieval counters add up
  over workers;
* :func:`retrieval_share`: what retrieval cost per turn over the measured phase (CPU, wall time,
  embeddings, cache hits, skipped turns), from the difference of two such snapshots;
* :func:`tree_cpu_seconds`: CPU of a process and its descendants (``--workers`` forks them).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

#: Counters of the retriever summed over workers (see KnowledgeRetriever.counters).
_SUMMED = (
    "retrievals",
    "retrieval_failures",
    "retrieval_shed",
    "retrieval_skipped",
    "retrieval_prefetched",
    "query_embeddings",
    "query_cache_hits",
    "query_embed_cpu_ms",
    "retrieval_cpu_ms",
    "retrieval_ms_total",
    "index_rebuilds",
    "active_sessions",
    "rss_kb",
)


def shipped_documents(collection: str) -> Path | None:
    """``data/knowledge/<collection>`` of the source tree, if there is one."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        folder = root / "data" / "knowledge" / collection
        if folder.is_dir():
            return folder
    return None


def copy_documents(collection: str, data_dir: Path) -> Path:
    """Copy the shipped documents of ``collection`` to ``<data_dir>/knowledge/<collection>``
    (where ``RELAY_KNOWLEDGE_AUTOLOAD`` loads them from)."""
    source = shipped_documents(collection)
    if source is None:
        raise RuntimeError(f"cannot find the shipped documents data/knowledge/{collection}")
    target = data_dir / "knowledge" / collection
    shutil.copytree(source, target)
    return target


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of sorted, non-empty ``ordered``: linear interpolation between
    closest ranks (numpy's default)."""
    k = (len(ordered) - 1) * q / 100
    low = math.floor(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


async def _one(http: httpx.AsyncClient, base: str) -> dict[str, Any] | None:
    try:
        # a new connection each time, so that every worker gets asked in the end
        response = await http.get(
            base + "/metrics.json", timeout=10.0, headers={"Connection": "close"}
        )
        data: dict[str, Any] = response.json()
        return data if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


async def worker_metrics(
    http: httpx.AsyncClient, base: str, workers: int, *, attempts: int = 40
) -> dict[int, dict[str, Any]]:
    """``/metrics.json`` of each worker, by pid (fewer than ``workers`` when some did not
    answer within ``attempts`` requests)."""
    found: dict[int, dict[str, Any]] = {}
    for _ in range(max(attempts, workers)):
        data = await _one(http, base)
        if data is not None:
            found.setdefault(int(data.get("pid", 0)), data)
        if len(found) >= workers:
            break
    return found


def summed(snapshot: dict[int, dict[str, Any]]) -> dict[str, float]:
    """The counters of every worker added up."""
    total: dict[str, float] = {}
    for data in snapshot.values():
        for key in _SUMMED:
            if isinstance(data.get(key), (int, float)):
                total[key] = total.get(key, 0.0) + float(data[key])
    return total


async def wait_until_ready(
    http: httpx.AsyncClient, base: str, workers: int, timeout: float = 180.0
) -> None:
    """Wait until every worker has its knowledge index built (the documents loaded and the
    model warm), so that no measured turn pays for start-up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshot = await worker_metrics(http, base, workers)
        if len(snapshot) >= workers and all(
            (d.get("index_rebuilds") or 0) >= 1 for d in snapshot.values()
        ):
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the server's knowledge was not ready within {timeout:.0f} s")


def gc_passes(before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]]) -> list[int]:
    """Garbage-collector passes per generation (young, middle, full) between two snapshots of
    ``/metrics.json``, added up over the workers seen in both ([] when none was)."""
    passes: list[int] = []
    for pid in set(before) & set(after):
        start, end = before[pid].get("gc_collections"), after[pid].get("gc_collections")
        if not (isinstance(start, list) and isinstance(end, list) and len(start) == len(end)):
            continue
        delta = [int(b) - int(a) for a, b in zip(start, end, strict=True)]
        passes = [x + y for x, y in zip(passes, delta, strict=True)] if passes else delta
    return passes


def _growth(
    before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]]
) -> tuple[int, dict[str, float]]:
    """(workers seen in both snapshots, how much each summed counter grew over them)."""
    pids = set(before) & set(after)
    start = summed({p: before[p] for p in pids})
    end = summed({p: after[p] for p in pids})
    return len(pids), {key: end.get(key, 0.0) - start.get(key, 0.0) for key in end}


def index_rebuilds(before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]]) -> int:
    """Knowledge index rebuilds between two snapshots, over the workers seen in both."""
    return int(_growth(before, after)[1].get("index_rebuilds", 0.0))


def retrieval_share(
    before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]], turns: int
) -> dict[str, Any]:
    """Retrieval over the measured phase, per turn (workers seen in both snapshots only)."""
    seen, delta = _growth(before, after)
    if not seen or turns <= 0:
        return {}
    searched = delta.get("retrievals", 0.0)
    served = searched + delta.get("retrieval_skipped", 0.0)
    if served <= 0:
        return {"turns": 0}
    share: dict[str, Any] = {
        "workers_seen": seen,
        "turns": int(served),
        "searched": int(searched),
        "skipped": int(delta.get("retrieval_skipped", 0.0)),
        "failures": int(delta.get("retrieval_failures", 0.0)),
        "shed": int(delta.get("retrieval_shed", 0.0)),
        "query_embeddings": int(delta.get("query_embeddings", 0.0)),
        "query_cache_hits": int(delta.get("query_cache_hits", 0.0)),
        "prefetched": int(delta.get("retrieval_prefetched", 0.0)),
        "cpu_ms_per_turn": round(delta.get("retrieval_cpu_ms", 0.0) / served, 3),
        "wall_ms_per_turn": round(delta.get("retrieval_ms_total", 0.0) / served, 3),
    }
    if searched:
        share["embed_cpu_ms_per_embedding"] = round(
            delta.get("query_embed_cpu_ms", 0.0) / max(1.0, delta.get("query_embeddings", 0.0)), 3
        )
    return share


def memory_per_call(
    before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]], calls: int
) -> tuple[int | None, int | None, float | None]:
    """RSS with no calls and with ``calls`` idle calls, summed over the workers seen in both,
    and the difference per call."""
    pids = set(before) & set(after)
    if not pids or calls <= 0:
        return None, None, None
    rss0 = int(sum(before[p].get("rss_kb") or 0 for p in pids))
    rss = int(sum(after[p].get("rss_kb") or 0 for p in pids))
    active = int(sum(after[p].get("active_sessions") or 0 for p in pids))
    return rss0, rss, round((rss - rss0) / max(1, active), 1)


def tree_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of ``pid`` and all its descendants, living or reaped (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            parent = int(fields[1])
            children.setdefault(parent, []).append(int(entry))
            # utime + stime, plus cutime + cstime: children that ended and were waited for
            stats[int(entry)] = sum(int(f) for f in fields[11:15]) / tick
    if pid not in stats:
        return None
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += stats.get(current, 0.0)
        todo.extend(children.get(current, []))
    return total


async def settle_all(
    http: httpx.AsyncClient, base: str, workers: int, active: int, timeout: float = 30.0
) -> dict[int, dict[str, Any]]:
    """Wait until the workers hold ``active`` sessions between them, have stored what they
    were handed and finished the post-call work of the calls that ended; their metrics then
    (whatever they are at the deadline)."""
    deadline = time.monotonic() + timeout
    snapshot = await worker_metrics(http, base, workers)
    if not snapshot:  # not relay (``--url`` at another server): nothing to wait for
        return snapshot
    while time.monotonic() < deadline:
        total = summed(snapshot)
        if (
            len(snapshot) >= workers
            and total.get("active_sessions") == active
            and all_done(snapshot)
        ):
            await asyncio.sleep(0.5)
            return await worker_metrics(http, base, workers)
        await asyncio.sleep(0.1)
        snapshot = await worker_metrics(http, base, workers)
    return snapshot


def all_done(snapshot: dict[int, dict[str, Any]]) -> bool:
    """No worker has records to store or post-call work to finish."""
    return not any(
        (d.get("recorder_pending") or 0) + (d.get("postcall_pending") or 0)
        for d in snapshot.values()
    )


def reference_like(collection: str, passages: int = 4) -> str | None:
    """Text the size and shape of the passages relay hands the model for one turn (the first
    ``passages`` paragraphs of the shipped documents), for the LLM-hop baseline's request."""
    from relay.services.retrieval import INTRO

    folder = shipped_documents(collection)
    if folder is None:
        return None
    found: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.suffix != ".md":
            continue
        for paragraph in path.read_text(encoding="utf-8").split("\n\n"):
            if len(paragraph) > 200 and len(found) < passages:
                found.append(f"[{len(found) + 1}] ({path.name}: {path.stem})\n{paragraph.strip()}")
    return "\n\n".join(["Current date and time: Sunday 6 December 2026, 11:00.", INTRO, *found])


#: The histogram of relay's event-loop lag probe (relay.web.operations.LoopLag).
LAG_SERIES = "relay_event_loop_lag_seconds_bucket"


async def lag_buckets(http: httpx.AsyncClient, base: str) -> dict[float, float]:
    """The loop-lag histogram's cumulative buckets (upper bound in seconds → count) from
    ``/metrics``, every worker added up; empty when the server exposes none."""
    try:
        response = await http.get(base + "/metrics", timeout=10.0)
    except httpx.HTTPError:
        return {}
    if response.status_code != 200:
        return {}
    buckets: dict[float, float] = {}
    try:
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == LAG_SERIES:
                    le = float(sample.labels["le"])  # "+Inf" reads as inf
                    buckets[le] = buckets.get(le, 0.0) + sample.value
    except ValueError:  # not the Prometheus text format: not relay
        return {}
    return buckets


def lag_quantiles(
    before: dict[float, float], after: dict[float, float], quantiles: tuple[float, ...]
) -> dict[str, Any]:
    """How late the loop ran during a phase, from the two scrapes: the number of samples, and
    each quantile as the upper bound of the bucket it falls in (``"> 10000"`` ms past the last
    finite bound), in milliseconds."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    found: dict[str, Any] = {"samples": int(total)}
    if total <= 0:
        return found
    finite = [b for b in bounds if b != float("inf")]
    for q in quantiles:
        rank = q * total
        bound = next((b for b, c in zip(bounds, counts, strict=True) if c >= rank), bounds[-1])
        key = f"p{round(q * 100)}_ms"
        if bound == float("inf"):
            found[key] = f"> {finite[-1] * 1000:g}" if finite else None
        else:
            found[key] = round(bound * 1000, 3)
    return found
