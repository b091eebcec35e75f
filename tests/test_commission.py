"""`yktool commission`: every step proven by its consumer, idempotent re-runs, a resumable run
killed (-9) at every step boundary, and bad input refused with nothing changed.

One demo scratch is commissioned per test worker (tests/conftest.py) and copied per test
(the demo drives the same library flow as the command)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CliCall
from tests.flows_support import (
    EMAIL,
    ORIGIN,
    YKTOOL,
    authfile_whole,
    demo_pin,
    fresh_setup,
    git_commit_verifies,
    key_opens_image,
    pam_accepts,
    passphrase_opens,
    spec,
    ssh_signs,
    tree_bytes,
)
from yktool.demo import IMAGE, PASSPHRASE, ROOT, VERIFY_ITEMS, DemoContext
from yktool.host import Host
from yktool.inventory import Registry
from yktool.luks.header import read_header


def test_every_step_is_proven_by_its_consumer(scratch: Path, tmp_path: Path) -> None:
    pin = demo_pin(scratch)
    host = Host(scratch / ROOT)
    assert passphrase_opens(scratch)
    header = read_header(host, IMAGE)
    assert len(header.tokens_of_type("systemd-fido2")) == 2
    assert len(header.tokens_of_type("systemd-tpm2")) == 1
    assert header.slots_with_role("recovery")
    for role in ("primary", "backup"):
        assert key_opens_image(scratch, spec(scratch, role), pin), role
    # the recovery key (in the demo written to a 0600 file) opens the image
    rec = scratch / "recovery-key.txt"
    assert oct(rec.stat().st_mode & 0o777) == "0o600"
    key = [ln for ln in rec.read_text().splitlines() if not ln.startswith("#")][0]
    r = subprocess.run(
        ["cryptsetup", "open", "--test-passphrase", str(host.path(IMAGE))],
        input=key.encode(),
        capture_output=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    # SSH: both key files read back by ssh-keygen, both authorized, both sign for git
    ssh = scratch / ROOT / "home/alice/.ssh"
    for name, role in (("id_ed25519_sk", "primary"), ("id_ed25519_sk_backup", "backup")):
        pub = subprocess.run(["ssh-keygen", "-y", "-f", str(ssh / name)], capture_output=True, check=False)
        assert pub.returncode == 0 and pub.stdout.split()[1] in (ssh / "authorized_keys").read_bytes()
        verified = ssh_signs(scratch, f"/home/alice/.ssh/{name}", spec(scratch, role), pin, tmp_path)
        assert verified.returncode == 0, verified.stderr
    gitconfig = (scratch / ROOT / "home/alice/.gitconfig").read_text()
    assert "format = ssh" in gitconfig and "id_ed25519_sk.pub" in gitconfig
    committed = git_commit_verifies(scratch, spec(scratch, "primary"))
    assert committed.returncode == 0 and f'Good "git" signature for {EMAIL}'.encode() in committed.stderr
    # pam_u2f: one line for alice with both keys; the real module accepts each
    lines = (scratch / ROOT / "etc/u2f_mappings").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("alice:") and lines[0].count(":") == 2
    for role in ("primary", "backup"):
        (tmp_path / role).mkdir()
        assert pam_accepts(scratch, spec(scratch, role), tmp_path / role), role
    # registry: both keys, every kind recorded
    reg = Registry.load(host)
    assert sorted(k.nickname for k in reg.keys) == ["backup", "primary"]
    for k in reg.keys:
        assert {"luks", "ssh", "git", "pam", "udev", "usbguard"} <= {str(e["kind"]) for e in k.enrollments}
    state = json.loads((scratch / ROOT / "var/lib/yktool/commission.json").read_text())
    assert state["finished"] and "primary.pam" in state["done"] and "backup.usbguard" in state["done"]
    assert demo_pin(scratch) not in json.dumps(state)


def test_rerun_changes_nothing_and_says_so(scratch: Path, cli: CliCall) -> None:
    root = scratch / ROOT
    before = tree_bytes(root)
    r = cli(
        "--root",
        root,
        "--device",
        spec(scratch, "primary"),
        "--yes",
        "commission",
        "--kind",
        "linux",
        "--user",
        "alice",
        "--luks-device",
        str(IMAGE),
        "--git-email",
        EMAIL,
        "--pam-origin",
        ORIGIN,
        "--backup-device",
        spec(scratch, "backup"),
        "--unlock-key-file",
        str(PASSPHRASE),
        "--verify-only",
        ",".join(v for v in VERIFY_ITEMS),
    )
    assert r.exit_code == 0, r.output
    assert "commission: finished earlier; nothing left to do" in r.stdout
    assert "Next steps: none. Every step of this run is done and proven." in r.stdout
    assert "no key was needed" in r.stdout
    assert tree_bytes(root) == before


def test_dry_run_shows_the_plan_and_writes_nothing(scratch: Path, cli: CliCall) -> None:
    root = scratch / ROOT
    (root / "var/lib/yktool/commission.json").unlink()
    before = tree_bytes(root)
    r = cli(
        "--root",
        root,
        "--json",
        "--dry-run",
        "commission",
        "--kind",
        "linux",
        "--user",
        "alice",
        "--luks-device",
        str(IMAGE),
        "--git-email",
        EMAIL,
        "--pam-origin",
        ORIGIN,
    )
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    ids = [s["id"] for s in plan["steps"]]
    assert ids[:3] == ["luks-tpm2", "recovery", "primary.pin"] and ids[-1] == "verify"
    assert "backup.pam" in ids and all(s["status"] == "pending" for s in plan["steps"])
    assert tree_bytes(root) == before


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--steps", "git,ssh"], "--git-email"),
        (["--steps", "ssh", "--backup-nickname", "primary"], "different nicknames"),
        (["--steps", "recovery"], "no LUKS device"),
        (["--steps", "pam", "--kind", "nixos"], "--age-host-key"),
        (["--steps", "bogus"], "unknown step"),
    ],
)
def test_bad_answers_are_refused_before_anything_changes(
    scratch: Path, cli: CliCall, args: list[str], needle: str
) -> None:
    root = scratch / ROOT
    (root / "var/lib/yktool/commission.json").unlink()
    before = tree_bytes(root)
    r = cli("--root", root, "--yes", "commission", "--user", "alice", *args)
    assert r.exit_code == 2, r.output
    assert needle in r.stderr and "hint:" in r.stderr
    assert "Traceback" not in r.output
    assert tree_bytes(root) == before


# ---------------------------------------------------------------------------- kill -9 and resume
@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An uncommissioned demo set-up with its swtpm running: (scratch, TCTI)."""
    with fresh_setup(tmp_path) as setup:
        yield setup


