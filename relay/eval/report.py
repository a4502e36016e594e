"""What ``relay eval`` prints and writes: pass rates per scenario, and JUnit XML for CI."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from relay.eval.runner import RunResult


@dataclass(frozen=True)
class ScenarioSummary:
    scenario: str
    agent: str
    runs: int
    passed: int

    @property
    def rate(self) -> float:
        return self.passed / self.runs if self.runs else 0.0


def summaries(results: Sequence[RunResult]) -> list[ScenarioSummary]:
    order: list[tuple[str, str]] = []
    counts: dict[tuple[str, str], list[int]] = {}
    for result in results:
        key = (result.scenario, result.agent)
        if key not in counts:
            order.append(key)
            counts[key] = [0, 0]
        counts[key][0] += 1
        counts[key][1] += int(result.passed)
    return [ScenarioSummary(s, a, *counts[(s, a)]) for s, a in order]


def text_report(results: Sequence[RunResult], *, min_rate: float) -> str:
    lines = []
    for summary in summaries(results):
        mark = "PASS" if summary.rate >= min_rate else "FAIL"
        lines.append(
            f"{mark}  {summary.scenario} ({summary.agent}): {summary.passed}/{summary.runs} runs "
            f"passed ({summary.rate:.0%})"
        )
        for result in results:
            if result.scenario == summary.scenario and not result.passed:
                lines.append(f"      run {result.run} ({result.call_sid}):")
                lines.extend(f"        - {failure}" for failure in result.failures)
    total = len(results)
    passed = sum(r.passed for r in results)
    lines.append(f"{passed}/{total} runs passed.")
    return "\n".join(lines) + "\n"


def junit(results: Sequence[RunResult], path: Path) -> None:
    """JUnit XML: one ``testsuite`` per scenario, one ``testcase`` per run."""
    root = ET.Element(
        "testsuites",
        name="relay eval",
        tests=str(len(results)),
        failures=str(sum(not r.passed for r in results)),
        time=f"{sum(r.seconds for r in results):.2f}",
    )
    for summary in summaries(results):
        runs = [r for r in results if r.scenario == summary.scenario and r.agent == summary.agent]
        suite = ET.SubElement(
            root, "testsuite", name=summary.scenario, tests=str(summary.runs),
            failures=str(summary.runs - summary.passed), time=f"{sum(r.seconds for r in runs):.2f}",
        )  # fmt: skip
        for result in runs:
            case = ET.SubElement(
                suite, "testcase", classname=f"relay.eval.{result.agent}",
                name=f"{result.scenario} run {result.run}", time=f"{result.seconds:.2f}",
            )  # fmt: skip
            if not result.passed:
                failure = ET.SubElement(
                    case, "failure", message="; ".join(result.failures)[:500], type="expectation"
                )
                failure.text = "\n".join(result.failures)
            out = ET.SubElement(case, "system-out")
            out.text = "\n".join(f"{who}: {text}" for who, text in result.transcript)
    ET.indent(root)
    path.write_bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n")
