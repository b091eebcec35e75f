"""Issue 12, items 3-5: two runs at once and runs killed half-way, on real processes.

Each test drives `python -m yktool` (see tests/race_support.py): two runs held inside their
read-modify-write window so that, without the root's lock, they interleave; or one run killed
with SIGKILL at a named point. What is checked is what the owner cares about: the passphrase
still opens the image, no credential is lost, the registry agrees with the header.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import race_support as rs
from tests.fixtures.luks import LuksImage, make_image
from tests.fixtures.roots import FixtureRoot, fido2_token, import_token
from yktool.host import Host
from yktool.inventory import Registry
from yktool.luks.header import read_header
from yktool.pam.authfile import Authfile

PASSWD = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n"


def make_world(root: Path) -> LuksImage:
    """A root with users and hostname, and a LUKS2 image inside it (/img/disk.img)."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/hostname").write_text("ws1\n")
    return make_image(root / "img")


def inside(root: Path, path: Path) -> str:
    return "/" + str(path.relative_to(root))


def add_hardware_slot(image: LuksImage, tmp: Path) -> int:
    """A keyslot with a systemd-fido2 token (a key's slot; its secret is nobody's to type)."""
    secret = tmp / "hw.key"
    secret.write_bytes(os.urandom(32))
    before = set(read_header(Host(), str(image.path)).keyslots)
    subprocess.run(
        [
            "cryptsetup",
            "luksAddKey",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            str(image.key_file),
            str(image.path),
            str(secret),
        ],
        check=True,
        capture_output=True,
    )
    slot = (set(read_header(Host(), str(image.path)).keyslots) - before).pop()
    import_token(image.path, fido2_token(slot), 9)
    return slot


def add_recovery_by_systemd(image: LuksImage) -> tuple[int, bytes]:
    before = set(read_header(Host(), str(image.path)).keyslots)
    out = subprocess.run(
        ["systemd-cryptenroll", "--recovery-key", f"--unlock-key-file={image.key_file}", str(image.path)],
        check=True,
        capture_output=True,
    ).stdout.strip()
    slot = (set(read_header(Host(), str(image.path)).keyslots) - before).pop()
    return slot, out


# ------------------------------------------------------------------------------------ item 3
def test_two_wipes_at_once_never_leave_only_hardware(root: Path, tmp_path: Path) -> None:
    """`wipe --slot 0` (the passphrase) and `wipe --slot R` (the recovery key) at once: one is
    done, the other re-reads the header under the lock and refuses; a typed way in remains."""
    image = make_world(root)
    recovery_slot, recovery_key = add_recovery_by_systemd(image)
    add_hardware_slot(image, tmp_path)
    dev = inside(root, image.path)
    first, second = rs.together(
        tmp_path,
        (["--root", root, "--yes", "luks", "wipe", dev, "--slot", "0"], None),
        (["--root", root, "--yes", "luks", "wipe", dev, "--slot", recovery_slot], None),
        delay=["yktool.luks.wipe:wipe_slots=0.4", "yktool.luks.wipe:wipe_slots=1.4"],
    )
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 4], (first.output, second.output)
    refused = first if first.returncode == 4 else second
    assert "only by hardware" in refused.stderr and "Traceback" not in refused.output
    header = read_header(Host(), str(image.path))
    assert header.knowledge_slots, "only hardware slots are left"
    assert image.opens_with(image.passphrase) or image.opens_with(recovery_key)


def test_a_wipe_killed_between_keyslot_and_token_is_healed(root: Path, tmp_path: Path) -> None:
    """Killed after the keyslot went and before its token: the token points at nothing; status
    says so, and the re-run of the same wipe removes it (exit 0), the passphrase still opens."""
    image = make_world(root)
    recovery_slot, _ = add_recovery_by_systemd(image)
    dev = inside(root, image.path)
    args: list[object] = ["--root", root, "--yes", "luks", "wipe", dev, "--slot", recovery_slot]
    assert rs.kill_at(tmp_path, args, "yktool.luks.cryptenroll:remove_orphan_tokens:before")
    header = read_header(Host(), str(image.path))
    assert recovery_slot not in header.keyslots and any(not t.keyslots for t in header.tokens.values())
    status = rs.run(["--root", root, "luks", "status", dev])
    assert "points at no keyslot" in status.stdout, status.output
    again = rs.run(args)
    assert again.returncode == 0, again.output
    assert read_header(Host(), str(image.path)).tokens == {}
    assert image.opens_with(image.passphrase)


# ------------------------------------------------------------------------------------ item 4
def _recovery_args(root: Path, image: LuksImage) -> list[object]:
    return [
        "--root",
        root,
        "luks",
        "add-recovery",
        inside(root, image.path),
        "--unlock-key-file",
        inside(root, image.key_file),
        "--key-to-stderr",
    ]


def _shown_key(run: rs.Run) -> bytes:
    lines = [ln.strip() for ln in run.stderr.splitlines() if ln.strip().count("-") == 7]
    assert len(lines) == 1, run.output
    return lines[0].encode()