def _commission_argv(scratch: Path, tcti: str) -> list[str]:
    return [
        YKTOOL,
        "--root",
        str(scratch / ROOT),
        "--tpm",
        tcti,
        "--device",
        spec(scratch, "primary"),
        "--yes",
        "commission",
        "--kind",
        "linux",
        "--user",
        "alice",
        "--luks-device",
        str(IMAGE),
        "--git-email",
        EMAIL,
        "--pam-origin",
        ORIGIN,
        "--backup-device",
        spec(scratch, "backup"),
        "--unlock-key-file",
        str(PASSPHRASE),
        "--recovery-key-file",
        str(scratch / "recovery.txt"),
        "--new-pin-stdin",
        "--pin-stdin",
        "--verify-only",
        ",".join(VERIFY_ITEMS),
    ]


def test_killed_at_every_step_boundary_resumes_and_never_breaks_the_volume(fresh: tuple[Path, str]) -> None:
    scratch, tcti = fresh
    argv = _commission_argv(scratch, tcti)
    pin = "4321"
    plan = subprocess.run([*argv[:7], "--json", "--dry-run", *argv[7:]], capture_output=True, check=False)
    assert plan.returncode == 0, plan.stderr
    ids = [s["id"] for s in json.loads(plan.stdout)["steps"]]
    assert len(ids) >= 15
    # every stdin line a run may ask: a new PIN per key, or the PIN of a key that has one
    stdin = f"{pin}\n{pin}\n{pin}\n{pin}\n".encode()
    killed = 0
    for step in ids[:-1]:
        run = subprocess.run(
            argv, input=stdin, capture_output=True, check=False, env={**os.environ, "YKTOOL_FAULT": f"after:{step}"}
        )
        assert run.returncode == 137, (step, run.stderr.decode()[-2000:])
        killed += 1
        assert passphrase_opens(scratch), step
        assert authfile_whole(scratch), step
        Registry.load(Host(scratch / ROOT))  # parses
        state = json.loads((scratch / ROOT / "var/lib/yktool/commission.json").read_text())
        assert state["done"][-1] == step and not state["finished"]
    final = subprocess.run(argv, input=stdin, capture_output=True, check=False)
    assert final.returncode == 0, final.stderr.decode()[-3000:]
    assert b"FAIL" not in final.stdout
    assert killed == len(ids) - 1
    for role in ("primary", "backup"):
        assert key_opens_image(scratch, spec(scratch, role), pin)
    header = read_header(Host(scratch / ROOT), IMAGE)
    assert len(header.tokens_of_type("systemd-fido2")) == 2 and len(header.tokens_of_type("systemd-tpm2")) == 1
    assert len(header.slots_with_role("recovery")) == 1
    recovery = (scratch / "recovery.txt").read_text().splitlines()[-1]
    assert recovery not in final.stdout.decode() + final.stderr.decode()


