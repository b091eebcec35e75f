"""The removal-lock udev rule and its lock program: rendered, parsed by udev, run as udev runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CliCall
from yktool import udev
from yktool.host import Host

KEY = udev.KeyUsb("1050", "0407", "123456", "YubiKey OTP+FIDO+CCID")
PROGRAM = Path(__file__).resolve().parent.parent / "udev" / "yktool-lock"


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ render
def test_rule_matches_this_key_on_remove_and_runs_the_lock_program() -> None:
    rule = udev.render_rule(KEY, "primary")
    line = next(ln for ln in rule.splitlines() if not ln.startswith("#"))
    assert line.startswith('ACTION=="remove", SUBSYSTEM=="usb", ENV{DEVTYPE}=="usb_device"')
    assert 'ENV{ID_VENDOR_ID}=="1050"' in line and 'ENV{ID_MODEL_ID}=="0407"' in line
    assert 'ENV{ID_SERIAL_SHORT}=="123456"' in line
    assert line.endswith('RUN+="/usr/local/libexec/yktool-lock 1050 0407 123456"')
    assert "hyprlock" not in line and "swaylock" not in line  # never a locker as root from udev
    no_serial = udev.render_rule(udev.KeyUsb("1209", "0001"), "soft")
    assert "ID_SERIAL_SHORT" not in no_serial and no_serial.rstrip().endswith('yktool-lock 1209 0001 -"')


def _udev_parse_errors(rules_text: str, tmp_path: Path) -> tuple[str, str]:
    """Let the real udev parse a rules file: `udevadm verify` (systemd ≥ 253) or `udevadm test`
    in a private mount namespace with the rules folder bind-mounted (this machine's untouched)."""
    rules_dir = tmp_path / "rules.d"
    rules_dir.mkdir(exist_ok=True)
    f = rules_dir / "85-yktool-lock.rules"
    f.write_text(rules_text)
    has_verify = subprocess.run(["udevadm", "verify", "--help"], capture_output=True).returncode == 0
    if has_verify:
        p = subprocess.run(["udevadm", "verify", str(f)], capture_output=True, text=True)
        return ("" if p.returncode == 0 else p.stdout + p.stderr), "verify"
    # a private tmpfs on /run too, so nothing udevadm might write lands on this machine
    script = (f"mount --bind {rules_dir} /etc/udev/rules.d && mount -t tmpfs yktool-test /run && "
              "udevadm test --action=remove /sys/class/net/lo")
    p = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    out = p.stdout + p.stderr
    assert "Reading rules file: /etc/udev/rules.d/85-yktool-lock.rules" in out, out[-2000:]
    return "\n".join(ln for ln in out.splitlines() if "85-yktool-lock.rules:" in ln), "test"


@pytest.mark.skipif(not shutil.which("udevadm") or not shutil.which("unshare"), reason="needs udevadm and unshare")
def test_udev_accepts_the_rendered_rules(tmp_path: Path) -> None:
    text = udev.merged_rules(None, "primary", udev.render_rule(KEY, "primary"))
    text = udev.merged_rules(text, "backup", udev.render_rule(udev.KeyUsb("1209", "0001", "SK1"), "backup"))
    errors, how = _udev_parse_errors(text, tmp_path)
    assert errors == "", f"udevadm {how}: {errors}"
    # the same check notices a broken rule (so it is a real check)
    broken, _ = _udev_parse_errors(text.replace('RUN+="', 'RUN+ "', 1), tmp_path)
    assert broken, "udev should reject a broken key/value pair"


def test_nixos_module_parses_and_evaluates_to_the_same_rule_and_program(tmp_path: Path) -> None:
    snippet = udev.nixos_snippet(KEY, "primary")
    f = tmp_path / "yktool-udev.nix"
    f.write_text(snippet)
    subprocess.run(["nix-instantiate", "--parse", str(f)], check=True, capture_output=True)

    def evaluate(stub: str, attr: str) -> str:
        expr = f"(import {f} {{ pkgs = {{ writeShellScript = {stub}; }}; }}).{attr}"
        out = subprocess.run(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr], check=True,
                             capture_output=True, text=True)
        return str(json.loads(out.stdout))

    store = "/nix/store/" + "0" * 32 + "-yktool-lock"
    rules = evaluate(f'name: text: "{store}"', "services.udev.extraRules")
    assert rules == udev.render_rule(KEY, "primary", program=store)
    script = evaluate("name: text: text", "services.udev.extraRules")
    assert udev.lock_program() in script  # the program reaches Nix byte for byte (${…} escaped)


