"""`yktool verify` from the command line: JSON, text by layer, exit codes, selection, the real host."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import CliCall
from tests.fixtures.roots import MUTATIONS, FixtureRoot

REPO = Path(__file__).resolve().parent.parent


def test_json_on_hardened_root_exits_0_with_stable_ids(cli: CliCall, hardened_root: FixtureRoot) -> None:
    res = cli(*hardened_root.verify_args())
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["ok"] is True and data["summary"]["fail"] == 0
    ids = [c["id"] for c in data["checks"]]
    assert "sysctl.kernel.kptr_restrict" in ids and "boot.luks.fido2" in ids and "ssh.maxauthtries" in ids
    first = next(c for c in data["checks"] if c["id"] == "sysctl.kernel.kptr_restrict")
    assert first["layer"] == 1 and first["status"] == "pass"
    assert first["evidence"] == [
        {"source": "/proc/sys/kernel/kptr_restrict", "key": "kernel.kptr_restrict", "value": "2"}
    ]


def test_one_fail_exits_1_and_text_names_file_value_and_fix(cli: CliCall, hardened_root: FixtureRoot) -> None:
    MUTATIONS["ssh.maxauthtries"].apply(hardened_root)
    res = cli("--root", hardened_root.root, "verify", "--secrets", hardened_root.secrets)
    assert res.exit_code == 1
    out = res.stdout
    assert "\x1b[" not in out  # no colour when stdout is not a terminal
    headings = re.findall(r"^Layer (\d):", out, re.M)
    assert headings == ["7", "6", "5", "4", "3", "2", "1", "0"]  # the checklist's layer order, 7 on top
    block = out[out.index("FAIL  ssh.maxauthtries") :]
    assert "MaxAuthTries is 6, want 3" in block
    assert "read /etc/ssh/sshd_config.d/10-hardening.conf:1: MaxAuthTries=6" in block
    assert "fix: set `MaxAuthTries 3`" in block and "services.openssh.settings.MaxAuthTries = 3" in block
    assert "1 fail" in out


def test_only_and_skip_by_id_prefix_and_layer(cli: CliCall, hardened_root: FixtureRoot) -> None:
    def ids(*args: str) -> list[str]:
        res = cli("--root", hardened_root.root, "--json", "verify", *args)
        assert res.exit_code == 0, res.output
        return [c["id"] for c in json.loads(res.stdout)["checks"]]

    assert ids("--only", "ssh.maxauthtries") == ["ssh.maxauthtries"]
    assert set(ids("--only", "sysctl")) == {i for i in MUTATIONS if i.startswith("sysctl.")}
    layer2 = ids("--only", "2")
    assert layer2 and all(i.startswith("boot.") for i in layer2)
    mixed = ids("--only", "layer2,ssh.sk_key", "--skip", "boot.luks")
    assert set(mixed) == {i for i in layer2 if not i.startswith("boot.luks")} | {"ssh.sk_key"}
    assert "boot.sbctl" not in ids("--skip", "boot.sbctl")


def test_unknown_selector_is_a_usage_error(cli: CliCall, root: Path) -> None:
    res = cli("--root", root, "verify", "--only", "sysctl.kernel.nonsense")
    assert res.exit_code == 2
    assert "no check matches 'sysctl.kernel.nonsense'" in res.stderr and "hint:" in res.stderr


def test_list_shows_every_check(cli: CliCall) -> None:
    res = cli("--json", "verify", "--list")
    assert res.exit_code == 0
    listed = json.loads(res.stdout)["checks"]
    assert {c["id"] for c in listed} == set(MUTATIONS)


def test_live_machine_read_only_completes_with_real_findings() -> None:
    """This VM is not hardened: verify on `/` must run, report real misses, and be fast."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("YKTOOL_")}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "yktool", "--root", "/", "--json", "verify"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr
    data = json.loads(proc.stdout)
    assert data["root"] == "/" and len(data["checks"]) >= 37
    by_id = {c["id"]: c for c in data["checks"]}
    # real values read from this kernel, whatever they are
    kptr = by_id["sysctl.kernel.kptr_restrict"]
    want = Path("/proc/sys/kernel/kptr_restrict").read_text().strip()
    assert kptr["evidence"][0] == {
        "source": "/proc/sys/kernel/kptr_restrict",
        "key": "kernel.kptr_restrict",
        "value": want,
    }
    assert kptr["status"] == ("pass" if want == "2" else "fail")
    # no registry on this machine: the backup-key check is a real miss
    if not Path("/etc/yktool/keys.toml").exists():
        assert by_id["hw.registry.backup"]["status"] == "fail"
    assert elapsed < 5, elapsed  # benchmarks/verify_bench.py measures it properly


