"""`yktool replace --lost NAME…` and the last way in (issue 12, items 1, 2, 6, 7).

Which key is lost is said by name, never taken from absence: another user's keys, a spare in a
safe and unregistered credentials are kept. The whole plan is checked before anything changes:
a refusal leaves the image, the authfile, authorized_keys and the registry byte for byte as
they were. `key reset` refuses to reset someone's last way in. Proven with the consumers: the
real pam_u2f (pamtester) says who can still log in, cryptsetup which key opens the image."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CliCall, CliResult
from tests.flows_support import (
    ORIGIN,
    PASSWORD_HASH,
    authfile_whole,
    demo_pin,
    key_opens_image,
    pam_accepts,
    passphrase_opens,
    set_shadow,
    spec,
    tree_bytes,
)
from yktool.demo import IMAGE, KEYS, PASSPHRASE, ROOT
from yktool.host import Host
from yktool.inventory import Registry
from yktool.luks.header import read_header
from yktool.pam.authfile import Authfile

AUTHFILE = "etc/u2f_mappings"
AUTHORIZED = "home/alice/.ssh/authorized_keys"


def watched(scratch: Path) -> dict[str, str]:
    """sha256 of what a refusal must leave alone: the LUKS2 header, the authfile,
    authorized_keys, the registry (tree_bytes covers every other file)."""
    root = scratch / ROOT
    header = (root / str(IMAGE).lstrip("/")).read_bytes()[: 16 << 20]
    return {
        name: hashlib.sha256(data).hexdigest()
        for name, data in (
            ("header", header),
            ("authfile", (root / AUTHFILE).read_bytes()),
            ("authorized_keys", (root / AUTHORIZED).read_bytes()),
            ("registry", (root / "etc/yktool/keys.toml").read_bytes()),
        )
    }


def lose(scratch: Path, role: str) -> str:
    """The key is lost: its state leaves the keys folder, and a finder holds a copy of it."""
    finder = scratch / f"finder-{role}.json"
    shutil.move(scratch / KEYS / f"{role}.json", finder)
    return f"sim:{finder}"


def replace(
    cli: CliCall,
    scratch: Path,
    *args: str,
    new: bool = True,
    device: str = "backup",
    flags: tuple[str, ...] = ("--yes",),
) -> CliResult:
    extra = ["--new-device", spec(scratch, "new"), "--new-pin-stdin"] if new else []
    return cli(
        "--root",
        scratch / ROOT,
        "--device",
        spec(scratch, device),
        *flags,
        "replace",
        *args,
        *extra,
        "--unlock-key-file",
        str(PASSPHRASE),
        input=demo_pin(scratch) + "\n",
    )


def authorized_fingerprints(scratch: Path) -> set[str]:
    """What the real ssh-keygen reads out of alice's authorized_keys (the fingerprint of each key)."""
    r = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(scratch / ROOT / AUTHORIZED)], capture_output=True, text=True, check=False
    )
    return {ln.split()[1] for ln in r.stdout.splitlines() if len(ln.split()) > 1} if r.returncode == 0 else set()


def fingerprint_of(scratch: Path, nickname: str) -> str:
    return next(
        str(e["fingerprint"])
        for k, e in Registry.load(Host(scratch / ROOT)).enrollments("ssh")
        if k.nickname == nickname and e.get("role") == "key-file"
    )


def credential_of(scratch: Path, nickname: str) -> str:
    return next(
        str(e["credential_id"])
        for k, e in Registry.load(Host(scratch / ROOT)).enrollments("pam")
        if k.nickname == nickname
    )


def line_of(scratch: Path, user: str) -> str:
    return next(ln for ln in (scratch / ROOT / AUTHFILE).read_text().splitlines() if ln.startswith(f"{user}:"))