# ------------------------------------------------------------------------------------ the lock program
@pytest.fixture
def loginctl_stub(tmp_path: Path) -> tuple[Path, Path]:
    """A `loginctl` on PATH that records its argv and environment (no session manager runs here)."""
    bindir = tmp_path / "stub-bin"
    bindir.mkdir()
    log = tmp_path / "loginctl.log"
    stub = bindir / "loginctl"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nenv > {log}.env\nexit 0\n')
    stub.chmod(0o755)
    return bindir, log


def fake_sysfs(tmp_path: Path, devices: list[tuple[str, str, str]]) -> Path:
    sysfs = tmp_path / "sys"
    base = sysfs / "bus/usb/devices"
    base.mkdir(parents=True, exist_ok=True)
    for i, (v, p, s) in enumerate(devices):
        d = base / f"1-{i + 1}"
        d.mkdir()
        (d / "idVendor").write_text(v + "\n")
        (d / "idProduct").write_text(p + "\n")
        if s:
            (d / "serial").write_text(s + "\n")
    return sysfs


def run_as_udev(program: Path, stub: Path, sysfs: Path, *args: str, action: str = "remove") -> tuple[int, float]:
    # what udevd hands a RUN program: its own PATH and the event's properties, no session at all
    env = {"PATH": f"{stub}:/usr/sbin:/usr/bin:/sbin:/bin", "ACTION": action, "SUBSYSTEM": "usb",
           "DEVTYPE": "usb_device", "DEVPATH": "/devices/pci0000:00/0000:00:14.0/usb1/1-1",
           "ID_VENDOR_ID": "1050", "ID_MODEL_ID": "0407", "ID_SERIAL_SHORT": "123456", "SEQNUM": "4242"}
    start = time.monotonic()
    p = subprocess.run([str(program), "--debounce", "0.3", "--sysfs", str(sysfs), "--run-dir", str(sysfs.parent),
                        *args], env=env, capture_output=True, timeout=20)
    return p.returncode, time.monotonic() - start


def fake_hid(sysfs: Path, hid_id: str, uniq: str) -> None:
    d = sysfs / "bus/hid/devices" / f"{hid_id}.0001"
    d.mkdir(parents=True)
    (d / "uevent").write_text(f"DRIVER=hid-generic\nHID_ID={hid_id}\nHID_NAME=key\nHID_UNIQ={uniq}\n")