def test_add_recovery_killed_before_the_key_was_shown_is_made_again(root: Path, tmp_path: Path) -> None:
    """Killed after systemd-cryptenroll made the slot, before the key was shown: that key is
    nobody's. It does not count as a way in (wiping the passphrase is refused), and the re-run
    removes it and shows a new one that opens (not "already has a recovery key")."""
    image = make_world(root)
    dev = inside(root, image.path)
    assert rs.kill_at(tmp_path, _recovery_args(root, image), "yktool.luks.cryptenroll:enroll_recovery:after")
    unseen = read_header(Host(), str(image.path)).slots_with_role("recovery")
    assert len(unseen) == 1  # the slot and its token are there; nobody saw the key
    wipe = rs.run(["--root", root, "--yes", "luks", "wipe", dev, "--slot", "0"])
    assert wipe.returncode == 4 and "no way in" in wipe.stderr, wipe.output
    status = json.loads(rs.run(["--root", root, "--json", "luks", "status", dev]).stdout)
    assert status.get("unseen_recovery") == unseen
    again = rs.run(_recovery_args(root, image))
    assert again.returncode == 0, again.output
    assert "already has" not in again.output
    key = _shown_key(again)
    header = read_header(Host(), str(image.path))
    [slot] = header.slots_with_role("recovery")
    assert slot not in unseen or header.keyslots[slot].tokens  # the unseen one went, a new one came
    assert image.opens_with(key) and image.opens_with(image.passphrase)
    # and now the key someone saw is a way in: the passphrase may go
    assert rs.run(["--root", root, "--yes", "luks", "wipe", dev, "--slot", "0"]).returncode == 0
    assert image.opens_with(key)


def test_a_tokenless_slot_of_an_interrupted_add_recovery_is_not_a_passphrase(root: Path, tmp_path: Path) -> None:
    """Killed inside systemd-cryptenroll, between its slot and its token: a token-less slot that
    looks like a passphrase. It is not counted as one: wiping the real passphrase is refused, and
    the next add-recovery removes it."""
    image = make_world(root)
    dev = inside(root, image.path)
    assert rs.kill_at(tmp_path, _recovery_args(root, image), "yktool.luks.cryptenroll:enroll_recovery:after")
    [token_id] = list(read_header(Host(), str(image.path)).tokens)
    # what a kill between systemd's two header writes leaves: the slot, not yet its token
    subprocess.run(["cryptsetup", "token", "remove", "--token-id", str(token_id), str(image.path)], check=True)
    header = read_header(Host(), str(image.path))
    assert len(header.keyslots) == 2 and not header.tokens
    wipe = rs.run(["--root", root, "--yes", "luks", "wipe", dev, "--slot", "0"])
    assert wipe.returncode == 4, wipe.output
    status = json.loads(rs.run(["--root", root, "--json", "luks", "status", dev]).stdout)
    assert [s["role"] for s in status["keyslots"]] == ["password", "unseen-recovery"]
    again = rs.run(_recovery_args(root, image))
    assert again.returncode == 0 and "already" not in again.output, again.output
    key = _shown_key(again)
    after = read_header(Host(), str(image.path))
    assert len(after.keyslots) == 2 and after.slots_with_role("recovery")
    assert image.opens_with(key) and image.opens_with(image.passphrase)


