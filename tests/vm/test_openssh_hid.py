"""OpenSSH through libfido2 against the emulated key: ssh-keygen enrolls a resident key on it,
and `ssh-keygen -K` and `yktool ssh download` rebuild the same public key."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import CliCall
from tests.fixtures.fido import TEST_PIN, SimKey
from tests.vm.conftest import Keys
from tests.vm.support import touches


def ssh_env(tmp_path: Path, pin: str | None = None) -> dict[str, str]:
    """HOME and git config in tmp; the PIN (if any) through SSH_ASKPASS, as OpenSSH asks for it."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "SSH_"))}
    env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=str(home / ".gitconfig"), SSH_AUTH_SOCK="")
    if pin is not None:
        askpass = tmp_path / "askpass"
        askpass.write_text(f"#!/bin/sh\necho '{pin}'\n")
        askpass.chmod(0o700)
        env.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
    return env


def pub_blob(path: Path) -> str:
    return path.read_text().split()[1]


def test_openssh_enrolls_a_resident_key_and_yktool_downloads_the_same(
        cli: CliCall, sim_key: SimKey, keys: Keys, tmp_path: Path) -> None:
    key = keys(sim_key("ssh", pin=TEST_PIN))
    env = ssh_env(tmp_path, TEST_PIN)
    made = tmp_path / "openssh_made"
    with touches(key, "ssh-keygen -t ed25519-sk -O resident (OpenSSH enrolls)"):
        r = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519-sk", "-O", "resident", "-O", "application=ssh:yk",
                            "-N", "", "-C", "vm", "-f", str(made)], env=env, capture_output=True, text=True,
                           timeout=180, check=False, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr

    downloaded = tmp_path / "by_openssh"
    downloaded.mkdir()
    with touches(key, "ssh-keygen -K (resident keys)"):
        k = subprocess.run(["ssh-keygen", "-K", "-N", ""], cwd=downloaded, env=env, capture_output=True, text=True,
                           timeout=180, check=False, stdin=subprocess.DEVNULL)
    assert k.returncode == 0, k.stderr
    openssh_pubs = {pub_blob(p) for p in downloaded.glob("*.pub")}
    assert pub_blob(made.with_suffix(".pub")) in openssh_pubs

    ours = tmp_path / "by_yktool"
    with touches(key, "yktool ssh download"):
        d = cli("--device", key.spec, "ssh", "download", "--output-dir", ours, "--pin-stdin", input=f"{TEST_PIN}\n")
    assert d.exit_code == 0, d.output
    assert {pub_blob(p) for p in ours.glob("*.pub")} == openssh_pubs
