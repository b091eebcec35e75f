"""The project's own bookkeeping stays in step: one version, the same linter pins everywhere."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _pinned(name: str) -> str:
    for requirement in PYPROJECT["project"]["optional-dependencies"]["test"]:
        if requirement.startswith(f"{name}=="):
            return str(requirement.split("==", 1)[1])
    raise AssertionError(f"{name} is not pinned in the test extra")


def test_the_version_is_written_once() -> None:
    out = subprocess.run(
        [str(Path(sys.executable).with_name("yktool")), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.split()[-1] == version("yktool") == PYPROJECT["project"]["version"]
    written = [
        p for p in (REPO / "yktool").rglob("*.py") if re.search(r"^__version__\s*=", p.read_text(), re.MULTILINE)
    ]
    assert written == []


def test_pre_commit_runs_the_ruff_pyproject_pins() -> None:
    config = (REPO / ".pre-commit-config.yaml").read_text()
    revs = re.findall(r"ruff-pre-commit\s*\n\s*rev:\s*v?(\S+)", config)
    assert revs == [_pinned("ruff")]
    assert re.search(r"entry:\s*\.venv/bin/mypy", config)  # the mypy of the test extra, in .venv


def test_changelog_names_the_version() -> None:
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert f"## [{PYPROJECT['project']['version']}]" in changelog