def test_lock_program_locks_all_sessions_through_logind_when_key_stays_away(
        tmp_path: Path, loginctl_stub: tuple[Path, Path]) -> None:
    bindir, log = loginctl_stub
    sysfs = fake_sysfs(tmp_path, [("046d", "c539", "")])  # only a mouse receiver left
    rc, elapsed = run_as_udev(PROGRAM, bindir, sysfs, "1050", "0407", "123456")
    assert rc == 0
    assert log.read_text() == "lock-sessions\n"
    assert elapsed >= 0.3  # it waited out a possible re-enumeration first
    seen = dict(ln.split("=", 1) for ln in Path(f"{log}.env").read_text().splitlines() if "=" in ln)
    assert not {"DISPLAY", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR"} & set(seen)


def test_lock_program_does_not_lock_when_the_key_re_enumerated(tmp_path: Path,
                                                                loginctl_stub: tuple[Path, Path]) -> None:
    bindir, log = loginctl_stub
    sysfs = fake_sysfs(tmp_path, [("1050", "0407", "123456")])  # back after a mode switch / reset
    rc, _ = run_as_udev(PROGRAM, bindir, sysfs, "1050", "0407", "123456")
    assert rc == 0 and not log.exists()


def test_lock_program_other_key_with_same_model_still_locks(tmp_path: Path,
                                                            loginctl_stub: tuple[Path, Path]) -> None:
    bindir, log = loginctl_stub
    sysfs = fake_sysfs(tmp_path, [("1050", "0407", "999999")])  # a colleague's key, not ours
    assert run_as_udev(PROGRAM, bindir, sysfs, "1050", "0407", "123456")[0] == 0
    assert log.read_text() == "lock-sessions\n"


def test_rule_also_matches_the_keys_hid_device_by_hid_id_and_uniq() -> None:
    """An emulated key has no USB parent, and some keys show no serial on USB: the HID device's
    removal (HID_ID, HID_UNIQ from the kernel's uevent) runs the same lock program."""
    rule = udev.render_rule(udev.KeyUsb("1209", "00ab", "SOFT123"), "soft")
    hid_line = next(ln for ln in rule.splitlines() if 'SUBSYSTEM=="hid"' in ln)
    assert hid_line.startswith('ACTION=="remove", SUBSYSTEM=="hid", ENV{HID_ID}=="*:00001209:000000AB"')
    assert 'ENV{HID_UNIQ}=="SOFT123"' in hid_line
    assert hid_line.endswith('RUN+="/usr/local/libexec/yktool-lock 1209 00ab SOFT123"')
    assert 'ENV{HID_UNIQ}' not in udev.render_rule(udev.KeyUsb("1209", "0001"), "soft")


def test_installed_rules_read_the_hid_line_as_the_same_key(root: Path) -> None:
    (root / "etc/udev/rules.d").mkdir(parents=True)
    (root / "etc/udev/rules.d/85-yktool-lock.rules").write_text(udev.render_rule(KEY, "primary"))
    rules = udev.installed_rules(Host(root=str(root)))
    assert [(r.vendor, r.product, r.serial) for r in rules] == [("1050", "0407", "123456")] * 2


def test_lock_program_does_not_lock_while_the_keys_hid_device_is_there(
        tmp_path: Path, loginctl_stub: tuple[Path, Path]) -> None:
    bindir, log = loginctl_stub
    sysfs = fake_sysfs(tmp_path, [])
    fake_hid(sysfs, "0003:00001050:00000407", "123456")  # no USB parent, e.g. the emulated key
    rc, _ = run_as_udev(PROGRAM, bindir, sysfs, "1050", "0407", "123456")
    assert rc == 0 and not log.exists()
    other = fake_sysfs(tmp_path / "other", [])
    fake_hid(other, "0003:00001050:00000407", "999999")  # a colleague's key of the same model
    assert run_as_udev(PROGRAM, bindir, other, "1050", "0407", "123456")[0] == 0
    assert log.read_text() == "lock-sessions\n"


def test_lock_program_locks_once_when_usb_and_hid_removal_both_fire(
        tmp_path: Path, loginctl_stub: tuple[Path, Path]) -> None:
    bindir, log = loginctl_stub
    sysfs = fake_sysfs(tmp_path, [])
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: run_as_udev(PROGRAM, bindir, sysfs, "1050", "0407", "123456"), range(2)))
    assert [rc for rc, _ in runs] == [0, 0]
    assert log.read_text() == "lock-sessions\n"  # one lock for one removal
    assert run_as_udev(PROGRAM, bindir, sysfs, "1050", "0407", "123456")[0] == 0
    assert log.read_text() == "lock-sessions\n" * 2  # a later removal locks again


def test_lock_program_ignores_non_remove_events_and_bad_usage(tmp_path: Path,
                                                              loginctl_stub: tuple[Path, Path]) -> None:
    bindir, log = loginctl_stub
    sysfs = fake_sysfs(tmp_path, [])
    assert run_as_udev(PROGRAM, bindir, sysfs, "1050", "0407", "-", action="add")[0] == 0
    assert not log.exists()
    assert run_as_udev(PROGRAM, bindir, sysfs, "1050")[0] == 2
    assert not log.exists()


