"""The last-way-in check reads the volumes /etc/crypttab opens, not only the registry's (attack
left open in issue 12): a volume enrolled by hand, or a registry that is gone, is no proof the
key in hand opens no disk. Checked on the demo's real LUKS2 image with cryptsetup."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import CliCall
from tests.flows_support import passphrase_opens, tree_bytes
from tests.test_replace_lost import _reset
from yktool.demo import IMAGE, ROOT
from yktool.host import Host
from yktool.inventory import Registry
from yktool.luks.header import read_header
from yktool.luks.safety import slots_of_type


def _only_the_primary_opens_the_image(cli: CliCall, root: Path) -> None:
    """Wipe every slot but the primary's FIDO2 one (a hardware-only volume, as the test of the
    registered case in test_replace_lost sets it up)."""
    header = read_header(Host(root), IMAGE)
    backup_token = next(
        int(e["token"]) for k, e in Registry.load(Host(root)).enrollments("luks") if k.nickname == "backup"
    )
    backup_slots = [s for t in header.tokens_of_type("systemd-fido2") for s in t.keyslots if t.id == backup_token]
    for slot in sorted(
        set(
            slots_of_type(header, "password")
            + slots_of_type(header, "recovery")
            + slots_of_type(header, "tpm2")
            + backup_slots
        )
    ):
        r = cli("--root", root, "--yes", "luks", "wipe", str(IMAGE), "--slot", str(slot), "--allow-hardware-only")
        assert r.exit_code == 0, r.output


def test_reset_refused_for_a_crypttab_volume_the_registry_does_not_know(scratch: Path, cli: CliCall) -> None:
    """The image is in /etc/crypttab, its only unlock is the primary's FIDO2 token, and the
    registry has no LUKS entry (enrolled by hand, or the entries were lost): resetting the
    primary would leave the disk with no way in."""
    root = scratch / ROOT
    _only_the_primary_opens_the_image(cli, root)
    with Registry.update(Host(root)) as reg:
        reg.forget("luks")
    assert str(IMAGE) in (root / "etc/crypttab").read_text()
    before = tree_bytes(root)
    r = _reset(cli, scratch, "primary")
    assert r.exit_code == 4, r.output
    assert str(IMAGE) in r.stderr
    assert tree_bytes(root) == before


def test_reset_refused_when_a_crypttab_volume_cannot_be_read(scratch: Path, cli: CliCall) -> None:
    """A volume /etc/crypttab opens by UUID, not present in the root: yktool cannot tell whether
    the key is its way in, so it says so and refuses (the person may --force, having checked)."""
    root = scratch / ROOT
    with (root / "etc/crypttab").open("a") as f:
        f.write("data UUID=0b4a7f3e-1111-4222-8333-944455556666 none luks,fido2-device=auto\n")
        f.write("swap /dev/sdz9 /dev/urandom swap\n")  # a random key: no way in to keep, not judged
    before = tree_bytes(root)
    r = _reset(cli, scratch, "backup")  # the backup is nobody's last way in otherwise
    assert r.exit_code == 4, r.output
    assert "cannot tell whether /dev/disk/by-uuid/0b4a7f3e-1111-4222-8333-944455556666" in r.stderr
    assert "sdz9" not in r.stderr
    assert tree_bytes(root) == before
    r = _reset(cli, scratch, "backup", "--force", "--confirm", "backup")
    assert r.exit_code == 0, r.output
    assert passphrase_opens(scratch)


def test_reset_goes_ahead_when_the_crypttab_volume_keeps_a_way_in(scratch: Path, cli: CliCall) -> None:
    """The same crypttab volume, unknown to the registry, with its passphrase slot: resetting the
    primary leaves it openable, so nothing is refused."""
    root = scratch / ROOT
    with Registry.update(Host(root)) as reg:
        reg.forget("luks")
    r = _reset(cli, scratch, "primary")
    assert r.exit_code == 0, r.output
    assert passphrase_opens(scratch)


def test_replace_plan_considers_the_crypttab_volumes(scratch: Path, cli: CliCall) -> None:
    """replace finds the tokens of a volume only /etc/crypttab names (kept: nobody can say the
    lost key made them, and the plan says so) and names a listed volume it cannot read."""
    from tests.test_replace_lost import lose, replace

    root = scratch / ROOT
    with Registry.update(Host(root)) as reg:
        reg.forget("luks")
    with (root / "etc/crypttab").open("a") as f:
        f.write("data UUID=0b4a7f3e-1111-4222-8333-944455556666 none luks\n")
    lose(scratch, "primary")
    before = tree_bytes(root)
    r = replace(cli, scratch, "--lost", "primary", flags=("--yes", "--dry-run"))
    assert r.exit_code == 0, r.output
    assert f"{IMAGE}" in r.output and "not in the registry, kept" in r.output
    assert "/dev/disk/by-uuid/0b4a7f3e-1111-4222-8333-944455556666: not checked" in r.output
    assert tree_bytes(root) == before
