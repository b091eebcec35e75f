"""OpenSSH and git through libfido2 against the emulated key: ssh-keygen enrolls a resident key
on it, `ssh-keygen -K` and `yktool ssh download` rebuild the same public key, a throwaway sshd on
the guest's 127.0.0.1 (unpacked from Debian's openssh-server, never installed) accepts the key
`yktool ssh keygen` made and `yktool ssh authorize` authorized, and `git commit -S` signs with
the configuration `yktool git signing` wrote."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CliCall
from tests.fixtures.fido import TEST_PIN, SimKey
from tests.vm.conftest import Keys
from tests.vm.support import REPO, run, touches

SSHD = REPO / ".venv/vm/openssh-server/usr/sbin/sshd"
LIBWRAP = REPO / ".venv/vm/libwrap0/usr/lib/x86_64-linux-gnu"


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sshd_user() -> None:
    """sshd's privilege-separation user and folder, in the guest's own /etc and /run."""
    if run(["getent", "passwd", "sshd"]).returncode != 0:
        # appended, not useradd: virtme-ng mounts a file over /etc/shadow, which useradd renames onto
        uid = next(u for u in range(990, 900, -1) if run(["getent", "passwd", str(u)]).returncode != 0)
        with open("/etc/passwd", "a") as passwd:
            passwd.write(f"sshd:x:{uid}:65534:sshd privilege separation:/run/sshd:/usr/sbin/nologin\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)


def test_sshd_accepts_the_key_yktool_made_and_git_signs_with_it(
        cli: CliCall, sim_key: SimKey, keys: Keys, tmp_path: Path, sshd_user: None) -> None:
    key = keys(sim_key("login"))
    env = ssh_env(tmp_path)
    keyfile = tmp_path / "ssh" / "id_ed25519_sk"
    keyfile.parent.mkdir()
    with touches(key, "yktool ssh keygen"):
        r = cli("--device", key.spec, "ssh", "keygen", "--output", keyfile, "--comment", "vm-login")
    assert r.exit_code == 0, r.output
    authorized = tmp_path / "authorized_keys"
    r = cli("ssh", "authorize", "--user", "root", "--pubkey", f"{keyfile}.pub", "--file", authorized)
    assert r.exit_code == 0, r.output

    host_key = tmp_path / "host_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host_key], check=True)
    port = free_port()
    config = tmp_path / "sshd_config"
    config.write_text(f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\nAuthorizedKeysFile {authorized}\n"
                      "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
                      f"PidFile {tmp_path}/sshd.pid\nPermitRootLogin prohibit-password\n")
    server = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE,
                              env={**os.environ, "LD_LIBRARY_PATH": str(LIBWRAP)})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        with touches(key, "ssh login to sshd on 127.0.0.1"):
            login = subprocess.run(["ssh", "-F", "/dev/null", "-i", str(keyfile), "-p", str(port),
                                    "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
                                    "-o", f"UserKnownHostsFile={tmp_path}/known_hosts", "-o", "BatchMode=yes",
                                    "root@127.0.0.1", "echo", "logged-in-with-the-key"],
                                   env=env, capture_output=True, text=True, timeout=180, check=False,
                                   stdin=subprocess.DEVNULL)
        assert login.returncode == 0, login.stderr
        assert "logged-in-with-the-key" in login.stdout
    finally:
        server.terminate()
        server.wait(timeout=30)

    repo = tmp_path / "repo"
    run(["git", "init", "-q", repo], env=env, check=True)
    r = cli("git", "signing", "--email", "vm@example.com", "--repo", repo, "--key", f"{keyfile}.pub",
            "--allowed-signers", tmp_path / "allowed_signers")
    assert r.exit_code == 0, r.output
    with touches(key, "git commit -S (ssh-keygen -Y sign)"):
        commit = run(["git", "-C", repo, "-c", "user.name=VM", "-c", "user.email=vm@example.com", "commit", "-q",
                      "-S", "--allow-empty", "-m", "signed in the VM"], env=env, timeout=180)
    assert commit.returncode == 0, commit.stderr
    verified = run(["git", "-C", repo, "verify-commit", "HEAD"], env=env)
    assert verified.returncode == 0, verified.stderr
    assert 'Good "git" signature for vm@example.com' in verified.stderr
