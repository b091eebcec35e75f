"""verify's git configuration reading against the real `git config` (HOME and the system file inside
a temporary root, outside any repository).

Hypothesis writes /etc/gitconfig, ~/.config/git/config, ~/.gitconfig and files they include (relative
and `~/` paths, includeIf), with sections and keys in any case, old `[gpg.ssh]` and `[gpg "ssh"]`
forms, quoted values, escapes, comments, continuations, boolean spellings and lines git refuses. The
values verify's git.signing check reads (gpg.format, commit.gpgsign as a boolean, user.signingkey)
must be git's own; a file git refuses must be one verify reports. Case counts in the summary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.differential import report_cases
from yktool.checks.base import CheckContext
from yktool.checks.gitconfig import user_config
from yktool.host import Host

CASES = int(os.environ.get("YKTOOL_GIT_CASES", "200"))
FILES = {
    "system": "etc/gitconfig",
    "xdg": "home/alice/.config/git/config",
    "home": "home/alice/.gitconfig",
    "inc1": "home/alice/.config/git/inc1",
    "inc2": "home/alice/inc2",
}
SECTIONS = [
    "[commit]",
    "[Commit]",
    "[gpg]",
    "[GPG]",
    "[user]",
    "[include]",
    '[gpg "ssh"]',
    "[gpg.ssh]",
    '[includeIf "gitdir:~/"]',
    "[core]",
    '[commit "x"]',
    "[ user ]",
    "[commit]  # c",
]
KEYS = [
    "gpgsign = true",
    "gpgSign = false",
    "GPGSIGN=yes",
    "gpgsign = off",
    "gpgsign = 1",
    "gpgsign = 0",
    "gpgsign =",
    "gpgsign",
    'gpgsign = "true"',
    "gpgsign = true # on",
    "gpgsign = tru\\\ne",
    "format = ssh",
    "format = openpgp",
    'format = "ssh"',
    "format = ssh ; old",
    "FORMAT = x509",
    "signingkey = ~/.ssh/id_ed25519_sk.pub",
    'signingKey = "key::sk-ssh-ed25519@openssh.com AAAA x"',
    "signingkey = a\\tb",
    "signingkey =   spaced  value  ",
    "path = inc1",
    "path = ~/inc2",
    "path = missing",
    "path = .config/git/inc1",
    "path = ../inc2",
    "path = git/../git/inc1",
    "bad line here",
    "gpgsign = \\q",
    "9key = 1",
    'format = "unterminated',
]
KEYS_TO_READ = ("gpg.format", "commit.gpgsign", "user.signingkey")


@st.composite
def config_files(draw: st.DrawFn) -> dict[str, str]:
    out = {}
    for name in draw(st.lists(st.sampled_from(sorted(FILES)), min_size=1, max_size=5, unique=True)):
        lines = []
        for _ in range(draw(st.integers(1, 4))):
            lines.append(draw(st.sampled_from(SECTIONS)))
            lines += draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3))
        out[name] = "\n".join(lines) + "\n"
    return out


def _git(root: Path, args: list[str]) -> tuple[int, str, str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(root / "home/alice"),
        "GIT_CONFIG_SYSTEM": str(root / "etc/gitconfig"),
        "GIT_CEILING_DIRECTORIES": str(root),
    }
    proc = subprocess.run(
        ["git", "config", *args], cwd=root / "work", env=env, capture_output=True, text=True, timeout=10
    )
    return proc.returncode, proc.stdout.rstrip("\n"), proc.stderr


def test_verify_reads_git_config_as_git_does(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    assert shutil.which("git"), "git is one of the consumers the suite runs"
    root = tmp_path / "root"
    counts = {"cases": 0, "refused": 0, "comparisons": 0}
    started = time.monotonic()

    @settings(
        max_examples=CASES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(files=config_files())
    def compare(files: dict[str, str]) -> None:
        shutil.rmtree(root, ignore_errors=True)
        (root / "work").mkdir(parents=True)
        for name, text in files.items():
            path = root / FILES[name]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        counts["cases"] += 1
        cfg = user_config(CheckContext(Host(root)), "/home/alice")
        shown = "\n".join(f"--- {FILES[n]}\n{t}" for n, t in files.items())
        rc, out, err = _git(root, ["--list", "-z"])
        if rc != 0:
            counts["refused"] += 1
            assert cfg.problems, f"git refuses the configuration ({err.strip()}), verify read it\n{shown}"
            return
        assert not cfg.problems, f"git reads it, verify sees {cfg.problems}\n{shown}"
        last: dict[str, str] = {}
        for item in out.split("\0"):
            if item:
                key, _, value = item.partition("\n")
                last[key] = value
        for key in KEYS_TO_READ:
            counts["comparisons"] += 1
            got = cfg.get(key)
            ours = None if got is None else (got[0] if got[0] is not None else "")
            assert ours == last.get(key), f"{key}: git {last.get(key)!r}, verify {ours!r}\n{shown}"
        brc, bout, _berr = _git(root, ["--type=bool", "--get", "commit.gpgsign"])
        theirs_bool = {"true": True, "false": False}.get(bout) if brc == 0 else None
        assert cfg.get_bool("commit.gpgsign") == theirs_bool, f"commit.gpgsign: git {bout!r} ({brc})\n{shown}"

    try:
        compare()
    finally:
        seconds = round(time.monotonic() - started, 1)
        report_cases(request, "git config", seconds=seconds, **counts)
        print(f"git differential: {counts} in {seconds} s")
