"""`yktool replace`: lose sim key A (its state file deleted), keep B, enroll C.

Proven with the consumers: A's LUKS keyslot and token are gone and C's opens the image
(cryptsetup), C passes the real pam_u2f and A is no longer on the line, C signs (ssh-keygen -Y
verify) and A's key is out of authorized_keys, retired in allowed_signers and git's revocation
file; B is untouched. With only A enrolled, replace refuses and changes nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CliCall, CliResult
from tests.flows_support import (
    ORIGIN,
    authfile_whole,
    demo_pin,
    git_commit_verifies,
    key_opens_image,
    pam_accepts,
    passphrase_opens,
    spec,
    ssh_signs,
    tree_bytes,
)
from yktool.demo import IMAGE, KEYS, PASSPHRASE, ROOT
from yktool.host import Host
from yktool.inventory import Registry
from yktool.luks.header import read_header


def _verify_commit(root: Path, rev: str) -> subprocess.CompletedProcess[bytes]:
    home = root / "home/alice"
    return subprocess.run(
        ["git", "-c", "safe.directory=*", "verify-commit", rev],
        cwd=home / "project",
        capture_output=True,
        check=False,
        env={"HOME": str(home), "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"), "PATH": "/usr/bin:/bin"},
    )


def _replace(cli: CliCall, scratch: Path, *extra: str, args: tuple[str, ...] = ()) -> CliResult:
    return cli(
        "--root",
        scratch / ROOT,
        "--device",
        spec(scratch, "backup"),
        "--yes",
        *extra,
        "replace",
        "--lost",
        "primary",
        "--new-device",
        spec(scratch, "new"),
        "--unlock-key-file",
        str(PASSPHRASE),
        "--new-pin-stdin",
        *args,
        input=demo_pin(scratch) + "\n",
    )


def test_lost_key_is_replaced_everywhere_and_revoked(scratch: Path, cli: CliCall, tmp_path: Path) -> None:
    root = scratch / ROOT
    host = Host(root)
    pin = demo_pin(scratch)
    old_commit = git_commit_verifies(scratch, spec(scratch, "primary"))  # A signs before it is lost
    assert old_commit.returncode == 0, old_commit.stderr
    reg = Registry.load(host)
    a_pub = next(str(e["public_key"]) for _k, e in reg.enrollments("ssh") if _k.nickname == "primary")
    b_files = {
        p: (root / p).read_bytes()
        for p in ("home/alice/.ssh/id_ed25519_sk_backup", "home/alice/.ssh/id_ed25519_sk_backup.pub")
    }
    (scratch / KEYS / "primary.json").unlink()  # key A is lost

    r = _replace(cli, scratch, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert {f["area"] for f in report["lost"]} == {"luks", "pam", "ssh"}
    assert {f["owner"] for f in report["lost"]} == {"primary"}
    assert report["counts"]["new"]["pin_prompts"] == 1
    assert report["counts"]["present-1"] == {"touches": 0, "pin_prompts": 0}  # probes are silent
    assert report["not_part_of_this_run"] == [] and not report["nothing_to_do"]
    assert any("primary-2" in item for item in report["next_steps"])  # the new key, put in its place
    assert any("id_ed25519_sk.pub" in item and "off this host" in item for item in report["next_steps"])

    # LUKS: A's token gone, C opens, B still opens, the passphrase still opens
    header = read_header(host, IMAGE)
    assert len(header.tokens_of_type("systemd-fido2")) == 2
    assert key_opens_image(scratch, spec(scratch, "new"), pin)
    assert key_opens_image(scratch, spec(scratch, "backup"), pin)
    assert passphrase_opens(scratch)
    # pam_u2f: two credentials on alice's line (B, C); the real module accepts C
    assert authfile_whole(scratch)
    line = (root / "etc/u2f_mappings").read_text().splitlines()[0]
    assert line.count(":") == 2
    (tmp_path / "c").mkdir()
    assert pam_accepts(scratch, spec(scratch, "new"), tmp_path / "c")
    # SSH: A out of authorized_keys, C in; C signs for git; A is retired, not deleted from history
    blob = a_pub.split()[1]
    assert blob not in (root / "home/alice/.ssh/authorized_keys").read_text()
    signers = (root / "home/alice/.ssh/allowed_signers").read_text()
    assert any(blob in ln and "valid-before=" in ln for ln in signers.splitlines())
    assert blob in (root / "home/alice/.ssh/revoked_signers").read_text()
    assert "revocationFile = ~/.ssh/revoked_signers" in (root / "home/alice/.gitconfig").read_text()
    verified = ssh_signs(scratch, "/home/alice/.ssh/id_ed25519_sk", spec(scratch, "new"), pin, tmp_path)
    assert verified.returncode == 0, verified.stderr
    committed = git_commit_verifies(scratch, spec(scratch, "new"))  # git now signs with C
    assert committed.returncode == 0 and b'Good "git" signature' in committed.stderr, committed.stderr
    # A's old commit: its key is in gpg.ssh.revocationFile now, so git no longer trusts it
    assert _verify_commit(root, "HEAD~1").returncode != 0
    # B untouched: its files byte for byte, and still signing
    assert all((root / p).read_bytes() == data for p, data in b_files.items())
    assert (
        ssh_signs(scratch, "/home/alice/.ssh/id_ed25519_sk_backup", spec(scratch, "backup"), pin, tmp_path).returncode
        == 0
    )
    # registry: primary gone, the replacement recorded everywhere A was
    names = sorted(k.nickname for k in Registry.load(host).keys)
    assert names == ["backup", "primary-2"]
    udev = (root / "etc/udev/rules.d/85-yktool-lock.rules").read_text()
    assert "yktool-key: primary " not in udev and "yktool-key: primary-2" in udev

    # a second run finds nothing lost and changes nothing
    before = tree_bytes(root)
    again = _replace(cli, scratch)
    assert again.exit_code == 0, again.output
    assert "nothing is lost" in again.stdout
    assert "replace: finished earlier; nothing left to do" in again.stdout
    assert tree_bytes(root) == before


def test_with_only_the_lost_key_enrolled_replace_refuses(scratch: Path, cli: CliCall) -> None:
    # a host where only A was ever enrolled: drop B's enrollments by commissioning afresh without backup
    # (and no disk: the demo image in /etc/crypttab holds B's token, which replace would find)
    root = scratch / ROOT
    for p in (
        "etc/u2f_mappings",
        "etc/yktool/keys.toml",
        "var/lib/yktool/commission.json",
        "home/alice/.ssh/authorized_keys",
        "etc/crypttab",
    ):
        (root / p).unlink()
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
        "ssh,pam",
        "--no-backup",
        "--pam-origin",
        ORIGIN,
        "--pin-stdin",
        input=demo_pin(scratch) + "\n",
    )
    assert r.exit_code == 0, r.output
    (scratch / KEYS / "primary.json").unlink()
    before = tree_bytes(root)
    r = _replace(cli, scratch)
    assert r.exit_code == 4, r.output
    assert "none of the keys present answers" in r.stderr
    assert "recovery key" in r.stderr
    assert tree_bytes(root) == before


def test_dry_run_lists_the_lost_key_and_changes_nothing(scratch: Path, cli: CliCall) -> None:
    root = scratch / ROOT
    (scratch / KEYS / "backup.json").unlink()  # this time the backup is lost
    before = tree_bytes(root)
    r = cli(
        "--root",
        root,
        "--device",
        spec(scratch, "primary"),
        "--dry-run",
        "replace",
        "--lost",
        "backup",
        "--new-device",
        spec(scratch, "new"),
    )
    assert r.exit_code == 0, r.output
    assert "Lost (backup)" in r.stdout and "[backup]" in r.stdout
    assert "wipe the lost key's keyslots" in r.stdout
    assert tree_bytes(root) == before


def test_replace_killed_at_every_step_resumes_and_never_locks_out(scratch: Path) -> None:
    import os
    import subprocess

    from tests.flows_support import YKTOOL

    pin = demo_pin(scratch)
    (scratch / KEYS / "primary.json").unlink()
    argv = [
        YKTOOL,
        "--root",
        str(scratch / ROOT),
        "--device",
        spec(scratch, "backup"),
        "--yes",
        "replace",
        "--lost",
        "primary",
        "--new-device",
        spec(scratch, "new"),
        "--unlock-key-file",
        str(PASSPHRASE),
        "--new-pin-stdin",
    ]
    stdin = (pin + "\n") * 4
    plan = subprocess.run([*argv[:6], "--json", "--dry-run", *argv[6:]], capture_output=True, text=True, check=False)
    assert plan.returncode == 0, plan.stderr
    ids = [s["id"] for s in json.loads(plan.stdout)["steps"]]
    assert ids[0] == "new.pin" and ids[-1] == "revoke.registry" and len(ids) >= 8
    for step in ids:
        run = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "YKTOOL_FAULT": f"after:{step}"},
        )
        assert run.returncode == 137, (step, run.stdout[-1500:], run.stderr[-1500:])
        assert passphrase_opens(scratch), step
        assert authfile_whole(scratch), step
        assert key_opens_image(scratch, spec(scratch, "backup"), pin), step
    final = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "nothing is lost" in final.stdout
    assert key_opens_image(scratch, spec(scratch, "new"), pin)
    header = read_header(Host(scratch / ROOT), IMAGE)
    assert len(header.tokens_of_type("systemd-fido2")) == 2  # B and C; A's wiped
    assert sorted(k.nickname for k in Registry.load(Host(scratch / ROOT)).keys) == ["backup", "primary-2"]
    state = json.loads((scratch / ROOT / "var/lib/yktool/replace.json").read_text())
    assert state["finished"]


def test_keep_old_signatures_keeps_the_lost_keys_past_commits_valid(scratch: Path, cli: CliCall) -> None:
    root = scratch / ROOT
    assert git_commit_verifies(scratch, spec(scratch, "primary")).returncode == 0
    (scratch / KEYS / "primary.json").unlink()
    r = cli(
        "--root",
        root,
        "--device",
        spec(scratch, "backup"),
        "--yes",
        "replace",
        "--lost",
        "primary",
        "--new-device",
        spec(scratch, "new"),
        "--unlock-key-file",
        str(PASSPHRASE),
        "--new-pin-stdin",
        "--keep-old-signatures",
        input=demo_pin(scratch) + "\n",
    )
    assert r.exit_code == 0, r.output
    assert not (root / "home/alice/.ssh/revoked_signers").exists()
    # signed before valid-before: still good
    assert _verify_commit(root, "HEAD").returncode == 0


def test_a_kept_keys_verify_required_ssh_key_is_not_taken_for_lost(scratch: Path, cli: CliCall) -> None:
    """A credProtect-3 credential (ssh -O verify-required) cannot be found by a silent probe: the
    present key is asked with its PIN instead, so its key is neither listed as lost nor revoked."""
    root = scratch / ROOT
    pin = demo_pin(scratch)
    r = cli(
        "--root",
        root,
        "--device",
        spec(scratch, "backup"),
        "ssh",
        "keygen",
        "-O",
        "verify-required",
        "-u",
        "alice",
        "-f",
        "/home/alice/.ssh/id_vr_sk",
        "--nickname",
        "backup",
        "--pin-stdin",
        input=pin + "\n",
    )
    assert r.exit_code == 0, r.output
    vr = (root / "home/alice/.ssh/id_vr_sk").read_bytes()
    (scratch / KEYS / "primary.json").unlink()  # key A is lost
    r = cli(
        "--root",
        root,
        "--device",
        spec(scratch, "backup"),
        "--json",
        "--dry-run",
        "replace",
        "--lost",
        "primary",
        "--new-device",
        spec(scratch, "new"),
        "--pin-stdin",
        input=pin + "\n",
    )
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert {s["where"] for s in report["lost"] if s["area"] == "ssh"} == {"/home/alice/.ssh/id_ed25519_sk"}
    assert {s["owner"] for s in report["lost"]} == {"primary"}
    assert any(s["where"] == "/home/alice/.ssh/id_vr_sk" and s["answered_by"] == "present-1" for s in report["kept"])
    # the kept key's PIN (for the probe), then the new key's first PIN
    r = cli(
        "--root",
        root,
        "--device",
        spec(scratch, "backup"),
        "--yes",
        "--json",
        "replace",
        "--lost",
        "primary",
        "--new-device",
        spec(scratch, "new"),
        "--unlock-key-file",
        str(PASSPHRASE),
        "--pin-stdin",
        "--new-pin-stdin",
        input=f"{pin}\n{pin}\n",
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["counts"]["present-1"] == {"touches": 0, "pin_prompts": 1}
    assert (root / "home/alice/.ssh/id_vr_sk").read_bytes() == vr
    backup = Registry.load(Host(root)).get("backup")
    assert backup is not None and any(e.get("path") == "/home/alice/.ssh/id_vr_sk" for e in backup.enrollments)


def test_the_kept_key_given_as_the_new_one_is_refused(scratch: Path, cli: CliCall) -> None:
    """The backup left in where the replacement should be: enrolling it again under the new name
    would leave one physical key where the registry shows two."""
    root = scratch / ROOT
    (scratch / KEYS / "primary.json").unlink()  # key A is lost
    before = tree_bytes(root)
    r = cli(
        "--root",
        root,
        "--device",
        spec(scratch, "backup"),
        "--yes",
        "replace",
        "--lost",
        "primary",
        "--new-device",
        spec(scratch, "backup"),
        "--unlock-key-file",
        str(PASSPHRASE),
        "--pin-stdin",
        input=demo_pin(scratch) + "\n",
    )
    assert r.exit_code == 4, r.output
    assert "already enrolled here (backup)" in r.stderr and "hint:" in r.stderr
    assert tree_bytes(root) == before


@pytest.mark.parametrize("shared", [False, True], ids=["lost-key-serial-less", "same-rule-as-kept-key"])
def test_revoking_a_serial_less_key_keeps_the_other_keys_usbguard_rules(
    scratch: Path, cli: CliCall, shared: bool
) -> None:
    """Keys of one model that show no USB serial (most YubiKeys) share one rule `serial ""`. The
    lost key's revocation must not drop a rule a kept key (or the new one) is let in by."""
    root = scratch / ROOT
    host = Host(root)
    rules = root / "etc/usbguard/rules.conf"
    serial_less = 'allow id 1209:0001 serial "" name "yktool software key" with-interface 03:00:00'
    rules.write_text(rules.read_text() + serial_less + "\n")
    with Registry.update(host) as reg:  # as a serial-less key would have been recorded
        for k in reg.keys:
            for e in k.enrollments:
                if e.get("kind") == "usbguard" and (k.nickname == "primary" or shared):
                    e["serial"] = ""
    kept_lines = [ln for ln in rules.read_text().splitlines() if ln != serial_less]
    (scratch / KEYS / "primary.json").unlink()  # key A is lost
    r = _replace(cli, scratch)
    assert r.exit_code == 0, r.output
    after = rules.read_text().splitlines()
    assert all(ln in after for ln in kept_lines), after  # the kept and the new key still get in
    assert (serial_less in after) is shared  # shared with B: kept; A's alone: gone


