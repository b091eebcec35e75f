"""The CLI skeleton: global options, exit codes, errors with hints, JSON errors, start-up."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import CliCall
from yktool.host import Host
from yktool.inventory import Registry

VENV_YKTOOL = Path(__file__).resolve().parent.parent / ".venv/bin/yktool"


def test_help_lists_commands_and_exit_codes(cli: CliCall) -> None:
    result = cli("--help")
    assert result.exit_code == 0
    for name in ("commission", "replace", "verify", "luks", "tpm", "key", "ssh", "pam"):
        assert name in result.stdout
    assert "4 refused for safety" in result.stdout


def test_console_script_runs(tmp_path: Path) -> None:
    out = subprocess.run([str(VENV_YKTOOL), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "0.1.0" in out.stdout


def test_unknown_command_is_a_usage_error(cli: CliCall) -> None:
    result = cli("no-such-command")
    assert result.exit_code == 2
    assert "No such command" in result.stderr


def test_registry_round_trip_and_dedup(root: Path) -> None:
    host = Host(root)
    with Registry.update(host) as reg:
        assert reg.record("primary", "luks", uuid="u-1", keyslot=1, credential_id="Y3JlZA==")
        assert not reg.record("primary", "luks", uuid="u-1", keyslot=1, credential_id="Y3JlZA==")
        reg.ensure_key("backup", aaguid="a-b")
    loaded = Registry.load(host)
    assert [k.nickname for k in loaded.keys] == ["primary", "backup"]
    owner = loaded.owner_of("Y3JlZA==")
    assert owner is not None and owner.nickname == "primary"
    assert host.mode("/etc/yktool/keys.toml") == 0o644
    assert loaded.forget("luks", uuid="u-1") == 1


def test_malformed_registry_is_a_clear_error(root: Path) -> None:
    (root / "etc/yktool").mkdir(parents=True)
    (root / "etc/yktool/keys.toml").write_text("[[keys]\nnick")
    try:
        Registry.load(Host(root))
    except Exception as exc:  # noqa: BLE001
        assert "not valid TOML" in str(exc)
    else:
        raise AssertionError("malformed registry accepted")


def test_json_error_is_machine_readable(cli: CliCall, root: Path) -> None:
    (root / "etc/yktool").mkdir(parents=True)
    (root / "etc/yktool/keys.toml").write_text("garbage = [")
    result = cli("--root", root, "--json", "keys", "list")
    assert result.exit_code == 2
    payload = json.loads(result.stdout)
    assert payload["ok"] is False and payload["exit_code"] == 2 and payload["hint"]
    assert "not valid TOML" in result.stderr


def test_json_bad_flag_is_a_json_error_too(cli: CliCall) -> None:
    result = cli("--json", "luks", "status", "--no-such-flag", "x")
    assert result.exit_code == 2
    payload = json.loads(result.stdout)
    assert payload["ok"] is False and payload["error"] == "UsageError" and "--no-such-flag" in payload["message"]
    plain = cli("luks", "status", "--no-such-flag", "x")
    assert plain.exit_code == 2 and plain.stdout == "" and "No such option" in plain.stderr