def test_verify_does_not_import_heavy_libraries(hardened_root: FixtureRoot) -> None:
    code = (
        "import sys; from yktool.cli import main;\n"
        "try: main(['--root', sys.argv[1], '--json', 'verify'])\n"
        "except SystemExit: pass\n"
        "heavy = [m for m in ('tpm2_pytss', 'ykman', 'fido2', 'questionary', 'cryptography') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(hardened_root.root)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert "HEAVY []" in proc.stderr, proc.stderr


def test_colour_only_on_a_terminal(hardened_root: FixtureRoot) -> None:
    import pty

    MUTATIONS["ssh.maxauthtries"].apply(hardened_root)
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "yktool", "--root", str(hardened_root.root), "verify", "--only", "ssh"],
            cwd=REPO,
            stdout=secondary,
            stderr=secondary,
        )
        os.close(secondary)
        chunks = []
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=60) == 1
    finally:
        os.close(primary)
    out = b"".join(chunks).decode()
    assert "\x1b[31m" in out and "FAIL" in out  # red on a terminal


def test_luks_device_option_checks_a_given_image(cli: CliCall, hardened_root: FixtureRoot, root: Path) -> None:
    import shutil as sh

    (root / "images").mkdir()
    sh.copyfile(hardened_root.root / "var/lib/images/root.img", root / "images/disk.img")
    res = cli("--root", root, "--json", "verify", "--only", "boot.luks", "--luks-device", "/images/disk.img")
    assert res.exit_code == 0, res.output
    checks = {c["id"]: c for c in json.loads(res.stdout)["checks"]}
    assert {c["status"] for c in checks.values()} == {"pass"}
    assert checks["boot.luks.root"]["evidence"][0] == {
        "source": "--luks-device",
        "key": "",
        "value": "/images/disk.img",
        "note": "given, not discovered from /",
    }
    # a LUKS1 volume is a fail with the conversion as the fix
    luks1 = root / "images/old.img"
    with open(luks1, "wb") as fh:
        fh.truncate(8 * 1024 * 1024)
    key = root / "k"
    key.write_bytes(b"k")
    subprocess.run(
        [
            "cryptsetup",
            "luksFormat",
            "--type",
            "luks1",
            "--batch-mode",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            str(key),
            str(luks1),
        ],
        check=True,
        capture_output=True,
    )
    res = cli("--root", root, "--json", "verify", "--only", "boot.luks", "--luks-device", "/images/old.img")
    assert res.exit_code == 1
    checks = {c["id"]: c for c in json.loads(res.stdout)["checks"]}
    assert checks["boot.luks.root"]["status"] == "fail" and "LUKS1" in checks["boot.luks.root"]["reason"]
    assert "cryptsetup convert --type luks2" in checks["boot.luks.root"]["fix"]
    assert checks["boot.luks.fido2"]["status"] == "n/a"
    # not LUKS at all
    (root / "images/plain.img").write_bytes(b"\0" * 4096)
    res = cli("--root", root, "--json", "verify", "--only", "boot.luks.root", "--luks-device", "/images/plain.img")
    check = json.loads(res.stdout)["checks"][0]
    assert res.exit_code == 1 and "not a LUKS device" in check["reason"]
