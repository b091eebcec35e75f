"""The wizard's answers checked as they are typed (flows/validate.py: what questionary shows
under the answer), the wrong-PIN rule (asked again with the attempts left; from 3 left only when
the person says so), and the one ending (other layers' failures do not fail the run)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CliCall
from tests.flows_support import EMAIL, ORIGIN, fresh_setup, spec
from yktool.demo import IMAGE, PASSPHRASE, ROOT, VERIFY_ITEMS
from yktool.flows import validate
from yktool.flows.ask import Asker
from yktool.host import Host


@pytest.fixture
def root(tmp_path: Path) -> Host:
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "home/alice").mkdir(parents=True)
    (r / "etc/passwd").write_text("alice:x:1000:1000::/home/alice:/bin/sh\n")
    (r / "var/lib").mkdir(parents=True)
    return Host(r)


def _luks(path: Path, version: str) -> None:
    path.write_bytes(b"")
    subprocess.run(["truncate", "-s", "32M", str(path)], check=True)
    key = path.with_suffix(".key")
    key.write_bytes(b"k" * 16)
    subprocess.run(
        [
            "cryptsetup",
            "luksFormat",
            "--type",
            version,
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--batch-mode",
            "--key-file",
            str(key),
            str(path),
        ],
        check=True,
        capture_output=True,
    )


def test_a_user_must_be_in_the_roots_passwd(root: Host) -> None:
    check = validate.user(root)
    assert check("alice") is None
    assert check("bob") == "no user bob in the root's /etc/passwd: the user must exist there"
    assert check("  ") == "give a login name"


def test_a_luks_device_is_typed_as_the_root_sees_it_and_must_be_luks2(root: Host) -> None:
    check = validate.luks_devices(root)
    _luks(root.path("/var/lib/two.img"), "luks2")
    _luks(root.path("/var/lib/one.img"), "luks1")
    root.path("/var/lib/plain.img").write_bytes(b"\0" * 4096)
    assert check("/var/lib/two.img") is None
    assert check("") is None  # none: the LUKS steps are left out
    # the machine's own path of the same image: refused, saying what to type
    assert check(f"{root.root}/var/lib/two.img") == "not inside the root: type it as the root sees it: /var/lib/two.img"
    assert check("/var/lib/nothing.img") == "/var/lib/nothing.img: no such device or image inside the root"
    assert check("var/lib/two.img") == "var/lib/two.img: give the full path, as the root sees it (starting with /)"
    luks1 = check("/var/lib/one.img")
    assert luks1 is not None and "is LUKS1" in luks1
    plain = check("/var/lib/plain.img")
    assert plain is not None and "is not a LUKS device" in plain
    bad_second = check("/var/lib/two.img /var/lib/one.img")
    assert bad_second is not None and "one.img is LUKS1" in bad_second


def test_an_email_must_look_like_one() -> None:
    assert validate.email("alice@example.org") is None
    for wrong in ("alice", "alice at example.org", "a@b", "a,b@example.org", ""):
        assert validate.email(wrong) is not None, wrong


def test_the_backup_nickname_differs_from_the_first() -> None:
    assert validate.nickname()("primary") is None
    assert validate.nickname()("two words") is not None
    assert validate.nickname("primary")("primary") == "primary is the first key's name: the backup needs another"


def test_a_host_key_file_must_be_inside_the_root(root: Host) -> None:
    check = validate.root_file(root)
    root.path("/etc/ssh").mkdir()
    root.path("/etc/ssh/k.pub").write_text("ssh-ed25519 AAAA host\n")
    assert check("/etc/ssh/k.pub") is None
    assert check("/etc/ssh/none.pub") == "/etc/ssh/none.pub: no such file inside the root"


class _Asker(Asker):
    """A terminal whose person answers every confirm() with `answer`."""

    def __init__(self, answer: bool) -> None:
        super().__init__(interactive=True)
        self.answer = answer
        self.asked: list[str] = []

    def confirm(self, question: str, *, yes: bool, default: bool = True) -> bool:
        self.asked.append(question)
        assert default is False  # going on towards a block is never the default
        return self.answer


def test_a_wrong_pin_asks_again_and_near_the_block_only_when_told(capsys: pytest.CaptureFixture[str]) -> None:
    from yktool.cli.flows import _wrong_pin_handler

    asker = _Asker(answer=False)
    again = _wrong_pin_handler(asker, pin_stdin=False)
    assert again("primary", 7) is True and asker.asked == []
    assert "wrong PIN for the primary key (7 attempts left)" in capsys.readouterr().err
    assert again("primary", 4) is True and asker.asked == []
    assert again("primary", 3) is False  # the person said no: the error stands, the run stops
    assert "After 3 more wrong PINs the key blocks its PIN for good" in asker.asked[0]
    assert _wrong_pin_handler(_Asker(answer=True), pin_stdin=False)("primary", 2) is True
    # a PIN from stdin is not asked again (a script would loop on the same wrong line)
    assert _wrong_pin_handler(asker, pin_stdin=True)("primary", 7) is False


def test_other_layers_failures_are_listed_apart_and_do_not_fail_the_run(tmp_path: Path, cli: CliCall) -> None:
    # the run's own checks, plus two of other layers that fail on the scratch root (a firewall,
    # USBGuard's daemon): they are reported apart, and the run exits 0, a finished re-run too
    only = [*VERIFY_ITEMS, "net.firewall", "hw.usbguard.running"]
    with fresh_setup(tmp_path) as (scratch, tcti):
        argv = [
            "--root",
            scratch / ROOT,
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
            IMAGE,
            "--git-email",
            EMAIL,
            "--pam-origin",
            ORIGIN,
            "--backup-device",
            spec(scratch, "backup"),
            "--unlock-key-file",
            PASSPHRASE,
            "--recovery-key-file",
            tmp_path / "recovery.txt",
            "--new-pin-stdin",
            "--verify-only",
            ",".join(only),
        ]
        r = cli(*argv, input="2468\n2468\n")
        assert r.exit_code == 0, r.output
        ours, _, others = r.stdout.partition("not part of this run")
        assert "FAIL" not in ours and "PASS  boot.luks.fido2" in ours
        assert "FAIL  net.firewall" in others and "FAIL  hw.usbguard.running" in others
        assert "Next steps (for you):" in r.stdout and "Store the recovery key offline" in r.stdout
        r = cli("--json", *argv)
        doc = json.loads(r.stdout)
        assert r.exit_code == 0 and doc["ok"] is True and doc["nothing_to_do"] is True
        assert {"net.firewall", "hw.usbguard.running", "pam.sudo", "pam.login"} <= set(doc["not_part_of_this_run"])


def test_the_pam_line_is_a_next_step_in_the_control_verify_accepts(cli: CliCall, tmp_path: Path) -> None:
    """The PAM stack is the person's to edit: its checks fail until the line is in, and the run
    says where the line goes (in `required`, which verify accepts) instead of failing."""
    root = tmp_path / "root"
    (root / "etc/pam.d").mkdir(parents=True)
    (root / "home/alice").mkdir(parents=True)
    (root / "etc/passwd").write_text("alice:x:1000:1000::/home/alice:/bin/sh\n")
    (root / "etc/hostname").write_text("box\n")
    (root / "etc/pam.d/sudo").write_text("#%PAM-1.0\n@include common-auth\n")
    r = cli(
        "--root",
        root,
        "--device",
        f"sim:{tmp_path / 'k.json'}",
        "--yes",
        "commission",
        "--kind",
        "linux",
        "--user",
        "alice",
        "--no-backup",
        "--steps",
        "pam,verify",
        "--new-pin-stdin",
        input="2468\n",
    )
    assert r.exit_code == 0, r.output
    ours, _, others = r.stdout.partition("not part of this run")
    assert "FAIL" not in ours and "FAIL  pam.sudo" in others
    _, _, after = r.stdout.partition("Next steps (for you):")
    assert "Add to /etc/pam.d/sudo, as its first `auth` line (above `@include common-auth`)" in after
    assert "    auth required pam_u2f.so" in after and "origin=pam://box" in after
    assert "sufficient" not in after
