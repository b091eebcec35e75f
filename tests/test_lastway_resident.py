"""A resident (`*`) pam_u2f credential does not say whose key made it; only the registry does
(attack left open in issue 12). With the registry gone, or a credential made by hand, yktool
cannot tell the key in hand from another one — so it may not count that credential as the one
that stays: "unused" is never decided by absence alone."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import CliCall
from tests.flows_support import ORIGIN, demo_pin, spec, tree_bytes
from tests.test_replace_lost import AUTHFILE, _reset, line_of
from yktool.demo import ROOT


def _alice_resident_of(scratch: Path, cli: CliCall, role: str) -> None:
    root = scratch / ROOT
    (root / AUTHFILE).write_text("")
    r = cli(
        "--root",
        root,
        "--device",
        spec(scratch, role),
        "pam",
        "register",
        "--user",
        "alice",
        "--origin",
        ORIGIN,
        "--nickname",
        role,
        "--resident",
        input=demo_pin(scratch) + "\n",
    )
    assert r.exit_code == 0, r.output
    assert line_of(scratch, "alice").startswith("alice:*,")


def test_reset_refused_when_the_only_resident_credential_cannot_be_identified(scratch: Path, cli: CliCall) -> None:
    """alice's only credential is the primary's resident one, and the registry is gone: the
    reset of the primary is refused, naming why (the credential cannot be told apart)."""
    _alice_resident_of(scratch, cli, "primary")
    (scratch / ROOT / "etc/yktool/keys.toml").unlink()
    before = tree_bytes(scratch / ROOT)
    r = _reset(cli, scratch, "primary")
    assert r.exit_code == 4, r.output
    assert "without any pam_u2f credential" in r.stderr and "not in the registry" in r.stderr
    assert tree_bytes(scratch / ROOT) == before


def test_reset_goes_ahead_when_the_registry_says_the_resident_credential_is_another_keys(
    scratch: Path, cli: CliCall
) -> None:
    """The registry records the resident credential as the backup's: resetting the primary
    leaves it, and alice keeps her way in."""
    _alice_resident_of(scratch, cli, "backup")
    r = _reset(cli, scratch, "primary")
    assert r.exit_code == 0, r.output
    assert line_of(scratch, "alice").startswith("alice:*,")