def add_bob(scratch: Path, cli: CliCall) -> None:
    """bob on the same host, with his own two keys on his own line of /etc/u2f_mappings."""
    root = scratch / ROOT
    with (root / "etc/passwd").open("a") as f:
        f.write("bob:x:1001:1001:Bob:/home/bob:/bin/bash\n")
    (root / "home/bob").mkdir()
    for nick in ("bob1", "bob2"):
        r = cli(
            "--root",
            root,
            "--device",
            f"sim:{scratch / KEYS / nick}.json",
            "pam",
            "register",
            "--user",
            "bob",
            "--origin",
            ORIGIN,
            "--nickname",
            nick,
        )
        assert r.exit_code == 0, r.output


def add_spare(scratch: Path, cli: CliCall) -> None:
    """A third key of alice's, in a safe: a LUKS keyslot and a pam_u2f credential of its own."""
    root = scratch / ROOT
    key = spec(scratch, "spare")
    r = cli(
        "--root",
        root,
        "--device",
        key,
        "luks",
        "enroll-fido2",
        str(IMAGE),
        "--unlock-key-file",
        str(PASSPHRASE),
        "--nickname",
        "spare",
    )
    assert r.exit_code == 0, r.output
    r = cli(
        "--root", root, "--device", key, "pam", "register", "--user", "alice", "--origin", ORIGIN, "--nickname", "spare"
    )
    assert r.exit_code == 0, r.output


# ------------------------------------------------------------------------------------ item 1
def test_two_users_only_the_lost_keys_user_changes(scratch: Path, cli: CliCall, tmp_path: Path) -> None:
    """alice and bob each have their own keys; alice's primary is lost. Only alice's line
    changes, the new key goes on alice's line, bob's credentials stay byte for byte and the
    real pam_u2f still lets bob in with each of his keys."""
    add_bob(scratch, cli)
    bob_line = line_of(scratch, "bob")
    primary_cid = credential_of(scratch, "primary")
    finder = lose(scratch, "primary")

    r = replace(cli, scratch, "--lost", "primary", flags=("--yes", "--json"))
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert {f["owner"] for f in report["lost"]} == {"primary"}
    assert {f["user"] for f in report["lost"] if f["area"] == "pam"} == {"alice"}
    assert {(f["owner"], f["status"]) for f in report["kept"] if f["user"] == "bob"} == {
        ("bob1", "not plugged in: kept"),
        ("bob2", "not plugged in: kept"),
    }

    assert line_of(scratch, "bob") == bob_line
    alice = {c.key_handle for c in Authfile.parse((scratch / ROOT / AUTHFILE).read_text()).credentials_of("alice")}
    assert alice == {credential_of(scratch, "backup"), credential_of(scratch, "primary-2")}
    assert primary_cid not in (scratch / ROOT / AUTHFILE).read_text()
    assert sorted(k.nickname for k in Registry.load(Host(scratch / ROOT)).keys) == [
        "backup",
        "bob1",
        "bob2",
        "primary-2",
    ]
    for n, (who, key) in enumerate(
        [("alice", spec(scratch, "new")), ("bob", spec(scratch, "bob1")), ("bob", spec(scratch, "bob2"))]
    ):
        (tmp_path / str(n)).mkdir()
        assert pam_accepts(scratch, key, tmp_path / str(n), user=who), (who, key)
    (tmp_path / "finder").mkdir()
    assert not pam_accepts(scratch, finder, tmp_path / "finder", user="alice")


# ------------------------------------------------------------------------------------ item 2
def test_a_spare_not_plugged_in_and_not_named_is_kept(scratch: Path, cli: CliCall) -> None:
    add_spare(scratch, cli)
    spare_key = spec(scratch, "spare")
    spare_state = (scratch / KEYS / "spare.json").read_bytes()
    (scratch / KEYS / "spare.json").unlink()  # in the safe: not plugged in
    lose(scratch, "primary")

    r = replace(cli, scratch, "--lost", "primary")
    assert r.exit_code == 0, r.output
    assert "spare (not plugged in)" in r.stderr.split("  kept: ")[1]  # the summary
    (scratch / KEYS / "spare.json").write_bytes(spare_state)  # back from the safe: it still opens everything
    assert key_opens_image(scratch, spare_key, demo_pin(scratch))
    assert credential_of(scratch, "spare") in line_of(scratch, "alice")
    spare = Registry.load(Host(scratch / ROOT)).get("spare")
    assert spare is not None and {e["kind"] for e in spare.enrollments} == {"luks", "pam"}
    assert len(read_header(Host(scratch / ROOT), IMAGE).tokens_of_type("systemd-fido2")) == 3  # B, spare, new


