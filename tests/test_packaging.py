"""The package list in pyproject.toml covers every folder, and flows/ installs (and is type-checked) as yktool.flows."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed() -> None:
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "yktool").rglob("__init__.py")}
    assert found | {"yktool.flows", "yktool.udev_assets"} == listed


def test_mypy_sees_flows_as_yktool_flows() -> None:
    # [tool.mypy] checks flows/ through this link, under the name setuptools installs it as
    link = REPO / ".typecheck" / "yktool" / "flows"
    assert link.is_symlink() and link.resolve() == REPO / "flows"
    mypy = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]
    assert ".typecheck/yktool/flows" in mypy["files"] and ".typecheck" in mypy["mypy_path"]
    overridden = {m for o in mypy.get("overrides", []) for m in o["module"]}
    assert not {m for m in overridden if m.startswith("yktool")}  # no Any for yktool.flows


def test_flows_import_as_yktool_flows_outside_the_checkout(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import yktool.flows.state as s; print(s.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("flows/state.py")


def test_wheel_ships_flows_and_udev_assets(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    import zipfile

    names = zipfile.ZipFile(next(tmp_path.glob("yktool-*.whl"))).namelist()
    for wanted in (
        "yktool/flows/state.py",
        "yktool/udev_assets/yktool-lock",
        "yktool/udev_assets/yktool-lock.rules.in",
        "yktool/cli/__init__.py",
        "yktool/py.typed",
    ):
        assert wanted in names