def test_wrong_pin_is_refused_and_changes_nothing(fresh: tuple[Path, str], cli: CliCall) -> None:
    from yktool.fido.session import open_session

    scratch, tcti = fresh
    with open_session(spec(scratch, "primary")) as s:
        s.set_pin("4321")
    root = scratch / ROOT
    before = tree_bytes(root)
    image_before = (root / str(IMAGE).lstrip("/")).read_bytes()
    r = cli(
        "--root",
        root,
        "--tpm",
        tcti,
        "--device",
        spec(scratch, "primary"),
        "--yes",
        "commission",
        "--kind",
        "linux",
        "--user",
        "alice",
        "--steps",
        "ssh,pam",
        "--no-backup",
        "--pin-stdin",
        "--pam-origin",
        ORIGIN,
        input="9999\n",
    )
    assert r.exit_code == 6, r.output
    assert "wrong PIN" in r.stderr and "9999" not in r.output
    after = tree_bytes(root)
    after.pop("var/lib/yktool/commission.json", None)  # begun, nothing done
    assert {k: v for k, v in before.items()} == after
    assert (root / str(IMAGE).lstrip("/")).read_bytes() == image_before


def test_refused_touch_stops_and_the_rerun_resumes(fresh: tuple[Path, str]) -> None:
    scratch, tcti = fresh
    argv = _commission_argv(scratch, tcti)
    stdin = b"4321\n" * 4
    denied = subprocess.run(
        argv, input=stdin, capture_output=True, check=False, env={**os.environ, "YKTOOL_SIM_PRESENCE": "deny"}
    )
    assert denied.returncode == 9, denied.stderr
    assert b"not touched" in denied.stderr and b"Traceback" not in denied.stderr
    state = json.loads((scratch / ROOT / "var/lib/yktool/commission.json").read_text())
    assert state["done"] == ["luks-tpm2", "recovery", "primary.pin"]  # the first touch was refused
    assert passphrase_opens(scratch)
    again = subprocess.run(argv, input=stdin, capture_output=True, check=False)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert b"17 steps, 2 done already" in again.stderr  # the key's PIN step is checked again
    assert b"step 1/17" not in again.stderr and b"step 3/17 done: primary key (primary): check it" in again.stderr
    assert b"step 4/17 done: enroll the primary key" in again.stderr


def test_the_wrong_key_in_hand_is_refused(scratch: Path, cli: CliCall) -> None:
    root = scratch / ROOT
    (root / "var/lib/yktool/commission.json").unlink()
    backup_key = (root / "home/alice/.ssh/id_ed25519_sk_backup").read_bytes()
    # both "keys" are the primary: the backup role finds the primary's credentials on it
    r = cli(
        "--root",
        root,
        "--device",
        spec(scratch, "primary"),
        "--yes",
        "commission",
        "--kind",
        "linux",
        "--user",
        "alice",
        "--steps",
        "ssh",
        "--backup-device",
        spec(scratch, "primary"),
        "--pin-stdin",
        "--backup-nickname",
        "backup",
        input=demo_pin(scratch) + "\n" + demo_pin(scratch) + "\n",
    )
    assert r.exit_code == 4, r.output
    assert "registered as 'primary', not 'backup'" in r.stderr and "insert the backup key" in r.stderr
    state = json.loads((root / "var/lib/yktool/commission.json").read_text())
    assert state["done"] == ["primary.pin", "primary.ssh"]  # the backup part waits for the right key
    assert (root / "home/alice/.ssh/id_ed25519_sk_backup").read_bytes() == backup_key