def test_two_lost_names_revoke_both_and_keep_the_rest(scratch: Path, cli: CliCall) -> None:
    add_spare(scratch, cli)
    lose(scratch, "spare")
    lose(scratch, "primary")
    r = replace(cli, scratch, "--lost", "primary,spare", flags=("--yes", "--json"))
    assert r.exit_code == 0, r.output
    assert {f["owner"] for f in json.loads(r.stdout)["lost"]} == {"primary", "spare"}
    names = sorted(k.nickname for k in Registry.load(Host(scratch / ROOT)).keys)
    assert names == ["backup", "primary-2"]
    assert len(read_header(Host(scratch / ROOT), IMAGE).tokens_of_type("systemd-fido2")) == 2  # B and new
    assert key_opens_image(scratch, spec(scratch, "backup"), demo_pin(scratch))
    assert key_opens_image(scratch, spec(scratch, "new"), demo_pin(scratch))


def test_an_unknown_name_is_refused_with_the_registry_listed(scratch: Path, cli: CliCall) -> None:
    lose(scratch, "primary")
    before = tree_bytes(scratch / ROOT)
    r = replace(cli, scratch, "--lost", "primray")
    assert r.exit_code == 2, r.output
    assert "primray" in r.stderr and "primary (" in r.stderr and "backup (" in r.stderr
    assert "Traceback" not in r.output
    assert tree_bytes(scratch / ROOT) == before


def test_without_lost_and_without_a_terminal_nothing_is_guessed(scratch: Path, cli: CliCall) -> None:
    lose(scratch, "primary")
    before = tree_bytes(scratch / ROOT)
    r = replace(cli, scratch)
    assert r.exit_code == 2, r.output
    assert "--lost" in r.stderr and "primary (" in r.stderr and "backup (" in r.stderr
    assert tree_bytes(scratch / ROOT) == before


def test_a_key_named_lost_that_is_plugged_in_is_refused(scratch: Path, cli: CliCall) -> None:
    before = tree_bytes(scratch / ROOT)
    r = replace(cli, scratch, "--lost", "backup")  # the backup is the --device in hand
    assert r.exit_code == 4, r.output
    assert "plugged in: backup" in r.stderr
    assert tree_bytes(scratch / ROOT) == before


# ------------------------------------------------------------------------------------ item 7
def _only_ssh_key_is_primarys(scratch: Path) -> None:
    """alice's authorized_keys holds only the primary's key (the backup's was never authorized)."""
    path = scratch / ROOT / AUTHORIZED
    backup = next(
        str(e["public_key"]).split()[1]
        for k, e in Registry.load(Host(scratch / ROOT)).enrollments("ssh")
        if k.nickname == "backup"
    )
    path.write_text("".join(ln for ln in path.read_text().splitlines(keepends=True) if backup not in ln))


def test_revoke_only_of_the_only_ssh_key_refuses_before_anything(scratch: Path, cli: CliCall) -> None:
    _only_ssh_key_is_primarys(scratch)
    lose(scratch, "primary")
    before, sums = tree_bytes(scratch / ROOT), watched(scratch)
    r = replace(cli, scratch, "--lost", "primary", new=False)
    assert r.exit_code == 4, r.output
    assert "without any SSH key" in r.stderr and "--new-device" in r.stderr and "--force" in r.stderr
    assert watched(scratch) == sums and tree_bytes(scratch / ROOT) == before
    assert authorized_fingerprints(scratch) == {fingerprint_of(scratch, "primary")}
    # --force alone is not enough without a terminal: the name must be typed (--confirm)
    r = replace(cli, scratch, "--lost", "primary", "--force", new=False)
    assert r.exit_code == 4 and "--confirm primary" in r.stderr, r.output
    assert watched(scratch) == sums and tree_bytes(scratch / ROOT) == before
    r = replace(cli, scratch, "--lost", "primary", "--force", "--confirm", "backup", new=False)
    assert r.exit_code == 4, r.output
    assert tree_bytes(scratch / ROOT) == before


