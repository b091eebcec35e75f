"""Attack on `replace --lost` (issue 12 items 1, 2): a replacement's registry name that is
already taken — the lost key's own name, or a kept key's.

With `--new-nickname primary` for a lost `primary`, the new key is recorded under the name the
revoke step then drops from the registry: its LUKS token and pam_u2f credential stay on the
host but the registry no longer knows them, so a later `replace --lost primary` (when the new
key is lost in turn) keeps them as "not in the registry" — a lost key that can never be
revoked. With a kept key's name (`backup`), two physical keys become one registry entry, and
losing either revokes both. Either must be refused before anything changes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import CliCall, CliResult
from tests.flows_support import demo_pin, spec, tree_bytes
from yktool.demo import KEYS, PASSPHRASE, ROOT


def _replace(cli: CliCall, scratch: Path, *args: str) -> CliResult:
    shutil.move(scratch / KEYS / "primary.json", scratch / "finder-primary.json")  # primary is lost
    return cli(
        "--root",
        scratch / ROOT,
        "--device",
        spec(scratch, "backup"),
        "--yes",
        "replace",
        "--lost",
        "primary",
        "--new-device",
        spec(scratch, "new"),
        "--new-pin-stdin",
        "--unlock-key-file",
        str(PASSPHRASE),
        *args,
        input=demo_pin(scratch) + "\n",
    )


@pytest.mark.parametrize("name", ["primary", "backup"], ids=["the-lost-keys-name", "a-kept-keys-name"])
def test_new_nickname_already_in_the_registry_is_refused_before_anything_changes(
    scratch: Path, cli: CliCall, name: str
) -> None:
    before = tree_bytes(scratch / ROOT)
    r = _replace(cli, scratch, "--new-nickname", name)
    assert r.exit_code == 2, r.output
    assert "--new-nickname" in r.stderr and name in r.stderr
    assert tree_bytes(scratch / ROOT) == before


def test_default_new_nickname_taken_is_refused(scratch: Path, cli: CliCall) -> None:
    """The default `primary-2` is a spare's name already: refused as well (no merge by default)."""
    r = cli("--root", scratch / ROOT, "--device", spec(scratch, "backup"), "keys", "list")
    assert r.exit_code == 0, r.output
    registry = scratch / ROOT / "etc/yktool/keys.toml"
    registry.write_text(registry.read_text().replace('nickname = "backup"', 'nickname = "primary-2"'))
    before = tree_bytes(scratch / ROOT)
    r = _replace(cli, scratch)
    assert r.exit_code == 2, r.output
    assert "primary-2" in r.stderr
    assert tree_bytes(scratch / ROOT) == before


def test_lost_keys_credential_is_revoked_from_every_authfile_pam_reads(scratch: Path, cli: CliCall) -> None:
    """The admin copied alice's line into a second authfile for sshd (by hand: the registry
    names only /etc/u2f_mappings). The lost key's credential id is the registry's, so it is
    known wherever PAM reads it: revoked from both files, or the finder keeps the way in."""
    from tests.flows_support import ORIGIN
    from yktool.host import Host
    from yktool.inventory import Registry

    root = scratch / ROOT
    cid = next(
        str(e["credential_id"]) for k, e in Registry.load(Host(root)).enrollments("pam") if k.nickname == "primary"
    )
    (root / "etc/u2f_mappings.ssh").write_text((root / "etc/u2f_mappings").read_text())
    (root / "etc/pam.d/sshd").write_text(f"auth required pam_u2f.so authfile=/etc/u2f_mappings.ssh origin={ORIGIN}\n")
    assert cid in (root / "etc/u2f_mappings.ssh").read_text()
    r = _replace(cli, scratch)
    assert r.exit_code == 0, r.output
    assert cid not in (root / "etc/u2f_mappings").read_text()
    assert cid not in (root / "etc/u2f_mappings.ssh").read_text()