def test_the_replacement_of_a_verify_required_ssh_key_is_verify_required_too(scratch: Path, cli: CliCall) -> None:
    from yktool.ssh.enroll import load_private

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
        "-O",
        "application=ssh:work",
        "-u",
        "alice",
        "-f",
        "/home/alice/.ssh/id_vr_sk",
        "--nickname",
        "primary",
        "--pin-stdin",
        input=pin + "\n",
    )
    assert r.exit_code == 0, r.output
    lost = load_private(Host(root), "/home/alice/.ssh/id_vr_sk")
    (scratch / KEYS / "primary.json").unlink()  # key A is lost
    r = cli(
        "--root",
        root,
        "--device",
        spec(scratch, "backup"),
        "--yes",
        "--json",
        "replace",
        "--lost",
        "primary",
        "--new-device",
        spec(scratch, "new"),
        "--unlock-key-file",
        str(PASSPHRASE),
        "--pin-stdin",
        "--new-pin-stdin",
        input=f"{pin}\n{pin}\n",
    )
    assert r.exit_code == 0, r.output
    new = load_private(Host(root), "/home/alice/.ssh/id_vr_sk")
    assert new.public != lost.public
    assert new.verify_required and new.touch_required and new.public.application == "ssh:work"
    pub = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(root / "home/alice/.ssh/id_vr_sk")], capture_output=True, check=False
    )
    assert pub.returncode == 0 and pub.stdout.split()[1] == new.public.line().split()[1].encode()


