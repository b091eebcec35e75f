"""The removal-lock udev rule and its lock program: rendered, parsed by udev, run as udev runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import CliCall
from tests.fixtures.fido import SimKey
from yktool import udev
from yktool.host import Host

KEY = udev.KeyUsb("1050", "0407", "123456", "YubiKey OTP+FIDO+CCID")
PROGRAM = Path(__file__).resolve().parent.parent / "udev" / "yktool-lock"


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ render
def test_rule_matches_this_key_on_remove_and_runs_the_lock_program() -> None:
    rule = udev.render_rule(KEY, "primary")
    usb_line, hid_line = (ln for ln in rule.splitlines() if not ln.startswith("#"))
    assert usb_line.startswith('ACTION=="remove", SUBSYSTEM=="usb", ENV{DEVTYPE}=="usb_device"')
    assert 'ENV{ID_VENDOR_ID}=="1050"' in usb_line and 'ENV{ID_MODEL_ID}=="0407"' in usb_line
    assert 'ENV{ID_SERIAL_SHORT}=="123456"' in usb_line
    # the HID device: the kernel's HID_ID (any bus, 8 upper-case hex digits each) and HID_UNIQ
    assert hid_line.startswith('ACTION=="remove", SUBSYSTEM=="hid", ENV{HID_ID}=="*:00001050:00000407"')
    assert 'ENV{HID_UNIQ}=="123456"' in hid_line
    for line in (usb_line, hid_line):
        assert line.endswith('RUN+="/usr/local/libexec/yktool-lock 1050 0407 123456"')
        assert "hyprlock" not in line and "swaylock" not in line  # never a locker as root from udev
    assert 'ENV{HID_ID}=="*:00001050:0000040A"' in udev.render_rule(udev.KeyUsb("1050", "040a"), "x")
    no_serial = udev.render_rule(udev.KeyUsb("1209", "0001"), "soft")
    assert "ENV{ID_SERIAL_SHORT}" not in no_serial and "ENV{HID_UNIQ}" not in no_serial
    assert all(ln.endswith('yktool-lock 1209 0001 -"') for ln in no_serial.splitlines() if not ln.startswith("#"))
    # verify reads both lines back as this key's
    assert {(r.vendor, r.product, r.serial) for r in _parsed(rule)} == {("1050", "0407", "123456")}


def _parsed(rules_text: str) -> list[udev.InstalledRule]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        Host(Path(d)).write_file(udev.RULE_PATH, rules_text)
        return udev.installed_rules(Host(Path(d)))


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
    script = (
        f"mount --bind {rules_dir} /etc/udev/rules.d && mount -t tmpfs yktool-test /run && "
        "udevadm test --action=remove /sys/class/net/lo"
    )
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


def _udev_runs_on_hid_remove(rules_text: str, uniq: str, tmp_path: Path) -> list[str]:
    """What the real udev rule engine would RUN for a HID device's remove event (1209:0001,
    HID_UNIQ=uniq, no USB parent: the emulated key as the kernel shows it). `udevadm test` in a
    private mount namespace, with the rules folder bound and a tmpfs sysfs branch holding the
    device's uevent (SYSTEMD_DEVICE_VERIFY_SYSFS=0 lets sd-device read it there)."""
    rules_dir = tmp_path / "rules-hid"
    rules_dir.mkdir(exist_ok=True)
    (rules_dir / "85-yktool-lock.rules").write_text(rules_text)
    dev = "/sys/devices/virtual/misc/uhid/0003:1209:0001.0001"
    uevent = (
        "DRIVER=hid-generic\nHID_ID=0003:00001209:00000001\nHID_NAME=yktool software key\n"
        f"HID_PHYS=yktool-emulate/1/0\nHID_UNIQ={uniq}\nMODALIAS=hid:b0003g0001v00001209p00000001\n"
    )
    script = (
        f"set -e; mount --bind {rules_dir} /etc/udev/rules.d; mount -t tmpfs yktool-test /run; "
        f"mount -t tmpfs yktool-test /sys/devices/virtual; mkdir -p {dev}; "
        f"printf '{uevent}' > {dev}/uevent; ln -s /sys/bus/hid {dev}/subsystem; "
        f"SYSTEMD_DEVICE_VERIFY_SYSFS=0 udevadm test --action=remove {dev}"
    )
    p = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    out = p.stdout + p.stderr
    assert f"HID_UNIQ={uniq}" in out and "SUBSYSTEM=hid" in out, out[-2000:]  # the event udev saw
    return [ln.split("'")[1] for ln in out.splitlines() if ln.startswith("run: '")]