def test_verify_does_not_count_an_unseen_recovery_key_as_the_fallback(
    hardened_root: FixtureRoot, tmp_path: Path
) -> None:
    """The hardened root's only typed slot is its passphrase. An add-recovery killed before it
    showed the key, then the passphrase removed: verify's fallback check fails (the recovery
    key there is known to nobody)."""
    root = hardened_root.root
    image = hardened_root.own_image()
    key = root / "img.key"
    key.write_bytes(b"fixture passphrase")
    dev = "/" + str(image.relative_to(root))
    args: list[object] = [
        "--root",
        root,
        "luks",
        "add-recovery",
        dev,
        "--unlock-key-file",
        "/img.key",
        "--key-to-stderr",
    ]
    assert rs.kill_at(tmp_path, args, "yktool.luks.cryptenroll:enroll_recovery:after")
    assert read_header(Host(), str(image)).slots_with_role("recovery")
    subprocess.run(
        ["cryptsetup", "luksKillSlot", "--batch-mode", str(image), "0"],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    res = rs.run(
        ["--root", root, "--json", "verify", "--secrets", hardened_root.secrets, "--only", "boot.luks.fallback"]
    )
    [check] = json.loads(res.stdout)["checks"]
    assert check["status"] == "fail", check


# ------------------------------------------------------------------------------------ item 5
def _pam_credentials(root: Path, user: str = "alice") -> tuple[set[str], set[str]]:
    """Credential ids (standard base64) on `user`'s authfile line and in the registry."""
    text = (root / "etc/u2f_mappings").read_text()
    on_line = {
        base64.b64encode(c.credential_id).decode()
        for c in Authfile.parse(text).credentials_of(user)
        if c.credential_id is not None
    }
    registry = Registry.load(Host(root))
    recorded = {str(e["credential_id"]) for _, e in registry.enrollments("pam") if e.get("user") == user}
    return on_line, recorded


def test_two_pam_registers_at_once_keep_both_credentials(
    root: Path, tmp_path: Path, sim_key: Callable[..., str]
) -> None:
    make_world(root)
    a, b = sim_key("a"), sim_key("b")
    runs = rs.together(
        tmp_path,
        (["--root", root, "--device", a, "pam", "register", "--user", "alice", "--nickname", "primary"], None),
        (["--root", root, "--device", b, "pam", "register", "--user", "alice", "--nickname", "backup"], None),
        delay="yktool.pam.register:write_target=0.6",
    )
    assert [r.returncode for r in runs] == [0, 0], [r.output for r in runs]
    on_line, recorded = _pam_credentials(root)
    assert len(on_line) == 2 and on_line == recorded


# ------------------------------------------------------------------------------------ the lock
def test_a_second_run_waits_then_refuses_naming_the_holder(
    root: Path, tmp_path: Path, sim_key: Callable[..., str]
) -> None:
    """While one run holds the root's lock (here: paused inside pam register), a second one
    gives up after --lock-wait with who holds it; a read-only command does not wait at all."""
    make_world(root)
    mark = tmp_path / "held"
    holder = rs.start(
        ["--root", root, "--device", sim_key("a"), "pam", "register", "--user", "alice"],
        env={"YKTEST_PAUSE": "yktool.pam.register:write_target:before", "YKTEST_MARK": str(mark)},
    )
    try:
        while not mark.exists():
            assert holder.poll() is None, rs.finish(holder).output
        second = rs.run(
            ["--root", root, "--lock-wait", "0.3", "--device", sim_key("b"), "pam", "register", "--user", "alice"]
        )
        assert second.returncode == 4, second.output
        assert f"another yktool run (pid {holder.pid}, `yktool pam register`) holds the lock on {root}" in second.stderr
        assert "--lock-wait" in second.stderr and "Traceback" not in second.output
        reader = rs.run(["--root", root, "--lock-wait", "0", "--json", "keys", "list"])
        assert reader.returncode == 0, reader.output
    finally:
        os.killpg(holder.pid, 9)
        holder.communicate()
    # the kill dropped the lock: the next run goes ahead at once
    assert (
        rs.run(
            ["--root", root, "--lock-wait", "0", "--device", sim_key("b"), "pam", "register", "--user", "alice"]
        ).returncode
        == 0
    )


def test_the_lock_file_is_not_followed_through_a_link(root: Path, tmp_path: Path) -> None:
    """A link planted where the lock file goes is refused, and its target left alone."""
    make_world(root)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (root / "var/lib/yktool").mkdir(parents=True)
    (root / "var/lib/yktool/lock").symlink_to(victim)
    res = rs.run(["--root", root, "--json", "usbguard", "allow", "--vendor", "1050", "--product", "0407"])
    assert res.returncode == 4 and "symbolic link" in res.stdout + res.stderr, res.output
    assert victim.read_text() == "precious\n"


def test_nothing_is_left_of_the_lock_after_a_refused_run(root: Path) -> None:
    """A run that changes nothing leaves the root as it found it: no lock file, no new folder."""
    make_world(root)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    res = rs.run(["--root", root, "--yes", "luks", "wipe", "/img/disk.img", "--slot", "0"])
    assert res.returncode == 4, res.output
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


@pytest.mark.parametrize(
    "command", [["luks", "status", "/img/disk.img"], ["keys", "list"], ["verify", "--only", "ssh"]]
)
def test_read_only_commands_never_wait_for_the_lock(root: Path, command: list[str]) -> None:
    from yktool.lock import root_lock

    make_world(root)
    with root_lock(Host(root), "a test holding the lock"):
        res = rs.run(["--root", root, "--lock-wait", "0", *command])
    assert "holds the lock" not in res.output, res.output


def test_every_command_takes_the_lock_unless_it_is_on_the_read_only_list() -> None:
    """The lock is the default: a command runs without it only when it is marked read-only, and
    this list is the reviewed set of those (a new command that changes nothing is added here)."""
    import click

    from yktool.cli import main_group

    ctx = click.Context(main_group)
    leaves: dict[str, click.Command] = {}

    def walk(cmd: click.Command | None, path: list[str]) -> None:
        assert cmd is not None
        assert getattr(cmd, "yktool_guarded", False), path
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), [*path, name])
        else:
            leaves[" ".join(path)] = cmd

    for name in main_group.list_commands(ctx):
        walk(main_group.get_command(ctx, name), [name])
    read_only = {p for p, c in leaves.items() if getattr(c, "yktool_read_only", False)}
    assert read_only == {
        "verify",
        "demo",
        "luks status",
        "luks test-unlock",
        "keys list",
        "key list",
        "key info",
        "key pin verify",
        "key replug",
        "key emulate",
        "pam check",
        "ssh sign",
        "tpm status",
        "udev show",
        "man",
    }
    for path in set(leaves) - read_only:
        assert leaves[path].callback is not None and hasattr(leaves[path].callback, "__wrapped__"), path
    assert {
        "luks wipe",
        "pam register",
        "ssh authorize",
        "git signing",
        "udev install",
        "usbguard allow",
        "commission",
        "replace",
    } <= set(leaves) - read_only