def test_the_replacement_pam_credential_keeps_the_lost_ones_pin_check(scratch: Path, cli: CliCall) -> None:
    from yktool.pam.authfile import Authfile

    root = scratch / ROOT
    authfile = root / "etc/u2f_mappings"
    a_cid = next(
        str(e["credential_id"]) for k, e in Registry.load(Host(root)).enrollments("pam") if k.nickname == "primary"
    )
    parsed = Authfile.parse(authfile.read_text())
    a_cred = next(c for c in parsed.credentials_of("alice") if c.key_handle == a_cid)
    assert a_cred.options == "+presence"
    authfile.write_text(authfile.read_text().replace(a_cred.raw, a_cred.raw.replace("+presence", "+presence+pin")))
    (scratch / KEYS / "primary.json").unlink()  # key A (whose line asks for its PIN) is lost
    r = _replace(cli, scratch)
    assert r.exit_code == 0, r.output
    creds = Authfile.parse(authfile.read_text()).credentials_of("alice")
    c_cid = next(
        str(e["credential_id"]) for k, e in Registry.load(Host(root)).enrollments("pam") if k.nickname == "primary-2"
    )
    assert {c.key_handle: c.options for c in creds}[c_cid] == "+presence+pin"
    assert a_cid not in {c.key_handle for c in creds}