@pytest.mark.skipif(not shutil.which("udevadm") or not shutil.which("unshare"), reason="needs udevadm and unshare")
def test_udev_runs_the_lock_program_for_this_keys_hid_removal_only(tmp_path: Path) -> None:
    text = udev.merged_rules(None, "soft", udev.render_rule(udev.KeyUsb("1209", "0001", "SK1"), "soft"))
    assert _udev_runs_on_hid_remove(text, "SK1", tmp_path) == ["/usr/local/libexec/yktool-lock 1209 0001 SK1"]
    assert _udev_runs_on_hid_remove(text, "SK2", tmp_path) == []  # another key of the same model
    # a key registered without a serial: any key of its model locks (the safe direction)
    any_serial = udev.merged_rules(None, "soft", udev.render_rule(udev.KeyUsb("1209", "0001"), "soft"))
    assert _udev_runs_on_hid_remove(any_serial, "SK2", tmp_path) == ["/usr/local/libexec/yktool-lock 1209 0001 -"]
    # a YubiKey's rule does not fire for the software key
    yubikey = udev.merged_rules(None, "primary", udev.render_rule(KEY, "primary"))
    assert _udev_runs_on_hid_remove(yubikey, "123456", tmp_path) == []


def test_nixos_module_parses_and_evaluates_to_the_same_rule_and_program(tmp_path: Path) -> None:
    snippet = udev.nixos_snippet(KEY, "primary")
    f = tmp_path / "yktool-udev.nix"
    f.write_text(snippet)
    subprocess.run(["nix-instantiate", "--parse", str(f)], check=True, capture_output=True)

    def evaluate(stub: str, attr: str) -> str:
        expr = f"(import {f} {{ pkgs = {{ writeShellScript = {stub}; }}; }}).{attr}"
        out = subprocess.run(
            ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr], check=True, capture_output=True, text=True
        )
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


def run_as_udev(
    program: Path, stub: Path, sysfs: Path, *args: str, action: str = "remove", debounce: str = "0.3"
) -> tuple[int, float]:
    # what udevd hands a RUN program: its own PATH and the event's properties, no session at all
    env = {
        "PATH": f"{stub}:/usr/sbin:/usr/bin:/sbin:/bin",
        "ACTION": action,
        "SUBSYSTEM": "usb",
        "DEVTYPE": "usb_device",
        "DEVPATH": "/devices/pci0000:00/0000:00:14.0/usb1/1-1",
        "ID_VENDOR_ID": "1050",
        "ID_MODEL_ID": "0407",
        "ID_SERIAL_SHORT": "123456",
        "SEQNUM": "4242",
    }
    start = time.monotonic()
    state = sysfs.parent / "run-yktool-lock"  # never this machine's /run
    p = subprocess.run(
        [str(program), "--debounce", debounce, "--sysfs", str(sysfs), "--state-dir", str(state), *args],
        env=env,
        capture_output=True,
        timeout=20,
    )
    return p.returncode, time.monotonic() - start


