"""Reading a flake tree yktool did not write: the binding reader against the real Nix parser,
what counts as the tree declaring its own USBGuard option (a declaration, never a use), the
secrets folder, and the secrets.nix diff in the forms agenix trees use."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yktool import agefile
from yktool.errors import UsageError
from yktool.nixos import agenix, flake, tree
from yktool.nixos.module import path_literal

HOST = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBYsYY1CAtBfIggu6/f+bREgtlYrsbz7OmUTLiHUZ+YX"
TRICKY = r"""
{ config, lib, ... }@args:
let
  inherit (lib) mkIf;
  s = ''
    a } { ''${x} ${toString 1} '''
  '';
  /* a } comment { */
in rec {
  # a { comment
  a.b = "x}";
  "c.d".e = { f = [ { g = 1; } ]; };
  ${"dyn"} = 2;
  h = let i = { j = 3; }; in i // { k = 4; };
  l = with lib; assert true; { m = ./p/q.nix; };
}
"""


def nix_parses(text: str) -> bool:
    return subprocess.run(["nix-instantiate", "--parse", "-E", text], capture_output=True, check=False).returncode == 0


def test_binding_paths_of_tricky_nix() -> None:
    assert nix_parses(TRICKY)
    paths = {".".join(b.path): b for b in tree.parse(TRICKY).bindings}
    assert paths["a.b"].string == "x}"
    assert "c.d.e.f.g" in paths and "c.d.e" in paths  # "c.d" is one name
    assert "${…}" in paths and paths["${…}"].value[0].text == "2"
    assert "h.k" in paths and "<let>.i.j" in paths and "h.j" not in paths
    assert "l.m" in paths and paths["l.m"].value[0].kind == "path"
    assert not any(p.startswith(("config", "lib", "args")) for p in paths)


def test_unreadable_nix_is_an_error_and_the_scan_skips_it(tmp_path: Path) -> None:
    with pytest.raises(tree.NixSyntaxError):
        tree.parse('{ a = "unterminated; }')
    (tmp_path / "flake.nix").write_text("{ outputs = _: { }; }\n")
    (tmp_path / "broken.nix").write_text("{ a = ''never closed; }\n")
    ft = flake.scan(tmp_path)
    assert ft.usbguard_option == flake.STANDARD_USBGUARD
    assert any("broken.nix" in n for n in ft.notes)


@pytest.mark.parametrize(
    ("text", "option"),
    [
        # a declaration as a list: the tree's own option
        (
            "{ lib, ... }: { options.modules.hardware.usbguard.rules = lib.mkOption "
            "{ type = lib.types.listOf lib.types.str; }; }",
            "modules.hardware.usbguard.rules",
        ),
        # only a use of it (the declaration is not in the tree): never guessed
        ('{ ... }: { modules.hardware.usbguard.rules = [ "allow id 1050:0407" ]; }', flake.STANDARD_USBGUARD),
        # declared, but one string (lines): the list form would not type-check
        (
            "{ lib, ... }: { options.modules.hardware.usbguard.rules = lib.mkOption { type = lib.types.lines; }; }",
            flake.STANDARD_USBGUARD,
        ),
        # in a comment only
        ("# options.modules.hardware.usbguard.rules = mkOption { type = listOf str; };\n{ }", flake.STANDARD_USBGUARD),
    ],
)
def test_usbguard_option_is_the_trees_only_when_declared_as_a_list(tmp_path: Path, text: str, option: str) -> None:
    assert nix_parses(text)
    (tmp_path / "flake.nix").write_text("{ outputs = _: { }; }\n")
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules/usbguard.nix").write_text(text)
    assert flake.scan(tmp_path).usbguard_option == option


def test_secrets_folder_is_the_secrets_nix_folder_and_two_are_refused(tmp_path: Path) -> None:
    (tmp_path / "flake.nix").write_text("{ outputs = _: { }; }\n")
    assert flake.scan(tmp_path).secrets_dir == tmp_path / "secrets"
    for where in ("nix-secrets/secrets", "old/secrets"):
        (tmp_path / where).mkdir(parents=True)
        (tmp_path / where / "secrets.nix").write_text('{ "a.age".publicKeys = [ ]; }\n')
        if where.startswith("nix"):
            assert flake.scan(tmp_path).secrets_dir == tmp_path / where
    with pytest.raises(UsageError, match="2 agenix secrets.nix") as err:
        flake.scan(tmp_path)
    assert "--secrets-nix" in err.value.hint
    chosen = flake.scan(tmp_path, tmp_path / "old/secrets/secrets.nix")
    assert chosen.secrets_dir == tmp_path / "old/secrets"


def test_no_flake_nix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no flake.nix"):
        flake.scan(tmp_path)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # agenix's documented shape: a new entry, the host's key by its let name
        (
            f'let\n  ws1 = "{HOST}";\nin\n{{\n  "a.age".publicKeys = [ ws1 ];\n}}\n',
            '  "yubikey-auth.age".publicKeys = [ ws1 ];\n',
        ),
        # an entry that lists every host: scoped to this one
        (
            f'let\n  ws1 = "{HOST}";\n  all = [ ws1 "ssh-ed25519 AAAAother" ];\nin\n{{\n'
            '  "yubikey-auth.age".publicKeys = all;\n}\n',
            '  "yubikey-auth.age".publicKeys = [ ws1 ];\n',
        ),
        # the nested form
        ('{\n  "yubikey-auth.age" = {\n    publicKeys = [ ];\n  };\n}\n', f'    publicKeys = [ "{HOST}" ];\n'),
    ],
)
def test_secrets_nix_diff(tmp_path: Path, before: str, after: str) -> None:
    path = tmp_path / "secrets.nix"
    path.write_text(before)
    recipient = agefile.parse_recipient(HOST)
    _entry, diff = agenix.secrets_entry("yubikey-auth", recipient, path)
    assert "+" + after in diff, diff
    patch = tmp_path / "d.diff"
    patch.write_text(diff)
    subprocess.run(["patch", "-p1", "-i", str(patch)], cwd=tmp_path, check=True, capture_output=True)
    assert nix_parses(path.read_text())
    assert agenix.secrets_entry("yubikey-auth", recipient, path)[1] == ""  # applied: nothing more to do


def test_path_literal_quotes_what_a_path_literal_cannot_hold(tmp_path: Path) -> None:
    assert path_literal(tmp_path / "secrets/a.age", tmp_path / "hosts/x", "") == "../../secrets/a.age"
    odd = path_literal(tmp_path / "my secrets/a.age", tmp_path, "")
    assert odd == '(./. + "/./my secrets/a.age")' and nix_parses(odd)


def test_an_empty_registry_gives_an_empty_module_that_parses(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from yktool.cli import main_group

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/NIXOS").write_text("")
    r = CliRunner().invoke(main_group, ["--root", str(root), "nixos", "module"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "# Keys: none registered" in r.stdout and nix_parses(r.stdout)
    assert not (root / "etc/yktool").exists()  # printed only: nothing remembered, nothing written


def test_nodes_scoping_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "secrets.nix"
    path.write_text('{ "wifi-psk" = { publicKeys = [ ]; nodes = [ "bio-smart" ]; }; }\n')
    assert agenix.uses_nodes(path)
    path.write_text('{ "wifi-psk".publicKeys = [ ]; }\n')
    assert not agenix.uses_nodes(path)


_ATOMS = [
    "{",
    "}",
    "[",
    "]",
    "(",
    ")",
    ";",
    "=",
    ".",
    "let",
    "in",
    "with",
    "assert",
    "rec",
    "inherit",
    "a",
    "b.c",
    '"s"',
    '"${x}"',
    "''x''",
    "${",
    "./p",
    "1",
    ":",
    "@",
    "...",
    ",",
    "?",
    "#c\n",
    "/*c*/",
    '"\\"',
    "//",
    "++",
    "or",
    "'",
    '"',
]


@given(st.lists(st.sampled_from(_ATOMS), max_size=30))
@settings(max_examples=400, deadline=None)
def test_any_text_is_read_or_refused_as_nix_never_a_crash(atoms: list[str]) -> None:
    try:
        tree.parse(" ".join(atoms))
    except tree.NixSyntaxError:
        pass


def test_a_registry_rule_that_is_not_one_allow_line_is_refused(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from yktool.cli import main_group
    from yktool.host import Host
    from yktool.inventory import Registry

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/NIXOS").write_text("")
    with Registry.update(Host(root)) as reg:
        reg.record(
            "primary", "usbguard", usb_id="1050:0407", serial="1", rule='allow id 1050:0407 serial "1"\nallow'
        )  # a second line would allow every device
    r = CliRunner().invoke(
        main_group, ["--root", str(root), "nixos", "module", "--out", str(tmp_path / "m.nix")], catch_exceptions=False
    )
    assert r.exit_code == 2 and "not one allow line" in r.stderr and not (tmp_path / "m.nix").exists()


def test_users_own_authfiles_give_pam_u2f_without_an_authfile_or_secret(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from yktool.cli import main_group
    from yktool.host import Host
    from yktool.inventory import Registry

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/NIXOS").write_text("")
    with Registry.update(Host(root)) as reg:
        reg.record(
            "primary",
            "pam",
            user="alice",
            origin="pam://ws1",
            credential_id="QUFB",
            path="/home/alice/.config/Yubico/u2f_keys",
        )
    out = tmp_path / "m.nix"
    r = CliRunner().invoke(
        main_group, ["--root", str(root), "nixos", "module", "--out", str(out)], catch_exceptions=False
    )
    assert r.exit_code == 0, r.output
    expr = f"(import {out} {{ config = {{ }}; lib = {{ }}; pkgs = {{ }}; }})"
    got = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr], capture_output=True, text=True, check=True
    ).stdout
    module = json.loads(got)
    assert "age" not in module
    assert module["security"]["pam"]["u2f"]["settings"] == {"origin": "pam://ws1", "cue": True}
    assert module["security"]["pam"]["services"]["sudo"] == {"u2fAuth": True}