def test_forced_revoke_only_cuts_the_finder_off_everywhere_and_keeps_the_owner_in(
    scratch: Path, cli: CliCall, tmp_path: Path
) -> None:
    """The choice for item 7: with --force --confirm, SSH access is revoked too (the plan says
    alice is left without an SSH key); the finder's key opens nothing, alice keeps the disk and
    pam_u2f through the backup."""
    _only_ssh_key_is_primarys(scratch)
    pin = demo_pin(scratch)
    primary_blob = next(
        str(e["public_key"]).split()[1]
        for k, e in Registry.load(Host(scratch / ROOT)).enrollments("ssh")
        if k.nickname == "primary"
    )
    finder = lose(scratch, "primary")
    r = replace(
        cli, scratch, "--lost", "primary", "--force", "--confirm", "primary", new=False, flags=("--yes", "--json")
    )
    assert r.exit_code == 0, r.output
    forced = json.loads(r.stdout)["forced"]
    assert [(x["area"], x["user"]) for x in forced] == [("ssh", "alice")]
    assert primary_blob not in (scratch / ROOT / AUTHORIZED).read_text()
    assert authorized_fingerprints(scratch) == set()  # ssh-keygen finds no key: the finder's is out
    assert not key_opens_image(scratch, finder, pin)
    assert key_opens_image(scratch, spec(scratch, "backup"), pin) and passphrase_opens(scratch)
    (tmp_path / "b").mkdir()
    (tmp_path / "f").mkdir()
    assert pam_accepts(scratch, spec(scratch, "backup"), tmp_path / "b")
    assert not pam_accepts(scratch, finder, tmp_path / "f")
    assert authfile_whole(scratch)


def test_the_plan_with_a_new_key_does_not_need_force(scratch: Path, cli: CliCall) -> None:
    _only_ssh_key_is_primarys(scratch)
    lose(scratch, "primary")
    r = replace(cli, scratch, "--lost", "primary")
    assert r.exit_code == 0, r.output
    assert authorized_fingerprints(scratch) == {fingerprint_of(scratch, "primary-2")}  # authorized before the revoke


# ------------------------------------------------------------------------------------ item 6
def _alice_has_only(scratch: Path, keep: str) -> None:
    """alice's pam_u2f line holds `keep`'s credential alone."""
    path = scratch / ROOT / AUTHFILE
    cid = credential_of(scratch, keep)
    creds = Authfile.parse(path.read_text()).credentials_of("alice")
    path.write_text("alice:" + next(c.raw for c in creds if c.key_handle == cid) + "\n")


def _reset(cli: CliCall, scratch: Path, role: str, *args: str) -> CliResult:
    key = spec(scratch, role)
    assert cli("--device", key, "key", "replug").exit_code == 0  # opens the reset window
    return cli("--root", scratch / ROOT, "--device", key, "--yes", "key", "reset", *args)


def test_reset_of_a_users_only_pam_credential_is_refused(scratch: Path, cli: CliCall, tmp_path: Path) -> None:
    _alice_has_only(scratch, "primary")
    before = tree_bytes(scratch / ROOT)
    r = _reset(cli, scratch, "primary")
    assert r.exit_code == 4, r.output
    assert "(primary)" in r.stderr and "without any pam_u2f credential" in r.stderr and "sudo" in r.stderr
    r = _reset(cli, scratch, "primary", "--force")  # --yes and no terminal: --force alone is not enough
    assert r.exit_code == 4 and "--confirm primary" in r.stderr, r.output
    assert tree_bytes(scratch / ROOT) == before
    (tmp_path / "a").mkdir()
    assert pam_accepts(scratch, spec(scratch, "primary"), tmp_path / "a")  # alice can still log in
    r = _reset(cli, scratch, "primary", "--force", "--confirm", "primary")
    assert r.exit_code == 0, r.output
    assert "lost: alice would be left without any pam_u2f credential" in r.stdout
    (tmp_path / "b").mkdir()
    assert not pam_accepts(scratch, spec(scratch, "primary"), tmp_path / "b")