def test_lock_program_locks_all_sessions_through_logind_when_key_stays_away(
    tmp_path: Path, loginctl_stub: tuple[Path, Path]
) -> None:
    bindir, log = loginctl_stub
    sysfs = fake_sysfs(tmp_path, [("046d", "c539", "")])  # only a mouse receiver left
    rc, elapsed = run_as_udev(PROGRAM, bindir, sysfs, "1050", "0407", "123456")
    assert rc == 0
    assert log.read_text() == "lock-sessions\n"
    assert elapsed >= 0.3  # it waited out a possible re-enumeration first
    seen = dict(ln.split("=", 1) for ln in Path(f"{log}.env").read_text().splitlines() if "=" in ln)
    assert not {"DISPLAY", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR"} & set(seen)


def test_lock_program_does_not_lock_when_the_key_re_enumerated(
    tmp_path: Path, loginctl_stub: tuple[Path, Path]
) -> None:
    bindir, log = loginctl_stub
    sysfs = fake_sysfs(tmp_path, [("1050", "0407", "123456")])  # back after a mode switch / reset
    rc, _ = run_as_udev(PROGRAM, bindir, sysfs, "1050", "0407", "123456")
    assert rc == 0 and not log.exists()


def test_lock_program_other_key_with_same_model_still_locks(tmp_path: Path, loginctl_stub: tuple[Path, Path]) -> None:
    bindir, log = loginctl_stub
    sysfs = fake_sysfs(tmp_path, [("1050", "0407", "999999")])  # a colleague's key, not ours
    assert run_as_udev(PROGRAM, bindir, sysfs, "1050", "0407", "123456")[0] == 0
    assert log.read_text() == "lock-sessions\n"


def test_lock_program_ignores_non_remove_events_and_bad_usage(tmp_path: Path, loginctl_stub: tuple[Path, Path]) -> None:
    bindir, log = loginctl_stub
    sysfs = fake_sysfs(tmp_path, [])
    assert run_as_udev(PROGRAM, bindir, sysfs, "1050", "0407", "-", action="add")[0] == 0
    assert not log.exists()
    assert run_as_udev(PROGRAM, bindir, sysfs, "1050")[0] == 2
    assert not log.exists()


def test_lock_program_sees_the_key_back_as_a_hid_device(tmp_path: Path, loginctl_stub: tuple[Path, Path]) -> None:
    """A key with no USB parent (the emulated key) re-plugged inside the wait: not locked."""
    bindir, log = loginctl_stub
    sysfs = fake_sysfs(tmp_path, [])
    dev = sysfs / "bus/hid/devices/0003:1209:0001.0002"
    dev.mkdir(parents=True)
    (dev / "uevent").write_text(
        "DRIVER=hid-generic\nHID_ID=0003:00001209:00000001\nHID_NAME=yktool software key\nHID_UNIQ=SK1\n"
    )
    assert run_as_udev(PROGRAM, bindir, sysfs, "1209", "0001", "SK1")[0] == 0
    assert not log.exists()
    assert run_as_udev(PROGRAM, bindir, sysfs, "1209", "0001", "SK2")[0] == 0  # another serial is not ours
    assert log.read_text() == "lock-sessions\n"


def test_lock_program_events_arriving_together_lock_once(tmp_path: Path, loginctl_stub: tuple[Path, Path]) -> None:
    """One removal fires the USB and the HID rule (and a key with two HID interfaces, two HID
    rules): started at the same instant, they share one wait and one lock."""
    bindir, log = loginctl_stub
    sysfs = fake_sysfs(tmp_path, [])
    with ThreadPoolExecutor(4) as pool:
        rcs = list(pool.map(lambda _: run_as_udev(PROGRAM, bindir, sysfs, "1050", "0407", "123456")[0], range(4)))
    assert rcs == [0, 0, 0, 0]
    assert log.read_text() == "lock-sessions\n"


def test_lock_program_a_parents_event_after_the_childs_lock_does_not_lock_again(
    tmp_path: Path, loginctl_stub: tuple[Path, Path]
) -> None:
    """udev runs the USB device's event only after its HID child's has finished: the second
    run, right after the first locked, is the same removal. A removal later than the window
    (a new one) locks again, and another key's removal is its own."""
    bindir, log = loginctl_stub
    sysfs = fake_sysfs(tmp_path, [])
    assert run_as_udev(PROGRAM, bindir, sysfs, "1050", "0407", "123456")[0] == 0
    assert run_as_udev(PROGRAM, bindir, sysfs, "1050", "0407", "123456")[0] == 0
    assert log.read_text() == "lock-sessions\n"
    assert run_as_udev(PROGRAM, bindir, sysfs, "1050", "0407", "654321")[0] == 0  # another key
    assert log.read_text() == "lock-sessions\n" * 2
    stamp = sysfs.parent / "run-yktool-lock" / "1050-0407-123456.locked"
    stamp.write_text(f"{int(time.time()) - 6}\n")  # that lock was 6 s ago: past the 5 s window
    assert run_as_udev(PROGRAM, bindir, sysfs, "1050", "0407", "123456")[0] == 0
    assert log.read_text() == "lock-sessions\n" * 3


def test_lock_program_without_a_usable_state_folder_still_locks(
    tmp_path: Path, loginctl_stub: tuple[Path, Path]
) -> None:
    bindir, log = loginctl_stub
    sysfs = fake_sysfs(tmp_path, [])
    (sysfs.parent / "run-yktool-lock").write_text("not a folder")
    for _ in range(2):  # no dedupe without state: every removal locks (the safe direction)
        assert run_as_udev(PROGRAM, bindir, sysfs, "1050", "0407", "123456")[0] == 0
    assert log.read_text() == "lock-sessions\n" * 2


# ------------------------------------------------------------------------------------ install (CLI)
def test_install_writes_rule_and_program_idempotently_and_records_the_key(
    cli: CliCall, root: Path, tmp_path: Path, loginctl_stub: tuple[Path, Path]
) -> None:
    args = [
        "--root",
        root,
        "--json",
        "udev",
        "install",
        "--vendor",
        "1050",
        "--product",
        "0407",
        "--serial",
        "123456",
        "--name",
        "YubiKey",
    ]
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
        k: v for k, v in before.items() if "keys.toml" not in k
    }
    # the installed program is the one that runs, as udev runs it
    bindir, log = loginctl_stub
    assert run_as_udev(program, bindir, fake_sysfs(tmp_path, []), "1050", "0407", "123456")[0] == 0
    assert log.read_text() == "lock-sessions\n"
    # a second key gets its own block; the first stays
    assert (
        cli(
            "--root",
            root,
            "udev",
            "install",
            "--nickname",
            "backup",
            "--vendor",
            "1209",
            "--product",
            "0001",
            "--serial",
            "SK2",
        ).exit_code
        == 0
    )
    text = (root / udev.RULE_PATH.lstrip("/")).read_text()
    assert text.count('ACTION=="remove"') == 4 and "# yktool-key: primary" in text and "# yktool-key: backup" in text
    keys = cli("--root", root, "--json", "keys", "list")
    kinds = {(k["nickname"], e["kind"]) for k in json.loads(keys.stdout)["keys"] for e in k["enrollments"]}
    assert {("primary", "udev"), ("backup", "udev")} <= kinds
    # and verify now finds it
    check = json.loads(cli("--root", root, "--json", "verify", "--only", "hw.udev.lock_rule").stdout)["checks"][0]
    assert check["status"] == "pass", check


def test_install_with_software_key_identity(cli: CliCall, root: Path, sim_key: SimKey) -> None:
    dev = sim_key("udev")
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


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--vendor", "zzzz", "--product", "0407"], 2, "is not two 4-digit hex numbers"),
        (["--vendor", "1050", "--product", "0407", "--serial", 'a"b'], 2, "characters a udev rule cannot carry"),
        (["--vendor", "1050", "--product", "0407", "--nickname", "x y"], 2, "is not plain"),
        ([], 3, "cannot read the key's USB identity"),
    ],
)
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
    res = cli(
        "--root",
        root,
        "--dry-run",
        "usbguard",
        "allow",
        "--vendor",
        "1050",
        "--product",
        "0407",
        "--interface",
        "03:00:00",
    )
    assert res.exit_code == 0 and "would append to /etc/usbguard/rules.conf" in res.stdout
    assert list(root.rglob("*")) == []
