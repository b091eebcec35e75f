"""--json: one envelope on every command, documented with an example per command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest

from tests.conftest import CliCall
from tests.test_cli_every_command import leaf_commands
from yktool.cli import main_group
from yktool.cli.output import emit_json
from yktool.errors import CheckFailed

DOC = Path(__file__).resolve().parent.parent / "docs/json.md"


def test_docs_show_an_answer_for_every_command() -> None:
    text = DOC.read_text()
    documented = set(re.findall(r"^### `yktool ([a-z0-9 -]+)`$", text, re.M))
    missing = {" ".join(p) for p in leaf_commands()} - documented
    assert not missing, f"docs/json.md has no example for: {sorted(missing)}"
    blocks = re.findall(r"```json\n(.*?)\n```", text, re.S)
    assert len(blocks) >= len(documented)
    for block in blocks:
        doc = json.loads(block)  # every example is valid JSON
        if "schema" in doc:
            assert doc["schema"] == 1 and isinstance(doc["ok"], bool), block[:200]


def test_verify_splits_each_fix_into_command_and_nixos(cli: CliCall, root: Path) -> None:
    (root / "etc").mkdir()
    r = cli("--root", root, "--json", "verify")
    doc = json.loads(r.stdout)
    assert doc["schema"] == 1 and doc["ok"] is False and r.exit_code == 1
    misses = [c for c in doc["checks"] if c["status"] in ("fail", "warn") and c["fix"]]
    assert misses
    both = [c for c in misses if "NixOS:" in c["fix"]]
    assert both, "some fix names a NixOS option"
    for c in misses:
        assert c["fix_command"] is None or "NixOS:" not in c["fix_command"], c
        assert (c["fix_nixos"] is not None) == ("NixOS:" in c["fix"]), c
        assert c["fix"].startswith(c["fix_command"] or "NixOS:"), c
        if c["fix_nixos"]:
            assert c["fix"].endswith(c["fix_nixos"]), c
    passed = [c for c in doc["checks"] if c["status"] == "pass"]
    assert all(c["fix_command"] is None and c["fix_nixos"] is None for c in passed)


def test_signing_stdin_with_json_is_refused_before_anything(cli: CliCall) -> None:
    r = cli("--json", "ssh", "sign", "-n", "file", "-f", "/nonexistent/key", "-", input="data")
    assert r.exit_code == 2
    assert json.loads(r.stdout)["error"] == "UsageError" and "stdout" in r.stderr


def test_an_answer_then_a_failure_is_still_one_document(cli: CliCall, monkeypatch: pytest.MonkeyPatch) -> None:
    # as `luks test-unlock` does when a token fails: the answer (ok false) goes out, then the error
    @click.command("probe")
    def probe() -> None:
        emit_json({"ok": False, "tokens": []})
        raise CheckFailed("1 of 1 token(s) do not open the volume", "see above")

    monkeypatch.setitem(main_group.commands, "probe", probe)
    r = cli("--json", "probe")
    assert r.exit_code == 1
    assert json.loads(r.stdout) == {"schema": 1, "ok": False, "tokens": []}  # one document
    assert "yktool: error: 1 of 1 token(s)" in r.stderr


def test_commission_splits_its_verify_fixes_too(cli: CliCall, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "home/alice").mkdir(parents=True)
    (root / "etc/passwd").write_text("alice:x:1000:1000::/home/alice:/bin/sh\n")
    r = cli(
        "--json",
        "--root",
        root,
        "--device",
        f"sim:{tmp_path / 'k.json'}",
        "--yes",
        "commission",
        "--user",
        "alice",
        "--no-backup",
        "--steps",
        "verify",
        "--new-pin-stdin",
        input="123456\n",
    )
    doc = json.loads(r.stdout)
    assert doc["schema"] == 1 and doc["ok"] is False and r.exit_code == 1
    udev = next(c for c in doc["verify"] if c["id"] == "hw.udev.lock_rule")
    assert (udev["fix_command"], udev["fix_nixos"]) == ("yktool udev install", "yktool udev install --nixos")
