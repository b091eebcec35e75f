"""`yktool usbguard allow`: the allow rule for a key, appended once, or as the NixOS option line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CliCall
from yktool import usbguard
from yktool.host import Host
from yktool.udev import KeyUsb

KEY = KeyUsb("1050", "0407", "", "YubiKey OTP+FIDO+CCID", ("03:01:01", "03:00:00", "0b:00:00"))
FLAGS = [
    "--vendor",
    "1050",
    "--product",
    "0407",
    "--name",
    "YubiKey OTP+FIDO+CCID",
    "--interface",
    "03:01:01",
    "--interface",
    "03:00:00",
    "--interface",
    "0b:00:00",
]


def test_rule_line_format() -> None:
    assert usbguard.rule_line(KEY) == (
        'allow id 1050:0407 serial "" name "YubiKey OTP+FIDO+CCID" with-interface { 03:01:01 03:00:00 0b:00:00 }'
    )
    soft = KeyUsb("1209", "0001", "SK1", "yktool software key")
    assert usbguard.rule_line(soft) == (
        'allow id 1209:0001 serial "SK1" name "yktool software key" with-interface 03:00:00'
    )


def test_allow_appends_once_keeps_existing_rules_and_mode_0600(cli: CliCall, root: Path) -> None:
    existing = 'allow id 046d:c539 serial "" name "USB Receiver" with-interface { 03:01:01 03:01:02 }\n'
    Host(root).write_file(usbguard.RULES_PATH, existing, 0o600, backup=False)
    res = cli("--root", root, "--json", "usbguard", "allow", *FLAGS)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["added"] is True
    assert "placeholder" not in res.stderr
    path = root / "etc/usbguard/rules.conf"
    text = path.read_text()
    assert text == existing + usbguard.rule_line(KEY) + "\n"
    assert path.stat().st_mode & 0o777 == 0o600
    res2 = cli("--root", root, "--json", "usbguard", "allow", *FLAGS)
    assert json.loads(res2.stdout)["added"] is False
    assert path.read_text() == text  # no duplicate
    # the same model with another serial is another key: a rule of its own
    cli(
        "--root",
        root,
        "usbguard",
        "allow",
        "--nickname",
        "backup",
        "--vendor",
        "1050",
        "--product",
        "0407",
        "--serial",
        "0012345",
    )
    assert path.read_text().count("allow id 1050:0407") == 2
    keys = json.loads(cli("--root", root, "--json", "keys", "list").stdout)["keys"]
    assert {k["nickname"] for k in keys if any(e["kind"] == "usbguard" for e in k["enrollments"])} == {
        "primary",
        "backup",
    }


@pytest.mark.parametrize("stub", ["", "# USBGuard rules: placeholder stubs\n", "allow id XXXX:XXXX # TODO\n"])
def test_warns_on_a_placeholder_rules_file(cli: CliCall, root: Path, stub: str) -> None:
    Host(root).write_file(usbguard.RULES_PATH, stub, 0o600, backup=False)
    res = cli("--root", root, "usbguard", "allow", *FLAGS)
    assert res.exit_code == 0
    assert "was a placeholder" in res.stderr


def test_verify_rules_check_passes_after_allow_and_sees_placeholder(cli: CliCall, root: Path) -> None:
    Host(root).write_file(
        usbguard.DAEMON_CONF, "RuleFile=/etc/usbguard/rules.conf\nImplicitPolicyTarget=block\n", 0o600, backup=False
    )

    def status() -> str:
        out = cli("--root", root, "--json", "verify", "--only", "hw.usbguard.rules").stdout
        return str(json.loads(out)["checks"][0]["status"])

    Host(root).write_file(usbguard.RULES_PATH, "# placeholder\n", 0o600, backup=False)
    assert status() == "fail"
    cli("--root", root, "usbguard", "allow", *FLAGS)
    # the placeholder comment line stays, but a real rule is there now
    assert status() == "pass"


def test_nixos_line_parses_and_evaluates_to_the_rule(cli: CliCall, root: Path, tmp_path: Path) -> None:
    res = cli("--root", root, "usbguard", "allow", "--nixos", *FLAGS)
    assert res.exit_code == 0
    assert res.stdout.startswith("modules.hardware.usbguard.rules = [")
    assert not (root / "etc/usbguard/rules.conf").exists()
    f = tmp_path / "usbguard.nix"
    f.write_text("{\n" + res.stdout + "}\n")
    subprocess.run(["nix-instantiate", "--parse", str(f)], check=True, capture_output=True)
    out = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", f"(import {f}).modules.hardware.usbguard.rules"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert json.loads(out.stdout) == [usbguard.rule_line(KEY)]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--vendor", "1050", "--product", "04077"], "is not two 4-digit hex numbers"),
        (["--vendor", "1050", "--product", "0407", "--interface", "03:00"], "is not CC:SS:PP"),
        (["--vendor", "1050", "--product", "0407", "--name", 'Yubi"Key'], "quotes, backslashes or newlines"),
    ],
)
def test_bad_input_changes_nothing(cli: CliCall, root: Path, args: list[str], message: str) -> None:
    Host(root).write_file(usbguard.RULES_PATH, "allow id 046d:c539\n", 0o600, backup=False)
    before = (root / "etc/usbguard/rules.conf").read_bytes()
    res = cli("--root", root, "usbguard", "allow", *args)
    assert res.exit_code == 2 and message in res.stderr and "hint:" in res.stderr
    assert (root / "etc/usbguard/rules.conf").read_bytes() == before
    assert not (root / "etc/yktool/keys.toml").exists()


def test_placeholder_detection() -> None:
    assert usbguard.placeholder_reason(None) == "the rules file does not exist"
    assert usbguard.placeholder_reason("# only a comment\n\n") is not None
    assert usbguard.placeholder_reason("allow\n") == "line 1 allows every device: allow"
    for every in ("allow id *:*", 'allow with-connect-type "hotplug"', 'allow label "all"'):
        assert usbguard.placeholder_reason(f"{every}\n") == f"line 1 allows every device: {every}"
    for narrow in ("allow id 1050:*", "allow with-interface equals { 08:*:* }", 'allow serial "X"'):
        assert usbguard.placeholder_reason(f"{narrow}\n") is None
    assert usbguard.placeholder_reason("block id 1234:5678\n") == "the rules file has no allow rule"
    assert usbguard.placeholder_reason(usbguard.rule_line(KEY) + "\n") is None


def test_interfaces_of_a_plugged_in_key_come_from_sysfs(tmp_path: Path) -> None:
    base = tmp_path / "sys/bus/usb/devices"
    for name, vendor, product, serial, ifaces in (
        ("1-1", "046d", "c539", "", ["03:01:01"]),
        ("1-2", "1050", "0407", "0012345", ["03:01:01", "03:00:00", "0b:00:00"]),
        ("1-3", "1050", "0407", "0099999", ["03:00:00"]),
    ):
        d = base / name
        d.mkdir(parents=True)
        (d / "idVendor").write_text(vendor + "\n")
        (d / "idProduct").write_text(product + "\n")
        if serial:
            (d / "serial").write_text(serial + "\n")
        for i, iface in enumerate(ifaces):
            c, sc, p = iface.split(":")
            sub = d / f"{name}:1.{i}"
            sub.mkdir()
            (sub / "bInterfaceClass").write_text(c + "\n")
            (sub / "bInterfaceSubClass").write_text(sc + "\n")
            (sub / "bInterfaceProtocol").write_text(p + "\n")
    sysfs = tmp_path / "sys"
    assert usbguard.usb_interfaces("1050", "0407", "0012345", sysfs) == ("03:01:01", "03:00:00", "0b:00:00")
    assert usbguard.usb_interfaces("1050", "0407", "0099999", sysfs) == ("03:00:00",)
    assert usbguard.usb_interfaces("1050", "0120", "", sysfs) == ()
    assert usbguard.usb_interfaces("1050", "0407", "", tmp_path / "nope") == ()


def test_allow_without_interfaces_for_an_absent_real_key_warns(cli: CliCall, root: Path) -> None:
    res = cli("--root", root, "usbguard", "allow", "--vendor", "1050", "--product", "0407", "--serial", "77")
    assert res.exit_code == 0
    assert "its USB interfaces are unknown" in res.stderr


def test_restart_hint_never_invites_a_lockout() -> None:
    stub = usbguard.AllowResult("/etc/usbguard/rules.conf", usbguard.rule_line(KEY), True, "no rules")
    assert usbguard.restart_hint(stub).startswith("do NOT restart usbguard")
    real = usbguard.AllowResult("/etc/usbguard/rules.conf", usbguard.rule_line(KEY), True, None)
    assert usbguard.restart_hint(real) == "restart usbguard to load it: systemctl restart usbguard"
