"""Installs are reproducible: every dependency's major is pinned in pyproject.toml, and
constraints.txt (what the Docker build installs with ``-c``) pins an exact version of each that
satisfies its range, the versions the suite ran with."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def requirements() -> list[Requirement]:
    found = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in PROJECT["optional-dependencies"].values():
        found.extend(Requirement(r) for r in extra)
    return found


def constraints() -> dict[str, str]:
    pinned = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not name==version"
            pinned[canonicalize_name(name)] = version
    return pinned


def test_every_dependency_has_an_upper_bound() -> None:
    unbounded = [
        str(r)
        for r in requirements()
        if not any(s.operator in ("<", "==", "~=") for s in r.specifier)
        and canonicalize_name(r.name) not in {"tzdata", "ruff", "mypy"}  # data / dev tools
    ]
    assert unbounded == []


def test_constraints_pin_every_dependency_within_its_range() -> None:
    pinned = constraints()
    wrong = []
    for requirement in requirements():
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            wrong.append(f"{requirement} (constraints: {version})")
    assert wrong == []


def test_the_docker_build_installs_with_the_constraints() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "constraints.txt" in dockerfile.split("RUN python -m venv", 1)[0]
    assert "pip install --quiet -c constraints.txt ." in dockerfile