def test_revoke_only_refuses_up_front_when_a_pam_line_would_be_left_empty(scratch: Path, cli: CliCall) -> None:
    """No --new-device and the kept key is not on alice's pam_u2f line: refused before the LUKS
    slot or anything else is touched (the pam step used to refuse half-way)."""
    from yktool.pam.authfile import Authfile

    root = scratch / ROOT
    authfile = root / "etc/u2f_mappings"
    b_cid = next(
        str(e["credential_id"]) for k, e in Registry.load(Host(root)).enrollments("pam") if k.nickname == "backup"
    )
    b_cred = next(c for c in Authfile.parse(authfile.read_text()).credentials_of("alice") if c.key_handle == b_cid)
    authfile.write_text(authfile.read_text().replace(":" + b_cred.raw, ""))
    assert len(Authfile.parse(authfile.read_text()).credentials_of("alice")) == 1
    (scratch / KEYS / "primary.json").unlink()  # key A is lost
    before = tree_bytes(root)
    r = cli(
        "--root",
        root,
        "--device",
        spec(scratch, "backup"),
        "--yes",
        "replace",
        "--lost",
        "primary",
        "--unlock-key-file",
        str(PASSPHRASE),
    )
    assert r.exit_code == 4, r.output
    assert "without any" in r.stderr and "--new-device" in r.stderr
    assert tree_bytes(root) == before