@pytest.mark.parametrize(
    ("control", "refused"),
    [
        ("sufficient", False),
        ("optional", False),
        ("requisite", True),
        ("[success=done default=die]", True),
        (None, True),  # no pam.d at all: yktool cannot see the consumer, so it counts as requiring the key
    ],
    ids=["sufficient", "optional", "requisite", "bracket-die", "no-stack"],
)
def test_reset_refused_only_where_pam_requires_the_key(
    scratch: Path, cli: CliCall, control: str | None, refused: bool
) -> None:
    _alice_has_only(scratch, "primary")
    set_shadow(scratch / ROOT, alice=PASSWORD_HASH)  # alice's password: the other way in
    for service in ("sudo", "login"):
        path = scratch / ROOT / "etc/pam.d" / service
        if control is None:
            path.unlink()
        else:
            path.write_text(path.read_text().replace("auth       required   pam_u2f.so", f"auth {control} pam_u2f.so"))
    r = _reset(cli, scratch, "primary")
    assert r.exit_code == (4 if refused else 0), r.output


def test_reset_of_a_users_only_ssh_key_is_refused(scratch: Path, cli: CliCall) -> None:
    _only_ssh_key_is_primarys(scratch)
    before = tree_bytes(scratch / ROOT)
    r = _reset(cli, scratch, "primary")
    assert r.exit_code == 4, r.output
    assert "without any SSH key" in r.stderr
    assert tree_bytes(scratch / ROOT) == before
    assert _reset(cli, scratch, "backup").exit_code == 0  # the backup is nobody's last way in


def test_reset_of_a_volumes_only_safe_unlock_is_refused(scratch: Path, cli: CliCall) -> None:
    """The image opened only by the primary's FIDO2 slot (and hardware): resetting the key would
    leave no safe way in."""
    from yktool.luks.safety import slots_of_type

    root = scratch / ROOT
    header = read_header(Host(root), IMAGE)
    backup_slots = [
        s
        for t in header.tokens_of_type("systemd-fido2")
        for s in t.keyslots
        if t.id
        == next(int(e["token"]) for k, e in Registry.load(Host(root)).enrollments("luks") if k.nickname == "backup")
    ]
    wipe = sorted(
        set(
            slots_of_type(header, "password")
            + slots_of_type(header, "recovery")
            + slots_of_type(header, "tpm2")
            + backup_slots
        )
    )
    for slot in wipe:
        r = cli("--root", root, "--yes", "luks", "wipe", str(IMAGE), "--slot", str(slot), "--allow-hardware-only")
        assert r.exit_code == 0, r.output
    before = tree_bytes(root)
    r = _reset(cli, scratch, "primary")
    assert r.exit_code == 4, r.output
    assert str(IMAGE) in r.stderr
    assert tree_bytes(root) == before


def test_a_credential_the_registry_does_not_know_is_kept(scratch: Path, cli: CliCall, tmp_path: Path) -> None:
    """Added by hand (no registry entry) and not plugged in: nobody can say it is the lost key's."""
    root = scratch / ROOT
    r = cli(
        "--root",
        root,
        "--device",
        spec(scratch, "hand"),
        "pam",
        "register",
        "--user",
        "alice",
        "--origin",
        ORIGIN,
        "--nickname",
        "hand",
    )
    assert r.exit_code == 0, r.output
    hand = credential_of(scratch, "hand")
    with Registry.update(Host(root)) as reg:
        reg.keys = [k for k in reg.keys if k.nickname != "hand"]
    lose(scratch, "primary")
    r = replace(cli, scratch, "--lost", "primary")
    assert r.exit_code == 0, r.output
    assert "not in the registry, kept" in r.stderr  # the summary
    assert hand in line_of(scratch, "alice")
    (tmp_path / "h").mkdir()
    assert pam_accepts(scratch, spec(scratch, "hand"), tmp_path / "h")


