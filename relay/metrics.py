"""Prometheus instruments for relay, and the text exposition of them.

A tiny API (``metrics.call_started(agent)``, ``metrics.observe_first_frame(agent, seconds)``...)
that any layer may call, as it may log: the instruments are process-wide, as Prometheus'
client library expects, and each call is an O(1) increment or observation.

With several worker processes (``relay serve --workers N``) the command line points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before the workers start; the client library
then keeps each worker's values in memory-mapped files there and :func:`exposition` adds them up,
so any worker answers ``/metrics`` for all of them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

__all__ = ["CONTENT_TYPE", "exposition", "multiprocess_dir"]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

# The *_created series double the output and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Latency buckets (seconds) for what a caller waits on: sub-millisecond to several seconds.
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Model and tool work: tens of milliseconds to tens of seconds.
_SLOW = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 30.0)

CALLS_STARTED = Counter(
    "relay_calls_started", "Call sessions set up, by agent.", ["agent"]
)  # fmt: skip
CALLS_ENDED = Counter(
    "relay_calls_ended", "Call sessions closed, by agent and outcome.", ["agent", "outcome"]
)
LIVE_CALLS = Gauge(
    "relay_live_calls", "ConversationRelay sockets open now.", multiprocess_mode="livesum"
)
CALLS_REJECTED = Counter(
    "relay_calls_rejected",
    "Incoming calls answered with the polite busy line, by reason (capacity, draining).",
    ["reason"],
)
TURNS = Counter("relay_turns", "Turns answered, by agent and outcome.", ["agent", "outcome"])
FIRST_FRAME = Histogram(
    "relay_first_frame_seconds",
    "From a final prompt to the first text frame sent to Twilio.",
    ["agent"],
    buckets=_FAST,
)
MODEL_FIRST_TOKEN = Histogram(
    "relay_model_first_token_seconds",
    "From the model request to its first token.",
    ["agent"],
    buckets=_SLOW,
)
RETRIEVAL = Histogram(
    "relay_retrieval_seconds", "Knowledge retrieval before a turn.", ["agent"], buckets=_FAST
)
TOOL = Histogram("relay_tool_seconds", "Tool run time, by tool.", ["tool"], buckets=_SLOW)
MODEL_QUEUE = Histogram(
    "relay_model_queue_seconds",
    "Wait for a model request slot (RELAY_MAX_LLM_CONCURRENCY).",
    buckets=_FAST,
)
MODEL_RETRIES = Counter(
    "relay_model_retries", "Model requests retried before the first token, by kind.", ["kind"]
)
MODEL_FAILURES = Counter(
    "relay_model_failures", "Model requests that failed for good, by kind.", ["kind"]
)
TOKENS = Counter(
    "relay_model_tokens",
    "Tokens the model server reported, by agent, model and kind (prompt, completion).",
    ["agent", "model", "kind"],
)
APOLOGIES = Counter("relay_apologies", "Apologies spoken for a failed turn.", ["agent"])
INTERRUPTS = Counter("relay_interrupts", "Caller barge-ins.", ["agent"])
INVALID_FRAMES = Counter("relay_invalid_frames", "Inbound frames that did not parse.")
RECORDER_FAILURES = Counter("relay_recorder_failures", "Recorder write attempts that failed.")
RECORDER_PARKED = Counter(
    "relay_recorder_parked", "Rows the database refused, kept in parked_records instead."
)
RECORDER_LOST = Counter(
    "relay_recorder_lost", "Rows the database refused that could not be parked."
)
RECORDER_DROPPED = Counter(
    "relay_recorder_dropped_events", "Events dropped because the recorder's backlog was full."
)
RECORDER_RESTORED = Counter(
    "relay_recorder_restored",
    "Records taken back at start from spill files (what a stop during a database outage kept).",
)
RECORDER_BACKLOG = Gauge(
    "relay_recorder_backlog", "Records waiting to be written.", multiprocess_mode="livesum"
)
EVENT_LOOP_LAG = Histogram(
    "relay_event_loop_lag_seconds",
    "How late a timer fired on the worker's event loop (sampled twice a second): every frame, "
    "token and turn waits about this long for its turn when the worker is busy.",
    buckets=_FAST,
)
KNOWLEDGE_FAILURES = Counter(
    "relay_knowledge_failures", "Knowledge retrievals that failed or timed out."
)
KNOWLEDGE_SHED = Counter(
    "relay_knowledge_shed",
    "Knowledge retrievals refused at once because the searches queued ahead would keep them "
    "past their deadline (counted in relay_knowledge_failures too).",
)
RATE_LIMITED = Counter(
    "relay_rate_limited", "Requests answered 429, by scope (forged, admin).", ["scope"]
)


def call_started(agent: str) -> None:
    CALLS_STARTED.labels(agent).inc()


def call_ended(agent: str, outcome: str) -> None:
    CALLS_ENDED.labels(agent, outcome).inc()


def observe_first_frame(agent: str, seconds: float) -> None:
    FIRST_FRAME.labels(agent).observe(seconds)


#: Tool names come from the model, which may invent them: at most this many become labels.
MAX_TOOL_LABELS = 64
_tool_labels: set[str] = set()


def observe_tool(tool: str, seconds: float) -> None:
    if tool not in _tool_labels:
        if len(_tool_labels) >= MAX_TOOL_LABELS:
            tool = "other"
        else:
            _tool_labels.add(tool)
    TOOL.labels(tool).observe(seconds)


def turn_completed(agent: str, cancelled: str | None, timings: Mapping[str, float]) -> None:
    """A turn's summary: counts it by outcome (``answered``, or why it was cancelled) and
    observes its model and retrieval times (``perf_counter`` values)."""
    TURNS.labels(agent, cancelled or "answered").inc()
    asked = timings.get("llm_request_at")
    first = timings.get("first_token_at")
    if asked is not None and first is not None:
        MODEL_FIRST_TOKEN.labels(agent).observe(first - asked)
    received, retrieved = timings.get("prompt_received_at"), timings.get("retrieval_done_at")
    if received is not None and retrieved is not None:
        RETRIEVAL.labels(agent).observe(retrieved - received)


def model_replied(agent: str, model: str, usage: Mapping[str, Any] | None) -> None:
    """Token usage of one model reply (servers report it with ``stream_options.include_usage``)."""
    if not usage:
        return
    for kind in ("prompt", "completion"):
        count = usage.get(f"{kind}_tokens")
        if isinstance(count, int) and count > 0:
            TOKENS.labels(agent, model, kind).inc(count)


def error_kind(exc: BaseException) -> str:
    """A short, bounded label for a model error: ``timeout``, ``http-429``, ``connection``..."""
    kind = getattr(exc, "kind", None)  # relay.errors.LLMError says what failed
    if isinstance(kind, str) and kind:
        status = getattr(exc, "status", None)
        return f"{kind}-{status}" if kind == "status" and isinstance(status, int) else kind
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return f"http-{status}"
    name = type(exc).__name__
    if name == "FirstTokenTimeout":
        return "first-token-timeout"
    message = str(exc).lower()
    if "timed out" in message or "timeout" in message:
        return "timeout"
    if "connect" in message or "closed" in message or "reset" in message:
        return "connection"
    return "other"


def model_retried(exc: BaseException) -> None:
    MODEL_RETRIES.labels(error_kind(exc)).inc()


def model_failed(exc: BaseException) -> None:
    MODEL_FAILURES.labels(error_kind(exc)).inc()


def apologised(agent: str) -> None:
    APOLOGIES.labels(agent).inc()


def interrupted(agent: str) -> None:
    INTERRUPTS.labels(agent).inc()


def multiprocess_dir() -> str | None:
    """The shared directory of multiprocess mode, when the workers share one."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition() -> bytes:
    """Every instrument in the text exposition format (all workers' values in multiprocess mode)."""
    if multiprocess_dir() is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def prepare_multiprocess(workers: int) -> Callable[[], None]:
    """For ``relay serve --workers N``, in the parent before the workers start: point
    ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory (unless the operator set one) so the
    workers share their values. Returns what removes the directory after the server stops."""
    if workers <= 1 or multiprocess_dir() is not None:
        return lambda: None
    path = tempfile.mkdtemp(prefix="relay-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path

    def cleanup() -> None:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(path, ignore_errors=True)

    return cleanup


def process_exited(pid: int) -> None:
    """Drop a finished worker's live gauges (multiprocess mode)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