def test_the_summary_fits_80_columns_and_the_ending_says_what_is_left(scratch: Path, cli: CliCall) -> None:
    """One screen: the root, the lost key and what goes per layer, the kept key, the new key's
    enrollments and its budget; the full plan only on --details. Then one ending: Next steps,
    and a finished re-run exits 0 with nothing left (in JSON too)."""
    root = scratch / ROOT
    (scratch / KEYS / "primary.json").unlink()
    r = _replace(cli, scratch)
    assert r.exit_code == 0, r.output
    summary = r.stderr.split("\nstep 1/")[0].splitlines()
    assert summary[0] == f"replace: {root}" and "host demo-host (linux)" in summary[1], summary
    assert all(len(line) <= 80 for line in summary[1:]), summary  # the root's path is as long as it is
    text = " ".join(line.strip() for line in summary)
    assert "lost primary, revoked: LUKS2 FIDO2 slot /var/lib/demo/disk.img, pam_u2f alice" in text, text
    assert "kept: backup (plugged in)" in text and "new key (primary-2)" in text
    assert "new key: 3 touches, 1 PIN" in text
    assert "Plan:" not in r.output and "step 9/9 done" in r.stderr  # no full plan without --details
    assert "Next steps (for you):\n  1. Put the new key (primary-2)" in r.stdout

    again = _replace(cli, scratch, "--json")
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert report["nothing_to_do"] and not report["changed"] and report["next_steps"] == []
    assert report["not_part_of_this_run"] == [] and report["lost"] == []


def test_details_shows_the_full_plan(scratch: Path, cli: CliCall) -> None:
    (scratch / KEYS / "primary.json").unlink()
    r = _replace(cli, scratch, args=("--details",))
    assert r.exit_code == 0, r.output
    full = r.stderr.split("\nstep 1/")[0]
    assert "Lost (primary), as named: revoked from" in full and "Kept (" in full
    assert "Plan: replace the lost key (primary) with primary-2" in full
    assert "proven by:" in full and "wipe the lost key's keyslots" in full