def test_ctrl_c_between_steps_says_how_to_resume(fresh: tuple[Path, str]) -> None:
    scratch, tcti = fresh
    argv = _commission_argv(scratch, tcti)
    stdin = b"4321\n" * 4
    stopped = subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        check=False,
        env={**os.environ, "YKTOOL_FAULT": "interrupt-after:primary.ssh"},
    )
    assert stopped.returncode == 10, stopped.stderr
    assert b"interrupted" in stopped.stderr and b"run the same command again to resume" in stopped.stderr
    assert b"Traceback" not in stopped.stderr
    assert passphrase_opens(scratch)
    again = subprocess.run(argv, input=stdin, capture_output=True, check=False)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert b"step 5/17 done: ed25519-sk SSH key" not in again.stderr  # done before the Ctrl-C
    assert b"step 7/17 done: pam_u2f credential for alice on the primary key" in again.stderr


def test_key_pulled_mid_step_stops_cleanly_and_the_rerun_resumes(fresh: tuple[Path, str]) -> None:
    """The primary key goes away during its second touch (the SSH key): NoDevice, nothing half
    written; put back, the same run resumes at that step."""
    import contextlib

    from yktool.demo import DemoInteraction, commission_answers
    from yktool.errors import NoDevice
    from yktool.fido.devices import open_sim
    from yktool.fido.session import KeySession
    from yktool.fido.softkey import Presence
    from yktool.flows.commission import CommissionIO, CommissionReport, execute, prepare
    from yktool.flows.keys import ring

    scratch, tcti = fresh
    host = Host(scratch / ROOT)
    touches = {"n": 0}

    def pulled_at_second_touch() -> bool:
        touches["n"] += 1
        if touches["n"] == 2:
            raise OSError(19, "No such device")
        return True

    def run(presence: Presence | None) -> CommissionReport:
        @contextlib.contextmanager
        def opener(role: str, _spec: str | None) -> Iterator[KeySession]:
            device = open_sim(scratch / "keys" / f"{role}.json", presence if role == "primary" else None)
            yield KeySession(device, DemoInteraction("4321"))

        io = CommissionIO(lambda _r: "4321", lambda _d: b"", lambda _d, _k: "kept by the test", tcti=tcti)
        with ring(host, opener, {"primary": None, "backup": None}, {"primary": "primary", "backup": "backup"}) as keys:
            flow, steps, _plan = prepare(host, commission_answers(DemoContext(host, scratch)), keys, io)
            return execute(flow, steps)

    (scratch / "keys").mkdir(exist_ok=True)
    with pytest.raises(NoDevice) as err:
        run(pulled_at_second_touch)
    assert "removed" in err.value.message
    state = json.loads((scratch / ROOT / "var/lib/yktool/commission.json").read_text())
    assert state["done"][-1] == "primary.luks-fido2" and not state["finished"]
    assert passphrase_opens(scratch) and authfile_whole(scratch)
    assert not (scratch / ROOT / "home/alice/.ssh/id_ed25519_sk").exists()
    report = run(None)
    assert report.verify_ok
    # the key's PIN step runs again (a wrong PIN is asked again there, not mid-step); the rest is skipped
    assert [(o.id, o.status) for o in report.outcomes][:4] == [
        ("luks-tpm2", "already-done"),
        ("recovery", "already-done"),
        ("primary.pin", "done"),
        ("primary.luks-fido2", "already-done"),
    ]


