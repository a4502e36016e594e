"""The outcome of a replay, as text for a terminal and as JUnit XML."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from xml.etree import ElementTree

from relay.recordings.format import Recording
from relay.replay.compare import Divergence, Item, Line, shorten
from relay.replay.expectations import Checked, Mode


@dataclass
class Report:
    """The outcome of replaying one recording."""

    name: str
    call_sid: str
    mode: Mode
    lines: list[Line] = field(default_factory=list)
    changes: list[tuple[Item | None, Item | None]] = field(default_factory=list)
    divergences: list[Divergence] = field(default_factory=list)
    history: list[str] = field(default_factory=list)  # differences in the stored history
    checked: Checked = field(default_factory=Checked)
    problems: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)
    seconds: float = 0.0
    recorded: Recording | None = None
    replayed: Recording | None = None  # in-process: what the server recorded now

    @property
    def failed(self) -> bool:
        return bool(self.regressions)


_LABELS = {
    "caller": "caller",
    "agent": "agent",
    "tool": "tool",
    "end": "end",
    "language": "language",
    "digits": "keys",
    "error": "error",
    "supervisor": "console",
}


def render(report: Report, *, full: bool) -> str:
    """The report as text: the listing when asked or when something changed, then a verdict."""
    out: list[str] = []
    mode = report.mode
    title = report.name if report.name == report.call_sid else f"{report.name} · {report.call_sid}"
    title += f" · {mode}"
    if report.recorded is not None:
        title += f" · agent {report.recorded.call.get('agent')}"
    out.append(f"== {title}")
    show = full or report.failed or report.changes
    if show:
        for line in report.lines:
            label = _LABELS.get(line.kind, line.kind)
            mark = {" ": " ", "=": " ", "-": "-", "+": "+"}[line.mark]
            side = {"-": "(recorded) ", "+": "(now) "}.get(line.mark, "")
            out.append(f"  {mark} {label:<8} {side}{shorten(line.text, 400)}")
    for divergence in report.divergences:
        out.append(
            f"  ! LLM request {divergence.number} differs from the recording: {divergence.summary}"
        )
        out.extend("      " + line for line in divergence.diff.splitlines()[:80])
    if report.history:
        out.append("  ! the stored history differs:")
        out.extend("      " + line for line in report.history[:40])
    for passed in report.checked.passed if show else []:
        out.append(f"  ✓ expected: {passed}")
    for failed in report.checked.failed:
        out.append(f"  ✗ expected: {failed}")
    for skipped in report.checked.skipped:
        out.append(f"  ? not checked: {skipped}")
    for problem in report.problems:
        out.append(f"  ! {problem}")
    if report.failed:
        out.append(f"  FAIL ({report.seconds:.2f} s): " + "; ".join(report.regressions[:5]))
    elif report.changes:
        out.append(
            f"  ok ({report.seconds:.2f} s): {len(report.changes)} change(s) in wording, none a regression in live mode"
        )
    else:
        out.append(f"  ok ({report.seconds:.2f} s): no differences")
    return "\n".join(out) + "\n"


def junit(reports: Sequence[Report], seconds: float) -> bytes:
    """JUnit XML: one test case per recording, failures carrying the listing."""
    failures = sum(1 for r in reports if r.failed)
    suites = ElementTree.Element(
        "testsuites", tests=str(len(reports)), failures=str(failures), time=f"{seconds:.3f}"
    )
    suite = ElementTree.SubElement(
        suites,
        "testsuite",
        name="relay-replay",
        tests=str(len(reports)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=f"{seconds:.3f}",
    )
    for report in reports:
        case = ElementTree.SubElement(
            suite,
            "testcase",
            classname=f"relay.replay.runner.{report.mode}",
            name=report.name,
            time=f"{report.seconds:.3f}",
        )
        if report.failed:
            failure = ElementTree.SubElement(
                case,
                "failure",
                message=shorten("; ".join(report.regressions), 500),
                type="regression",
            )
            failure.text = render(report, full=True)
        else:
            ElementTree.SubElement(case, "system-out").text = render(report, full=True)
    ElementTree.indent(suites)
    data: bytes = ElementTree.tostring(suites, encoding="utf-8", xml_declaration=True)
    return data