def test_reset_of_a_users_only_resident_pam_credential_is_refused(scratch: Path, cli: CliCall) -> None:
    """A `*` credential does not say whose key it is: the registry's resident entry of the key
    in hand counts it, so resetting alice's only (resident) key is refused too."""
    root = scratch / ROOT
    (root / AUTHFILE).write_text("")
    r = cli(
        "--root",
        root,
        "--device",
        spec(scratch, "primary"),
        "pam",
        "register",
        "--user",
        "alice",
        "--origin",
        ORIGIN,
        "--nickname",
        "primary",
        "--resident",
        input=demo_pin(scratch) + "\n",
    )
    assert r.exit_code == 0, r.output
    assert line_of(scratch, "alice").startswith("alice:*,")
    before = tree_bytes(root)
    r = _reset(cli, scratch, "primary")
    assert r.exit_code == 4, r.output
    assert "without any pam_u2f credential" in r.stderr
    assert tree_bytes(root) == before
    assert _reset(cli, scratch, "backup").exit_code == 0  # the backup is not on alice's line at all


def test_revoke_only_drops_a_last_pam_credential_where_pam_does_not_require_it(scratch: Path, cli: CliCall) -> None:
    _alice_has_only(scratch, "primary")
    set_shadow(scratch / ROOT, alice=PASSWORD_HASH)  # alice's password: the other way in
    for service in ("sudo", "login"):
        path = scratch / ROOT / "etc/pam.d" / service
        path.write_text(path.read_text().replace("auth       required   pam_u2f.so", "auth sufficient pam_u2f.so"))
    primary_cid = credential_of(scratch, "primary")
    lose(scratch, "primary")
    r = replace(cli, scratch, "--lost", "primary", new=False)
    assert r.exit_code == 0, r.output
    assert primary_cid not in (scratch / ROOT / AUTHFILE).read_text()
    assert not any(ln.startswith("alice:") for ln in (scratch / ROOT / AUTHFILE).read_text().splitlines())
    assert authfile_whole(scratch) or (scratch / ROOT / AUTHFILE).read_text() == ""


def test_the_lost_keys_resident_pam_credential_is_revoked_and_a_kept_ones_stays(scratch: Path, cli: CliCall) -> None:
    """`*` entries do not say whose they are: the registry's public key does. On carol's line
    (both keys resident) the lost key's goes — a finder could pass pam_u2f with it — and the new
    key takes its place; the backup's stays."""
    root = scratch / ROOT
    with (root / "etc/passwd").open("a") as f:
        f.write("carol:x:1002:1002:Carol:/home/carol:/bin/bash\n")
    pin = demo_pin(scratch)
    for role in ("primary", "backup"):
        r = cli(
            "--root",
            root,
            "--device",
            spec(scratch, role),
            "pam",
            "register",
            "--user",
            "carol",
            "--origin",
            ORIGIN,
            "--nickname",
            role,
            "--resident",
            input=pin + "\n",
        )
        assert r.exit_code == 0, r.output
    keys = {
        k.nickname: str(e["public_key"])
        for k, e in Registry.load(Host(root)).enrollments("pam")
        if e.get("resident") is True
    }
    assert line_of(scratch, "carol").count(":*,") == 2
    lose(scratch, "primary")
    r = replace(cli, scratch, "--lost", "primary", flags=("--yes", "--json"))
    assert r.exit_code == 0, r.output
    creds = Authfile.parse((root / AUTHFILE).read_text()).credentials_of("carol")
    assert {c.public_key for c in creds if c.resident} == {keys["backup"]}
    new = {
        str(e["credential_id"])
        for k, e in Registry.load(Host(root)).enrollments("pam")
        if k.nickname == "primary-2" and e.get("user") == "carol"
    }
    assert {c.key_handle for c in creds if not c.resident} == new and len(new) == 1