def test_a_pin_that_is_not_utf8_is_exit_2_and_changes_nothing(scratch: Path, cli: CliCall) -> None:
    root = scratch / ROOT
    (root / "var/lib/yktool/commission.json").unlink()
    (root / "home/alice/.ssh/id_ed25519_sk").unlink()  # so the ssh step has to ask for the PIN
    before = tree_bytes(root)
    r = cli(
        "--root",
        root,
        "--device",
        spec(scratch, "primary"),
        "--yes",
        "commission",
        "--kind",
        "linux",
        "--user",
        "alice",
        "--steps",
        "ssh",
        "--no-backup",
        "--pin-stdin",
        input=b"\xff\xfe-pin\n",
    )
    assert r.exit_code == 2, r.output
    assert "not valid UTF-8" in r.stderr and "hint:" in r.stderr and "Traceback" not in r.output
    after = tree_bytes(root)
    after.pop("var/lib/yktool/commission.json", None)  # begun, nothing done
    assert after == before


def test_recovery_keys_of_two_devices_both_stay_in_the_recovery_file(
    scratch: Path, cli: CliCall, tmp_path: Path
) -> None:
    """One --recovery-key-file for several LUKS devices: each device's key is kept (the second
    used to replace the first, which then opened nothing anyone had)."""
    root = scratch / ROOT
    (root / "var/lib/yktool/commission.json").unlink()
    passphrase = root / str(PASSPHRASE).lstrip("/")
    devices = ["/var/lib/demo/disk2.img", "/var/lib/demo/disk3.img"]
    for dev in devices:
        with open(root / dev.lstrip("/"), "wb") as fh:
            fh.truncate(32 * 1024 * 1024)
        subprocess.run(
            [
                "cryptsetup",
                "luksFormat",
                "--type",
                "luks2",
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
                "--batch-mode",
                "--key-file",
                str(passphrase),
                str(root / dev.lstrip("/")),
            ],
            check=True,
            capture_output=True,
        )
    rec = tmp_path / "recovery.txt"
    args = [a for dev in devices for a in ("--luks-device", dev)]
    r = cli(
        "--root",
        root,
        "--device",
        spec(scratch, "primary"),
        "--yes",
        "commission",
        "--kind",
        "linux",
        "--steps",
        "recovery",
        "--no-backup",
        *args,
        "--unlock-key-file",
        str(PASSPHRASE),
        "--recovery-key-file",
        rec,
        "--pin-stdin",
        input=demo_pin(scratch) + "\n",
    )
    assert r.exit_code == 0, r.output
    assert oct(rec.stat().st_mode & 0o777) == "0o600"
    lines = rec.read_text().splitlines()
    for dev in devices:
        head = next(n for n, ln in enumerate(lines) if ln.startswith(f"# yktool recovery key for {dev} "))
        opened = subprocess.run(
            ["cryptsetup", "open", "--test-passphrase", str(root / dev.lstrip("/"))],
            input=lines[head + 1].encode(),
            capture_output=True,
            check=False,
        )
        assert opened.returncode == 0, (dev, opened.stderr)
    assert len(lines) == 4


def test_a_verify_required_key_file_of_the_key_in_hand_is_kept(scratch: Path, cli: CliCall) -> None:
    """The SSH step finds an existing key file: made by this key with -O verify-required (which a
    silent probe cannot see), it is recognised with the PIN and kept, not refused as another's."""
    root = scratch / ROOT
    pin = demo_pin(scratch)
    r = cli(
        "--root",
        root,
        "--device",
        spec(scratch, "primary"),
        "ssh",
        "keygen",
        "-O",
        "verify-required",
        "-u",
        "alice",
        "-f",
        "/home/alice/.ssh/id_ed25519_sk",
        "--force",
        "--nickname",
        "primary",
        "--pin-stdin",
        input=pin + "\n",
    )
    assert r.exit_code == 0, r.output
    made = (root / "home/alice/.ssh/id_ed25519_sk").read_bytes()
    (root / "var/lib/yktool/commission.json").unlink()
    r = cli(
        "--root",
        root,
        "--device",
        spec(scratch, "primary"),
        "--yes",
        "commission",
        "--kind",
        "linux",
        "--user",
        "alice",
        "--steps",
        "ssh",
        "--no-backup",
        "--pin-stdin",
        input=pin + "\n",
    )
    assert r.exit_code == 0, r.output
    assert "kept the key file made earlier" in r.stderr
    assert (root / "home/alice/.ssh/id_ed25519_sk").read_bytes() == made
