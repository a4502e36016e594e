"""The Prometheus instruments: labels, error kinds, and multiprocess mode summing workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from relay import metrics
from relay.errors import FirstTokenTimeout, LLMError


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_error_kinds_are_short_and_bounded() -> None:
    assert metrics.error_kind(FirstTokenTimeout(8.0)) == "timeout"
    assert metrics.error_kind(LLMError("HTTP 503", kind="status", status=503)) == "status-503"
    assert metrics.error_kind(LLMError("reset", kind="connect")) == "connect"


def test_turn_completed_observes_model_and_retrieval_times() -> None:
    before = samples(metrics.exposition().decode())
    timings = {"prompt_received_at": 10.0, "retrieval_done_at": 10.004,
               "llm_request_at": 10.005, "first_token_at": 10.305}  # fmt: skip
    metrics.turn_completed("unit-agent", None, timings)
    metrics.turn_completed("unit-agent", "interrupted", {"prompt_received_at": 11.0})
    after = samples(metrics.exposition().decode())

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("relay_turns_total", agent="unit-agent", outcome="answered") == 1
    assert delta("relay_turns_total", agent="unit-agent", outcome="interrupted") == 1
    assert delta("relay_model_first_token_seconds_count", agent="unit-agent") == 1
    assert abs(delta("relay_model_first_token_seconds_sum", agent="unit-agent") - 0.3) < 1e-6
    assert delta("relay_retrieval_seconds_count", agent="unit-agent") == 1


def test_multiprocess_mode_adds_up_every_worker(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    worker = (
        "from relay import metrics; metrics.call_started('piano'); metrics.LIVE_CALLS.inc(); "
        "metrics.observe_first_frame('piano', 0.002)"
    )
    for _ in range(2):
        subprocess.run([sys.executable, "-c", worker], env=env, check=True)
    scrape = (
        "import sys; from relay import metrics; sys.stdout.write(metrics.exposition().decode())"
    )
    text = subprocess.run(
        [sys.executable, "-c", scrape], env=env, check=True, capture_output=True, text=True
    ).stdout

    found = samples(text)
    assert found[("relay_calls_started_total", (("agent", "piano"),))] == 2
    assert found[("relay_live_calls", ())] == 2
    assert found[("relay_first_frame_seconds_count", (("agent", "piano"),))] == 2


def test_the_grafana_dashboard_reads_only_series_relay_exports() -> None:
    import re

    import orjson
    from prometheus_client.metrics import MetricWrapperBase

    exported: set[str] = set()
    for instrument in vars(metrics).values():
        if isinstance(instrument, MetricWrapperBase):
            name, kind = instrument._name, instrument._type
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
            exported.update(name + s for s in suffixes.get(kind, [""]))
    dashboard = orjson.loads(
        (Path(__file__).parents[1] / "deploy" / "grafana-relay.json").read_bytes()
    )
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\brelay_[a-z_]+", target["expr"])
    }

    assert used, "the dashboard has no relay series"
    assert used <= exported, used - exported
    assert len(used) >= 15


def test_invented_tool_names_cannot_grow_the_label_set_without_bound() -> None:
    for number in range(metrics.MAX_TOOL_LABELS + 10):
        metrics.observe_tool(f"invented_{number}", 0.01)
    found = samples(metrics.exposition().decode())
    tools = {dict(labels)["tool"] for name, labels in found if name == "relay_tool_seconds_count"}

    assert len(tools) <= metrics.MAX_TOOL_LABELS + 1
    assert "other" in tools


def test_the_alert_rules_read_only_series_relay_exports() -> None:
    import re

    import yaml
    from prometheus_client.metrics import MetricWrapperBase

    exported: set[str] = set()
    for instrument in vars(metrics).values():
        if isinstance(instrument, MetricWrapperBase):
            name, kind = instrument._name, instrument._type
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
            exported.update(name + s for s in suffixes.get(kind, [""]))
    rules = yaml.safe_load(
        (Path(__file__).parents[1] / "deploy" / "prometheus-alerts.yml").read_text()
    )
    used = {
        name
        for group in rules["groups"]
        for rule in group["rules"]
        for name in re.findall(r"\brelay_[a-z_]+", rule["expr"])
    }

    assert len(used) >= 8
    assert used <= exported, used - exported
