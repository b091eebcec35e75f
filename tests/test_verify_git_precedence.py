"""git.signing reads a user's configuration with git's precedence and includes (the reader is
compared with the real `git config` in tests/test_gitconfig_differential.py)."""

from __future__ import annotations

from tests.fixtures.roots import FixtureRoot, w
from yktool.checks import CheckContext, run_checks
from yktool.host import Host


def signing(fx: FixtureRoot) -> str:
    return {r.id: r for r in run_checks(CheckContext(Host(fx.root)), only=["git.signing"])}["git.signing"].status


def test_gitconfig_overrides_the_xdg_file(hardened_root: FixtureRoot) -> None:
    # ~/.gitconfig is read after ~/.config/git/config: its `gpgsign = false` wins (main: pass)
    home = hardened_root.root / "home/alice"
    w(hardened_root.root, "/home/alice/.config/git/config", (home / ".gitconfig").read_text())
    w(hardened_root.root, "/home/alice/.gitconfig", "[commit]\n\tgpgsign = false\n")
    assert signing(hardened_root) == "fail"


def test_signing_set_in_an_included_file_counts(hardened_root: FixtureRoot) -> None:
    # [include] path= is read in place, relative to the including file (main: fail)
    home = hardened_root.root / "home/alice"
    w(hardened_root.root, "/home/alice/.config/git/signing.inc", (home / ".gitconfig").read_text())
    w(hardened_root.root, "/home/alice/.gitconfig", "[include]\n\tpath = .config/git/signing.inc\n")
    assert signing(hardened_root) == "pass"


def test_a_line_git_refuses_is_a_warn(hardened_root: FixtureRoot) -> None:
    home = hardened_root.root / "home/alice"
    (home / ".gitconfig").write_text((home / ".gitconfig").read_text() + "[core]\nthis is not config\n")
    assert signing(hardened_root) == "warn"