# ------------------------------------------------------------------------------------ install (CLI)
def test_install_writes_rule_and_program_idempotently_and_records_the_key(cli: CliCall, root: Path,
                                                                          tmp_path: Path,
                                                                          loginctl_stub: tuple[Path, Path]) -> None:
    args = ["--root", root, "--json", "udev", "install", "--vendor", "1050", "--product", "0407", "--serial",
            "123456", "--name", "YubiKey"]
    res = cli(*args)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data["changed"]) == {udev.PROGRAM_PATH, udev.RULE_PATH}
    assert data["reloaded"] is False  # never reloads this machine's udev for another root
    assert "no screen locker found" in res.stderr
    program = root / udev.PROGRAM_PATH.lstrip("/")
    assert program.stat().st_mode & 0o777 == 0o755
    before = snapshot(root)
    again = json.loads(cli(*args).stdout)
    assert again["changed"] == []
    assert {k: v for k, v in snapshot(root).items() if "keys.toml" not in k} == {
        k: v for k, v in before.items() if "keys.toml" not in k}
    # the installed program is the one that runs, as udev runs it
    bindir, log = loginctl_stub
    assert run_as_udev(program, bindir, fake_sysfs(tmp_path, []), "1050", "0407", "123456")[0] == 0
    assert log.read_text() == "lock-sessions\n"
    # a second key gets its own block; the first stays
    assert cli("--root", root, "udev", "install", "--nickname", "backup", "--vendor", "1209", "--product",
               "0001", "--serial", "SK2").exit_code == 0
    text = (root / udev.RULE_PATH.lstrip("/")).read_text()
    assert text.count("ACTION==\"remove\"") == 4 and "# yktool-key: primary" in text and "# yktool-key: backup" in text
    keys = cli("--root", root, "--json", "keys", "list")
    kinds = {(k["nickname"], e["kind"]) for k in json.loads(keys.stdout)["keys"] for e in k["enrollments"]}
    assert {("primary", "udev"), ("backup", "udev")} <= kinds
    # and verify now finds it
    check = json.loads(cli("--root", root, "--json", "verify", "--only", "hw.udev.lock_rule").stdout)["checks"][0]
    assert check["status"] == "pass", check


def test_install_with_software_key_identity(cli: CliCall, root: Path, sim_key: object) -> None:
    dev = sim_key("udev")  # type: ignore[operator]
    res = cli("--root", root, "--device", dev, "--json", "udev", "install")
    assert res.exit_code == 0, res.output
    rule = json.loads(res.stdout)["rule"]
    assert 'ENV{ID_VENDOR_ID}=="1209"' in rule and 'ENV{ID_MODEL_ID}=="0001"' in rule
    assert "yktool software key" in rule and 'ENV{ID_SERIAL_SHORT}=="' in rule


def test_install_finds_a_lock_handler(cli: CliCall, root: Path) -> None:
    Host(root).write_file("/usr/bin/swaylock", "#!/bin/sh\n", 0o755)
    res = cli("--root", root, "--json", "udev", "install", "--vendor", "1050", "--product", "0407")
    assert res.exit_code == 0 and "no screen locker" not in res.stderr
    assert json.loads(res.stdout)["lock_handlers"] == ["/usr/bin/swaylock"]


@pytest.mark.parametrize("args, code, message", [
    (["--vendor", "zzzz", "--product", "0407"], 2, "is not two 4-digit hex numbers"),
    (["--vendor", "1050", "--product", "0407", "--serial", 'a"b'], 2, "characters a udev rule cannot carry"),
    (["--vendor", "1050", "--product", "0407", "--nickname", "x y"], 2, "is not plain"),
    ([], 3, "cannot read the key's USB identity"),
])
def test_bad_input_changes_nothing(cli: CliCall, root: Path, args: list[str], code: int, message: str) -> None:
    Host(root).write_file(udev.RULE_PATH, "# existing\n", backup=False)
    before = snapshot(root)
    res = cli("--root", root, "--device", "hid:/dev/nonexistent-hidraw", "udev", "install", *args)
    assert res.exit_code == code, res.output
    assert message in res.stderr and "hint:" in res.stderr
    assert snapshot(root) == before


def test_nixos_flag_prints_and_writes_no_rule(cli: CliCall, root: Path) -> None:
    res = cli("--root", root, "udev", "install", "--nixos", "--vendor", "1050", "--product", "0407")
    assert res.exit_code == 0
    assert "services.udev.extraRules" in res.stdout and "pkgs.writeShellScript" in res.stdout
    assert not (root / udev.RULE_PATH.lstrip("/")).exists()
    assert not os.path.exists(root / udev.PROGRAM_PATH.lstrip("/"))


def test_dry_run_writes_nothing(cli: CliCall, root: Path) -> None:
    res = cli("--root", root, "--dry-run", "udev", "install", "--vendor", "1050", "--product", "0407")
    assert res.exit_code == 0 and "would write /etc/udev/rules.d/85-yktool-lock.rules" in res.stdout
    res = cli("--root", root, "--dry-run", "usbguard", "allow", "--vendor", "1050", "--product", "0407",
              "--interface", "03:00:00")
    assert res.exit_code == 0 and "would append to /etc/usbguard/rules.conf" in res.stdout
    assert list(root.rglob("*")) == []
